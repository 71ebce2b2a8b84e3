"""The HTTP routes: OpenAI-compatible endpoints over the ModelManager's batchers.

Errors use OpenAI's error JSON: 400 bad body (naming the field), 401 API key, 404 unknown
model, 413 prompt longer than the context, 429 queue full (with Retry-After), 503 not ready,
504 timeout.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kollm.engines.base import Generation, GenerationParams
from kollm.serve import protocol as p
from kollm.serve.batching import Job, QueueFull
from kollm.serve.log import RequestLog
from kollm.serve.service import AdapterError, ModelManager, ServedModel

log = logging.getLogger("kollm.serve")


@dataclass
class ServeSettings:
    api_keys: list[str] = field(default_factory=list)
    # Keys of the admin endpoints (load/unload adapters); with none, those endpoints are off.
    admin_keys: list[str] = field(default_factory=list)
    request_timeout_s: float = 120.0
    log_requests: bool = True
    alias_poll_s: float = 2.0
    default_max_tokens: int = 128
    # Load the models before the app takes traffic (a Ray Serve replica is routed requests once
    # its ASGI start-up returns); the stand-alone server starts at once and answers 503 meanwhile.
    load_before_ready: bool = False
    on_ready: Callable[[], None] | None = None  # called once the models are loaded


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers = headers or {}


def _error(
    status: int, message: str, kind: str, param: str | None = None, headers=None
) -> JSONResponse:
    body = p.ErrorResponse(
        error=p.ErrorBody(message=message, type=kind, param=param, code=str(status))
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def create_app(
    manager: ModelManager, settings: ServeSettings, request_log: RequestLog | None = None
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(manager.start())
        if settings.load_before_ready:
            await loader
            if manager.failure:  # fail the start-up, so Ray starts another replica
                raise RuntimeError(f"loading models failed: {manager.failure}")
            if settings.on_ready is not None:
                settings.on_ready()
        watcher = asyncio.create_task(manager.watch_aliases(settings.alias_poll_s))
        yield
        watcher.cancel()
        await loader
        await manager.close()  # finishes the requests in flight

    app = FastAPI(title="kollm", lifespan=lifespan)
    metrics = manager.metrics

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError):
        return _error(err.status, err.message, err.kind, err.param, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_request: Request, err: RequestValidationError):
        first = err.errors()[0]
        param = ".".join(str(x) for x in first["loc"] if x != "body")
        return _error(
            400, f"{param or 'body'}: {first['msg']}", "invalid_request_error", param or None
        )

    def authorize(request: Request) -> None:
        if settings.api_keys and not _key_matches(request, settings.api_keys):
            raise ApiError(401, "missing or invalid API key", "authentication_error")

    def authorize_admin(request: Request) -> None:
        if not settings.admin_keys:
            raise ApiError(
                403, "adapter loading is off: start the server with --admin-key", "forbidden"
            )
        if not _key_matches(request, settings.admin_keys):
            raise ApiError(401, "missing or invalid admin key", "authentication_error")

    def ready() -> None:
        if not manager.ready:
            reason = manager.failure or "models are still loading"
            raise ApiError(
                503, f"not ready: {reason}", "service_unavailable", headers={"Retry-After": "5"}
            )

    guard = [Depends(authorize), Depends(ready)]

    @app.get("/health")
    async def health():
        if manager.ready:
            return {
                "status": "ok",
                "models": {m.model_id: m.version for m in manager.models.values()},
            }
        return JSONResponse(
            {"status": "loading" if not manager.failure else "failed", "reason": manager.failure},
            status_code=503,
        )

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=guard)
    async def models() -> p.ModelList:
        cards = []
        for m in manager.models.values():
            cards.append(p.ModelCard(id=m.model_id, created=p.now(), model_version=m.version))
            cards += [
                p.ModelCard(id=f"{m.model_id}:{a}", created=p.now(), model_version=m.version)
                for a in m.adapters
            ]
        return p.ModelList(data=cards)

    def find(model: str) -> tuple[ServedModel, str | None]:
        found = manager.lookup(model)
        if found is None:
            raise ApiError(404, f"model '{model}' is not served here", "not_found_error", "model")
        return found

    def params_of(body: p._Sampling, max_tokens: int | None) -> GenerationParams:
        sample = body.temperature > 0
        return GenerationParams(
            max_new_tokens=max_tokens or settings.default_max_tokens,
            do_sample=sample,
            temperature=body.temperature if sample else 1.0,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
        )

    def check_length(served: ServedModel, prompt: str, params: GenerationParams) -> None:
        n = len(served.engine.tokenize(prompt))
        if n + params.max_new_tokens > served.engine.context_length:
            raise ApiError(
                413,
                f"prompt of {n} tokens + max_tokens {params.max_new_tokens} exceeds the "
                f"context of {served.engine.context_length}",
                "invalid_request_error",
                "messages",
            )

    def submit(
        served: ServedModel, prompt: str, params: GenerationParams, adapter, stream: bool
    ) -> Job:
        try:
            return served.batcher.submit(prompt, params, adapter, stream)
        except QueueFull:
            raise ApiError(
                429,
                f"the queue of '{served.model_id}' is full; retry shortly",
                "rate_limit_error",
                headers={"Retry-After": "1"},
            ) from None

    async def wait(request: Request, served: ServedModel, job: Job) -> Generation:
        """The job's result; cancels it if the client leaves or the timeout passes."""
        deadline = time.monotonic() + settings.request_timeout_s
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=0.25)
            if done:
                return job.future.result()
            if await request.is_disconnected():
                served.batcher.cancel(job)
                raise ApiError(499, "client closed the request", "cancelled")
            if time.monotonic() > deadline:
                served.batcher.cancel(job)
                raise ApiError(504, "the request timed out", "timeout")

    async def record(
        endpoint: str,
        rid: str,
        served: ServedModel,
        body,
        text: str,
        result: Generation,
        started: float,
    ) -> None:
        if request_log is None or not settings.log_requests:
            return
        await asyncio.to_thread(
            request_log.write,
            rid,
            endpoint,
            served.model_id,
            served.version,
            body.model_dump(exclude_none=True),
            text,
            result.prompt_tokens,
            result.completion_tokens,
            result.finish_reason,
            (time.perf_counter() - started) * 1000,
        )

    usage = _usage

    def warn_unknown(body) -> None:
        if body.unknown_fields():
            log.info("ignored unknown request fields: %s", ", ".join(body.unknown_fields()))

    @app.post("/v1/chat/completions", dependencies=guard)
    async def chat(body: p.ChatCompletionRequest, request: Request):
        warn_unknown(body)
        started = time.perf_counter()
        served, adapter = find(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        rid = p.new_id("chatcmpl")
        user_text = " ".join(m["content"] for m in messages if m["role"] == "user")
        if served.guard is not None and not await asyncio.to_thread(
            served.guard.allows, user_text, served.engine
        ):
            metrics.off_domain.labels(served.model_id).inc()
            result = Generation(served.guard.refusal, 0, 0, "stop")
            return _chat_response(rid, body.model, served, result, usage(result))
        prompt = served.prompt_for(messages)
        params = params_of(body, body.max_completion_tokens or body.max_tokens)
        check_length(served, prompt, params)
        job = submit(served, prompt, params, adapter, body.stream)
        if body.stream:
            stream = _chat_stream(rid, body.model, served, job, request, body.include_usage())
            return StreamingResponse(
                _logged(
                    stream,
                    job,
                    lambda t: record("chat", rid, served, body, t, job.future.result(), started),
                ),
                media_type="text/event-stream",
                headers={"X-Request-Id": rid},
            )
        result = await wait(request, served, job)
        await record("chat", rid, served, body, result.text, result, started)
        return _chat_response(rid, body.model, served, result, usage(result))

    @app.post("/v1/completions", dependencies=guard)
    async def completions(body: p.CompletionRequest, request: Request):
        warn_unknown(body)
        started = time.perf_counter()
        served, adapter = find(body.model)
        rid = p.new_id("cmpl")
        params = params_of(body, body.max_tokens)
        check_length(served, body.prompt_text(), params)
        job = submit(served, body.prompt_text(), params, adapter, body.stream)
        if body.stream:
            stream = _completion_stream(rid, body.model, served, job, request, body.include_usage())
            return StreamingResponse(
                _logged(
                    stream,
                    job,
                    lambda t: record(
                        "completions", rid, served, body, t, job.future.result(), started
                    ),
                ),
                media_type="text/event-stream",
                headers={"X-Request-Id": rid},
            )
        result = await wait(request, served, job)
        await record("completions", rid, served, body, result.text, result, started)
        choice = p.CompletionChoice(text=result.text, finish_reason=result.finish_reason)
        return p.Completion(
            id=rid,
            created=p.now(),
            model=body.model,
            choices=[choice],
            usage=usage(result),
            model_version=served.version,
        )

    @app.post("/v1/embeddings", dependencies=guard)
    async def embeddings(body: p.EmbeddingRequest):
        served, _ = find(body.model)
        try:
            vectors = await asyncio.to_thread(served.engine.embed, body.texts())
        except NotImplementedError as err:
            raise ApiError(400, str(err), "invalid_request_error", "model") from None
        tokens = sum(len(served.engine.tokenize(t)) for t in body.texts())
        if body.encoding_format == "base64":  # what the openai client asks for by default
            import base64

            import numpy as np

            vectors = [
                base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors
            ]
        data = [p.Embedding(embedding=v, index=i) for i, v in enumerate(vectors)]
        return p.EmbeddingList(
            data=data,
            model=body.model,
            usage=p.Usage(prompt_tokens=tokens, total_tokens=tokens),
            model_version=served.version,
        )

    admin = [Depends(authorize_admin), Depends(ready)]

    @app.post("/v1/load_lora_adapter", dependencies=admin)
    async def load_lora_adapter(body: p.LoadLoraAdapterRequest):
        try:
            model_id = await manager.load_adapter(body.lora_name, body.lora_path, body.base_model)
        except AdapterError as err:
            raise ApiError(400, str(err), "invalid_request_error", str(err).split(":")[0]) from None
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added as {model_id}")

    @app.post("/v1/unload_lora_adapter", dependencies=admin)
    async def unload_lora_adapter(body: p.UnloadLoraAdapterRequest):
        try:
            model_id = await manager.unload_adapter(body.lora_name, body.base_model)
        except AdapterError as err:
            raise ApiError(400, str(err), "invalid_request_error", str(err).split(":")[0]) from None
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed ({model_id})")

    @app.post("/v1/feedback", dependencies=[Depends(authorize)])
    async def feedback(body: p.FeedbackRequest):
        from kollm.feedback.store import FeedbackError, FeedbackStore

        if request_log is None:
            raise ApiError(
                400,
                "this server logs no responses (--no-log), so it takes no feedback",
                "invalid_request_error",
                "response_id",
            )
        store = FeedbackStore(request_log.home)
        try:
            stored = await asyncio.to_thread(
                store.add,
                body.response_id,
                body.rating,
                body.categories,
                body.comment,
                body.correction,
                "api",
            )
        except FeedbackError as err:
            raise ApiError(err.status, str(err), "invalid_request_error", err.field) from None
        return stored

    return app


def _key_matches(request: Request, keys: list[str]) -> bool:
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    # compare_digest against every key, so timing tells nothing about which matched
    return any([hmac.compare_digest(given.encode(), key.encode()) for key in keys])


def _chat_response(
    rid: str, model: str, served: ServedModel, result: Generation, use: p.Usage
) -> JSONResponse:
    choice = p.ChatChoice(
        message={"role": "assistant", "content": result.text}, finish_reason=result.finish_reason
    )
    body = p.ChatCompletion(
        id=rid,
        created=p.now(),
        model=model,
        choices=[choice],
        usage=use,
        model_version=served.version,
    )
    return JSONResponse(
        body.model_dump(), headers={"X-Request-Id": rid, "X-Model-Version": served.version}
    )


def _sse(obj) -> str:
    return f"data: {json.dumps(obj.model_dump(exclude_none=True), ensure_ascii=False)}\n\n"


async def _deltas(job: Job, request: Request, served: ServedModel) -> AsyncIterator[str]:
    """The job's text pieces as they come; cancels the job if the client leaves."""
    try:
        while True:
            try:
                delta = await asyncio.wait_for(job.deltas.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    served.batcher.cancel(job)
                    return
                continue
            if delta is None:
                return
            yield delta
    except asyncio.CancelledError:
        served.batcher.cancel(job)
        raise


def _finished(job: Job) -> Generation | None:
    ok = job.future.done() and not job.future.cancelled() and job.future.exception() is None
    return job.future.result() if ok else None


def _usage(result: Generation) -> p.Usage:
    return p.Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


async def _stream(job: Job, request, served, make, with_usage: bool, opening: str | None = None):
    """SSE for one job: `make(delta, finish_reason, usage)` builds each chunk in its format."""
    if opening is not None:
        yield opening
    async for delta in _deltas(job, request, served):
        yield make(delta, None, None)
    result = _finished(job)
    if result is not None:
        yield make(None, result.finish_reason, None)
        if with_usage:  # as OpenAI: a last chunk with no choices and the usage
            yield make(None, None, _usage(result))
    yield "data: [DONE]\n\n"


def _chat_stream(rid, model, served, job: Job, request, with_usage: bool) -> AsyncIterator[str]:
    def make(delta: str | None, finish: str | None, use: p.Usage | None) -> str:
        content = {"content": delta} if delta is not None else {}
        choices = [] if use else [p.ChatChunkChoice(delta=content, finish_reason=finish)]
        return _sse(
            p.ChatCompletionChunk(
                id=rid,
                created=p.now(),
                model=model,
                choices=choices,
                usage=use,
                model_version=served.version,
            )
        )

    opening = _sse(
        p.ChatCompletionChunk(
            id=rid,
            created=p.now(),
            model=model,
            model_version=served.version,
            choices=[p.ChatChunkChoice(delta={"role": "assistant", "content": ""})],
        )
    )
    return _stream(job, request, served, make, with_usage, opening)


def _completion_stream(
    rid, model, served, job: Job, request, with_usage: bool
) -> AsyncIterator[str]:
    def make(delta: str | None, finish: str | None, use: p.Usage | None) -> str:
        choices = [] if use else [p.CompletionChoice(text=delta or "", finish_reason=finish)]
        return _sse(
            p.Completion(
                id=rid,
                created=p.now(),
                model=model,
                choices=choices,
                usage=use,
                model_version=served.version,
            )
        )

    return _stream(job, request, served, make, with_usage)


async def _logged(stream: AsyncIterator[str], job: Job, on_done) -> AsyncIterator[str]:
    """Pass the stream through, then log the whole answer once it finished."""

    async for item in stream:
        yield item
    if job.future.done() and not job.future.cancelled() and job.future.exception() is None:
        await on_done(job.future.result().text)
