"""vLLM's runtime adapter endpoints, behind the admin key: `POST /v1/load_lora_adapter` and
`POST /v1/unload_lora_adapter`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from kollm.serve import protocol as p
from kollm.serve.deps import ADMIN, state
from kollm.serve.errors import ApiError
from kollm.serve.service import AdapterError

router = APIRouter()


def _refused(err: AdapterError) -> ApiError:
    return ApiError(400, str(err), "invalid_request_error", str(err).split(":")[0])


@router.post("/v1/load_lora_adapter", dependencies=ADMIN)
async def load_lora_adapter(body: p.LoadLoraAdapterRequest, request: Request):
    """Load an adapter onto a served base (vLLM's endpoint)."""
    manager = state(request).manager
    try:
        model_id = await manager.load_adapter(body.lora_name, body.lora_path, body.base_model)
    except AdapterError as err:
        raise _refused(err) from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added as {model_id}")


@router.post("/v1/unload_lora_adapter", dependencies=ADMIN)
async def unload_lora_adapter(body: p.UnloadLoraAdapterRequest, request: Request):
    """Unload an adapter loaded at run time."""
    manager = state(request).manager
    try:
        model_id = await manager.unload_adapter(body.lora_name, body.base_model)
    except AdapterError as err:
        raise _refused(err) from None
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed ({model_id})")
