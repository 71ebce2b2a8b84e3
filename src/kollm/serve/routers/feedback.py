"""`POST /v1/feedback`: a rating (and correction) of a logged answer."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from kollm.feedback.store import FeedbackError, FeedbackStore
from kollm.serve import protocol as p
from kollm.serve.deps import authorize, state
from kollm.serve.errors import ApiError

router = APIRouter()


@router.post("/v1/feedback", dependencies=[Depends(authorize)])
async def feedback(body: p.FeedbackRequest, request: Request):
    """Rate a logged answer, with an optional correction."""
    request_log = state(request).request_log
    if request_log is None:
        raise ApiError(
            400,
            "this server logs no responses (--no-log), so it takes no feedback",
            "invalid_request_error",
            "response_id",
        )
    store = FeedbackStore(request_log.home)
    try:
        return await asyncio.to_thread(
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
