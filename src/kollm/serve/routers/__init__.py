"""Thin routers, one per resource: parse the body, call the service, shape the answer."""

from kollm.serve.routers import (
    admin,
    chat,
    completions,
    docs,
    embeddings,
    feedback,
    health,
    models,
    tokenize,
)

ROUTERS = [
    health.router,
    models.router,
    chat.router,
    completions.router,
    embeddings.router,
    feedback.router,
    admin.router,
    tokenize.router,
    docs.router,
]
