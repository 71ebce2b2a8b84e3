"""`POST /v1/embeddings`: mean-pooled hidden states, L2-normalised (transformers engine)."""

from __future__ import annotations

import asyncio
import base64

from fastapi import APIRouter, Request

from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state
from kollm.serve.errors import ApiError

router = APIRouter()


@router.post("/v1/embeddings", dependencies=GUARD)
async def embeddings(body: p.EmbeddingRequest, request: Request):
    """OpenAI's embeddings (float or base64); 413 at once for an input too long to tokenise."""
    service = state(request).serving
    served, _ = service.find(body.model)
    texts = body.texts()
    for text in texts:
        service.check_chars(served, len(text), "input")
    service.require(served, "embeddings", "model")
    try:
        vectors = await asyncio.to_thread(served.engine.embed, texts)
    except NotImplementedError as err:
        raise ApiError(400, str(err), "invalid_request_error", "model") from None
    tokens = await asyncio.to_thread(lambda: sum(len(served.engine.tokenize(t)) for t in texts))
    if body.encoding_format == "base64":  # what the openai client asks for by default
        import numpy as np

        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    data = [p.Embedding(embedding=v, index=i) for i, v in enumerate(vectors)]
    return p.EmbeddingList(
        data=data,
        model=body.model,
        usage=p.Usage(prompt_tokens=tokens, total_tokens=tokens),
        model_version=served.version,
    )
