"""The console's pages. Roles: a key of the server's API keys views (anyone does when the
server has no keys at all); an admin key also promotes and rolls back. A form's CSRF token is
an HMAC of the logged-in key with the secret the replicas share (`kollm.serve.sessions`), so a
page of another site cannot post one and any replica accepts it.

Login: the login page sets a random nonce cookie and its form carries an HMAC of it (a
double-submit token, as no session exists yet); the login cookie then holds a signed session
token, never the key, and is `Secure` when the request came over https (the URL's scheme, or
`X-Forwarded-Proto: https` from a proxy: trusting the header can only make the cookie
stricter)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import html
import json
import re
import secrets
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from kollm.registry import RegistryError
from kollm.serve.deps import UI_COOKIE, given_key, state
from kollm.serve.keys import key_name
from kollm.serve.ui.labels import labels
from kollm.store import connect

router = APIRouter(prefix="/ui")
# A row id or version as SQLite stores it (a signed 64-bit integer): a larger one is a 400, not
# an OverflowError at the query (a 500, found by the fuzz test).
RowId = Annotated[int, PathParam(ge=0, le=2**63 - 1)]
SQLITE_MAX = 2**63 - 1
STATIC = Path(__file__).parent / "static"
LOGIN_COOKIE = "kollm_login"  # the login form's nonce (double-submit CSRF before a session)
_env = Environment(
    loader=PackageLoader("kollm.serve.ui", "templates"), autoescape=select_autoescape()
)


def brief(value: Any, depth: int = 0) -> str:
    """A stage summary in one line: its numbers and short strings, nested mappings one level
    deep (`output: train 1281, dev 255`); lists and long texts left out."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, bool | int) or (isinstance(value, str) and len(value) <= 40):
        return str(value)
    if isinstance(value, dict) and depth < 2:
        parts = []
        for k, v in value.items():
            shown = brief(v, depth + 1)
            if shown:
                parts.append(f"{k}: {shown}" if depth == 0 else f"{k} {shown}")
        return (", " if depth else " · ").join(parts)
    return ""


_env.filters["brief"] = brief


def _who(request: Request) -> str:
    return key_name(given_key(request), state(request).settings.key_names)


def _role(request: Request) -> str | None:
    """'admin', 'viewer', or None when the request may not see the console."""
    settings = state(request).settings
    key = given_key(request)
    matches = [hmac.compare_digest(key.encode(), k.encode()) for k in settings.admin_keys]
    if key and any(matches):
        return "admin"
    if not settings.api_keys and not settings.admin_keys:
        return "viewer"
    viewer = [hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys]
    return "viewer" if key and any(viewer) else None


def _csrf(request: Request) -> str:
    return state(request).sessions.sign("csrf", given_key(request))[:32]


def _login_token(request: Request, nonce: str) -> str:
    return state(request).sessions.sign("login", nonce)[:32]


def _same(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    lang = request.query_params.get("lang", "ko")
    session_csrf = _csrf(request)
    context.setdefault("csrf", session_csrf)  # the login page's form has its own token
    html = _env.get_template(template).render(
        t=labels(lang),
        lang=lang,
        role=_role(request),
        session_csrf=session_csrf,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html)


def refused(message: str, status: int) -> HTMLResponse:
    """An error page of one line: `message` escaped, since it may echo what the request sent."""
    return HTMLResponse(html.escape(message, quote=False), status)  # body text, no attribute


def _guard(request: Request, admin: bool = False) -> Response | None:
    """A redirect to the login page, a 403, or None when the request may go on."""
    role = _role(request)
    if role is None:
        return RedirectResponse("/ui/login", status_code=303)
    if admin and role != "admin":
        return HTMLResponse(labels(request.query_params.get("lang"))["admin_only"], 403)
    return None


def _home(request: Request) -> Path:
    manager = state(request).manager
    return manager.registry.home if manager.registry is not None else Path(".kollm")


def audit(request: Request, action: str, target: str, detail: dict[str, Any]) -> None:
    with closing(connect(_home(request) / "registry.db")) as conn, conn:
        conn.execute(
            "INSERT INTO audit_log (at, key_name, action, target, detail) VALUES (?,?,?,?,?)",
            (
                dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                _who(request),
                action,
                target,
                json.dumps(detail, ensure_ascii=False),
            ),
        )


@router.get("/static/{name}")
def static(name: str):
    path = (STATIC / name).resolve()
    if path.parent != STATIC.resolve() or not path.is_file():
        return Response(status_code=404)
    return FileResponse(path)


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
def index():
    return RedirectResponse("/ui/runs", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request):
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
    failed = request.query_params.get("failed") == "1"
    response = _page(request, "login.html", failed=failed, csrf=_login_token(request, nonce))
    secure = _https(request)
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=secure)
    return response


