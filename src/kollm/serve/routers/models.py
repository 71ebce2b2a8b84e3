"""`GET /v1/models`: every served model, `BASE:ADAPTER` for each adapter on it, and
`MODEL/TASK` for each of its task services."""

from __future__ import annotations

from fastapi import APIRouter, Request

from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state

router = APIRouter()


@router.get("/v1/models", dependencies=GUARD)
async def models(request: Request) -> p.ModelList:
    """Every served model id with its context length, adapters as BASE:ADAPTER with their
    base as `parent`, task services as MODEL/TASK with their `task` and `description`."""
    cards = []
    for m in state(request).manager.models.values():
        card = p.ModelCard(
            id=m.model_id,
            created=p.now(),
            root=m.model_id,
            max_model_len=m.engine.context_length,
            model_version=m.version,
        )
        cards.append(card)
        cards += [
            card.model_copy(update={"id": f"{m.model_id}:{a}", "parent": m.model_id})
            for a in m.adapters
        ]
        cards += [
            card.model_copy(
                update={"id": f"{m.model_id}/{name}", "task": name, "description": t.description}
            )
            for name, t in sorted(m.tasks.items())
        ]
    return p.ModelList(data=cards)
