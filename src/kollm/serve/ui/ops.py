"""The console's operations screens: the loop's decisions, jobs with a live log, runs side by
side, and the candidate answers a reviewer picks from. They read the loop's decisions and the
jobs through the tables' owners (`kollm.feedback.decisions`, `kollm.jobtable`): the server knows
nothing of the pipeline or the cluster code that writes them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from kollm.feedback.decisions import LoopDecisions
from kollm.feedback.picks import CandidatePicks, PickError
from kollm.jobtable import JobTable
from kollm.logtail import LogTail, poll_interval
from kollm.serve.ui.routes import (
    SQLITE_MAX,
    RowId,
    _checked,
    _guard,
    _home,
    _page,
    _runs_dir,
    _who,
    audit,
    read_runs,
    refused,
    router,
)

ACTIVE = ("queued", "running")  # the job states whose log may still grow


@router.get("/loop", response_class=HTMLResponse)
def loop_page(request: Request, model: str = ""):
    if (denied := _guard(request)) is not None:
        return denied
    decisions = LoopDecisions(_home(request))
    rows = decisions.rows(model or None, newest_first=True)
    return _page(request, "loop.html", decisions=rows, models=decisions.models(), model=model)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request):
    if (denied := _guard(request)) is not None:
        return denied
    jobs = JobTable(_home(request)).rows(newest_first=True, limit=500)
    return _page(request, "jobs.html", jobs=jobs)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: RowId):
    if (denied := _guard(request)) is not None:
        return denied
    job = JobTable(_home(request)).get(job_id)
    if job is None:
        return refused(f"no job {job_id}", 404)
    for column in ("command", "resources", "devices"):
        job[column] = json.loads(job[column] or "null")
    return _page(request, "job.html", job=job, active=job["status"] in ACTIVE)


@router.get("/jobs/{job_id}/log")
def job_log(request: Request, job_id: RowId, poll_s: float = 0.5):
    """The job's log as server-sent events: what it holds, then each addition, until the job
    ends (`event: end` with its status). Each poll reads only what was appended (a 1-MiB
    event at most), and polls are at least MIN_POLL_S apart whatever `poll_s` asks."""
    if (denied := _guard(request)) is not None:
        return denied
    jobs = JobTable(_home(request))
    if jobs.get(job_id) is None:
        return Response(status_code=404)
    poll_s = poll_interval(poll_s)

    async def events():
        tail = None
        while True:
            job = jobs.get(job_id)
            if tail is None or str(tail.path) != job["log_path"]:
                tail = LogTail(job["log_path"])
            while text := await asyncio.to_thread(tail.read):
                yield f"data: {json.dumps(text, ensure_ascii=False)}\n\n"
            if job["status"] not in ACTIVE:
                yield f"event: end\ndata: {json.dumps(job['status'])}\n\n"
                return
            await asyncio.sleep(poll_s)

    return StreamingResponse(events(), media_type="text/event-stream")


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, a: str = "", b: str = ""):
    """Two runs side by side: every stage's summary and every eval metric with its change."""
    if (denied := _guard(request)) is not None:
        return denied
    runs = {r["name"]: r for r in read_runs(_runs_dir(request))}
    left, right = runs.get(a), runs.get(b)
    rows = []
    if left and right:
        for key in dict.fromkeys([*left["metrics"], *right["metrics"]]):
            x, y = left["metrics"].get(key), right["metrics"].get(key)
            delta = y - x if isinstance(x, int | float) and isinstance(y, int | float) else None
            rows.append({"key": key, "a": x, "b": y, "delta": delta})
    stages = list(
        dict.fromkeys([*(left or {}).get("stages", {}), *(right or {}).get("stages", {})])
    )
    return _page(
        request,
        "compare.html",
        names=sorted(runs),
        a=a,
        b=b,
        left=left,
        right=right,
        metrics=rows,
        stages=stages,
    )


def _candidate_files(request: Request) -> dict[str, Path]:
    """Each synthesis output's pending_review.jsonl under the runs dir (runs/NAME/synth/)."""
    root = _runs_dir(request)
    found = sorted(root.glob("*/*/pending_review.jsonl")) if root.exists() else []
    return {str(p.relative_to(root)): p for p in found}


@router.get("/candidates", response_class=HTMLResponse)
def candidates_page(request: Request, file: str = ""):
    if (denied := _guard(request)) is not None:
        return denied
    files = _candidate_files(request)
    file = file if file in files else next(iter(files), "")
    items = CandidatePicks(_home(request)).items(files[file]) if file else []
    return _page(request, "candidates.html", files=list(files), file=file, items=items)


@router.post("/candidates/pick")
def pick(
    request: Request,
    file: str = Form(...),
    sha: str = Form(...),
    picked: int = Form(..., ge=0, le=SQLITE_MAX),
    csrf: str = Form(""),
):
    """An admin's pick of the best answer; the file's reviewed pairs are rewritten."""
    if (denied := _checked(request, csrf)) is not None:
        return denied
    files = _candidate_files(request)
    if file not in files:
        return refused(f"no candidates file {file!r} under the runs dir", 404)
    try:
        CandidatePicks(_home(request)).pick(files[file], sha, picked, _who(request))
    except PickError as err:
        return refused(str(err), 400)
    audit(request, "pick", f"{file}:{sha[:12]}", {"picked": picked})
    return RedirectResponse(f"/ui/candidates?file={file}#item-{sha[:12]}", status_code=303)
