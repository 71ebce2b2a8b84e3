"""`POST /v1/feedback`: a rating (and correction) of a logged answer. Each rating records the
key that posted it (its name, or a hash: never the key), and a key gets 429 with Retry-After
once it posted `feedback_per_key_per_hour` ratings in the last hour."""

from __future__ import annotations

import asyncio
import sqlite3

from fastapi import APIRouter, Depends, Request

from kollm.feedback.store import FeedbackError, FeedbackLimitError, FeedbackStore
from kollm.serve import protocol as p
from kollm.serve.deps import authorize, given_key, state
from kollm.serve.errors import ApiError
from kollm.serve.keys import key_name

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
    settings = state(request).settings
    # without keys every caller shares one count: a made-up Bearer value is no key of its own
    keyed = settings.api_keys or settings.admin_keys
    who = key_name(given_key(request), settings.key_names) if keyed else "anonymous"

    def add() -> dict:  # opening the store migrates it: not on the event loop
        return FeedbackStore(request_log.home).add(
            body.response_id,
            body.rating,
            body.categories,
            body.comment,
            body.correction,
            "api",
            who,
            settings.feedback_per_key_per_hour,
        )

    try:
        return await asyncio.to_thread(add)
    except FeedbackLimitError as err:
        raise ApiError(
            429, str(err), "rate_limit_error", headers={"Retry-After": str(err.retry_after_s)}
        ) from None
    except FeedbackError as err:
        raise ApiError(err.status, str(err), "invalid_request_error", err.field) from None
    except sqlite3.Error as err:  # a full disk or a read-only store: the rating was not kept
        raise ApiError(
            503,
            f"the feedback store cannot take the rating now ({err}); retry later",
            "service_unavailable",
            headers={"Retry-After": "30"},
        ) from None
