"""`GET /openapi.json`, `/docs` (Swagger UI) and `/redoc`: FastAPI's own, behind the API keys
when any is set (the schema lists every route; the pages fetch it with the console's login
cookie, so log in at /ui/login first to browse them with keys set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse

from kollm.serve.deps import authorize

router = APIRouter(dependencies=[Depends(authorize)], include_in_schema=False)


def _schema_url(request: Request) -> str:
    # behind a route prefix (Ray Serve's route_prefix) the page must fetch the prefixed path
    return request.scope.get("root_path", "").rstrip("/") + "/openapi.json"


@router.get("/openapi.json")
def openapi(request: Request):
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def swagger(request: Request):
    return get_swagger_ui_html(openapi_url=_schema_url(request), title="kollm - Swagger UI")


@router.get("/redoc")
def redoc(request: Request):
    return get_redoc_html(openapi_url=_schema_url(request), title="kollm - ReDoc")
