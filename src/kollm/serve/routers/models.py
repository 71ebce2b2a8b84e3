"""`GET /v1/models`: every served model, and `BASE:ADAPTER` for each adapter on it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state

router = APIRouter()


@router.get("/v1/models", dependencies=GUARD)
async def models(request: Request) -> p.ModelList:
    """Every served model id, adapters as BASE:ADAPTER."""
    cards = []
    for m in state(request).manager.models.values():
        cards.append(p.ModelCard(id=m.model_id, created=p.now(), model_version=m.version))
        cards += [
            p.ModelCard(id=f"{m.model_id}:{a}", created=p.now(), model_version=m.version)
            for a in m.adapters
        ]
    return p.ModelList(data=cards)
