"""OpenAI's error JSON: 400 bad body (naming the field; a token id outside the vocabulary, a
stop string too long), 401 API key, 403 admin off, 404 unknown model, 413 prompt longer than
the context or body over `serve.max_body_mb`, 429 queue full (with Retry-After), 503 not
ready, 504 timeout."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kollm.serve import protocol as p


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


def error_response(
    status: int, message: str, kind: str, param: str | None = None, headers=None
) -> JSONResponse:
    """An error in OpenAI's JSON shape."""
    body = p.ErrorResponse(
        error=p.ErrorBody(message=message, type=kind, param=param, code=str(status))
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """ApiError and request validation errors as OpenAI's error JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError):
        return error_response(err.status, err.message, err.kind, err.param, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_request: Request, err: RequestValidationError):
        first = err.errors()[0]
        param = ".".join(str(x) for x in first["loc"] if x != "body")
        return error_response(
            400, f"{param or 'body'}: {first['msg']}", "invalid_request_error", param or None
        )