@router.post("/login")
def login(request: Request, key: str = Form(""), csrf: str = Form("")):
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not _same(csrf, _login_token(request, nonce)):
        return HTMLResponse("CSRF token missing or wrong: open /ui/login and log in there", 403)
    settings = state(request).settings
    known = [*settings.api_keys, *settings.admin_keys]
    if not key or not any([hmac.compare_digest(key.encode(), k.encode()) for k in known]):
        return RedirectResponse("/ui/login?failed=1", status_code=303)
    sessions = state(request).sessions
    response = RedirectResponse("/ui/runs", status_code=303)
    response.set_cookie(
        UI_COOKIE,
        sessions.issue(key),
        max_age=int(sessions.ttl_s),
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")):
    if not _same(csrf, _csrf(request)):
        return HTMLResponse("CSRF token missing or wrong", 403)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(UI_COOKIE, httponly=True, samesite="strict", secure=_https(request))
    return response


def _runs_dir(request: Request) -> Path:
    return (state(request).settings.runs_dir or Path("runs")).resolve()


def read_runs(root: Path) -> list[dict[str, Any]]:
    """Each run dir under `root` with its stages' summaries and the eval metrics."""
    runs = []
    for run in sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else []:
        stages = {}
        for marker in sorted(run.glob("*/stage.json")):
            stages[marker.parent.name] = json.loads(marker.read_text()).get("summary")
        if not stages:
            continue
        metrics_file = run / "eval" / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        runs.append(
            {
                "name": run.name,
                "stages": stages,
                "metrics": metrics.get("model", {}),
                "loss": (run / "train" / "loss.png").exists(),
                "report": (run / "eval" / "report.html").exists(),
                "data_report": (run / "data" / "report" / "report.html").exists(),
            }
        )
    return runs


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request):
    if (denied := _guard(request)) is not None:
        return denied
    return _page(request, "runs.html", runs=read_runs(_runs_dir(request)))


@router.get("/runs/{name}/{kind}")
def run_file(request: Request, name: str, kind: str):
    if (denied := _guard(request)) is not None:
        return denied
    files = {
        "loss.png": "train/loss.png",
        "report.html": "eval/report.html",
        "data.html": "data/report/report.html",
    }
    if re.fullmatch(r"[\w-]+\.png", kind) and kind not in files:
        files[kind] = f"data/report/{kind}"  # the data report's own charts, linked relatively
    root = _runs_dir(request)
    path = (root / name / files.get(kind, "-")).resolve()
    if kind not in files or root not in path.parents or not path.is_file():
        return Response(status_code=404)
    return FileResponse(path)


@router.get("/registry", response_class=HTMLResponse)
def registry_page(request: Request):
    if (denied := _guard(request)) is not None:
        return denied
    registry = state(request).manager.registry
    versions = registry.list() if registry is not None else []
    with closing(connect(_home(request) / "registry.db")) as conn:
        log = [dict(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY id DESC LIMIT 20")]
    conversions = [
        {"ref": v.ref, **row, **row["detail"]["quality"]}
        for v in versions
        for row in registry.exports(v.ref)
        if row["detail"].get("quality")
    ]
    return _page(request, "registry.html", versions=versions, audit=log, conversions=conversions)


def _checked(request: Request, token: str) -> Response | None:
    if (denied := _guard(request, admin=True)) is not None:
        return denied
    if not hmac.compare_digest(token.encode(), _csrf(request).encode()):
        return HTMLResponse("CSRF token missing or wrong", 403)
    return None


@router.post("/registry/promote")
def promote(
    request: Request,
    name: str = Form(...),
    version: int = Form(..., ge=0, le=SQLITE_MAX),
    alias: str = Form("production"),
    csrf: str = Form(""),
):
    if (denied := _checked(request, csrf)) is not None:
        return denied
    try:
        state(request).manager.registry.promote(name, version, alias)
    except RegistryError as err:  # an unknown version or a bad alias: the admin's to fix
        return refused(str(err), 400)
    audit(request, "promote", f"{name}@{alias}", {"version": version})
    return RedirectResponse("/ui/registry", status_code=303)


@router.post("/registry/rollback")
def rollback(
    request: Request, name: str = Form(...), alias: str = Form("production"), csrf: str = Form("")
):
    if (denied := _checked(request, csrf)) is not None:
        return denied
    try:
        moved = state(request).manager.registry.rollback(name, alias)
    except RegistryError as err:  # no such alias, or no earlier version to return to
        return refused(str(err), 400)
    audit(request, "rollback", f"{name}@{alias}", {"version": moved.version})
    return RedirectResponse("/ui/registry", status_code=303)


@router.get("/feedback", response_class=HTMLResponse)
def feedback_page(
    request: Request, category: str = "", model: str = "", since: str = "", until: str = ""
):
    """The review queue, newest first: filtered by category, model version and dates
    (`since` and `until` as YYYY-MM-DD, both days included)."""
    from kollm.feedback.store import CATEGORIES, FeedbackStore

    if (denied := _guard(request)) is not None:
        return denied
    store = FeedbackStore(_home(request))
    rows = store.rows()
    versions = sorted({r["model_version"] for r in rows if r.get("model_version")})
    rows = [r for r in rows if _wanted(r, category, model, since, until)]
    items = []
    for r in reversed(rows[-200:]):
        request_body = json.loads(r["request"] or "{}")
        rag = json.loads(r["rag"]) if r.get("rag") else None
        items.append({**r, "messages": request_body.get("messages", []), "rag_info": rag})
    filters = {"category": category, "model": model, "since": since, "until": until}
    return _page(
        request,
        "feedback.html",
        items=items,
        total=len(rows),
        categories=CATEGORIES,
        versions=versions,
        agreement=store.reviewer_agreement(),
        **filters,
    )


def _wanted(row: dict[str, Any], category: str, model: str, since: str, until: str) -> bool:
    day = str(row.get("created_at") or "")[:10]
    return (
        (not category or category in row["categories"])
        and (not model or row.get("model_version") == model or row.get("model") == model)
        and (not since or day >= since)
        and (not until or day <= until)
    )


@router.post("/feedback/{feedback_id}/review")
async def review(request: Request, feedback_id: RowId):
    """An admin's verdict on a rating: categories confirmed or changed, and a correction."""
    from kollm.feedback.store import FeedbackError, FeedbackStore

    form = await request.form()
    if (denied := _checked(request, str(form.get("csrf", "")))) is not None:
        return denied
    categories = [str(c) for c in form.getlist("categories")]
    correction = str(form.get("correction") or "") or None

    def save() -> None:  # the store's writes wait on its lock: not on the event loop
        FeedbackStore(_home(request)).review(feedback_id, _who(request), categories, correction)
        audit(request, "review", f"feedback:{feedback_id}", {"categories": categories})

    try:
        await asyncio.to_thread(save)
    except FeedbackError as err:
        return refused(str(err), err.status)
    return RedirectResponse(f"/ui/feedback#feedback-{feedback_id}", status_code=303)


@router.get("/chat", response_class=HTMLResponse)
def chat_page(request: Request):
    if (denied := _guard(request)) is not None:
        return denied
    from kollm.feedback.store import CATEGORIES

    manager = state(request).manager
    models = []
    for model_id in sorted(manager.models):  # each model, then its adapters as BASE:ADAPTER
        models += [model_id, *(f"{model_id}:{a}" for a in manager.models[model_id].adapters)]
    collections = sorted(state(request).rag.retriever.index.collections())
    tasks = {}  # every model's task services, by name (a model without one answers 404)
    for served in manager.models.values():
        tasks.update({name: t.description for name, t in served.tasks.items()})
    return _page(
        request,
        "chat.html",
        models=models,
        collections=collections,
        tasks=sorted(tasks.items()),
        categories=CATEGORIES,
    )
