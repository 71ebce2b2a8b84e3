"""Which module owns each table of the shared store: the one module whose SQL names it.

Every other package reads and writes a table through its owner's functions, so the day the
tables move to another database the SQL to port sits in these modules alone. The migrations
(`kollm.store.migrations`) create every table and are the one other place that names them;
`tests/test_layers.py` checks that no other module's SQL does.

Tables that one statement must join or check together (a rating and the answer it rates)
share an owner.
"""

from __future__ import annotations

import re

from kollm.store.migrations import MIGRATIONS

OWNERS: dict[str, str] = {
    # the model registry: versions, aliases, their moves, measurements and exports
    "model_versions": "kollm.registry.store",
    "aliases": "kollm.registry.store",
    "alias_log": "kollm.registry.store",
    "evaluations": "kollm.registry.store",
    "exports": "kollm.registry.store",
    # the request log and the ratings of its answers (rows joins them, prune keeps rated ones)
    "responses": "kollm.feedback.store",
    "feedback": "kollm.feedback.store",
    "feedback_reviews": "kollm.feedback.store",
    "candidate_picks": "kollm.feedback.picks",
    # the loop's audit log: written by the loop, read by the console too
    "loop_decisions": "kollm.feedback.decisions",
    # the job executors' table: written by cluster's executors, read by the console too
    "jobs": "kollm.jobtable",
    # retrieval: documents, chunks, their keyword index (FTS5), vectors and term counts
    "rag_documents": "kollm.rag.index",
    "rag_chunks": "kollm.rag.index",
    "rag_terms": "kollm.rag.index",
    "rag_vectors": "kollm.rag.index",
    "rag_df": "kollm.rag.index",
    # answers of an endpoint (the judge's, synthesis's), keyed by what decides them
    "endpoint_cache": "kollm.endpoint",
    # what was done through the web console
    "audit_log": "kollm.serve.ui.routes",
    # the migrations' own record
    "_migrations": "kollm.store",
}

# Names a migration gave a table that a later one renamed: no module may use them.
RENAMED = {"judge_cache": "endpoint_cache"}

__all__ = ["OWNERS", "RENAMED", "owner", "tables"]


def owner(table: str) -> str:
    """The module that owns `table`; KeyError names a table nobody owns."""
    try:
        return OWNERS[table]
    except KeyError:
        raise KeyError(f"no owner for table {table!r}: add it to kollm.store.owners") from None


def tables() -> set[str]:
    """Every table the migrations create (virtual tables too), under its latest name."""
    created = set()
    for _name, sql in MIGRATIONS:
        created |= set(re.findall(r"CREATE\s+(?:VIRTUAL\s+)?TABLE\s+(\w+)", sql, re.I))
    return {RENAMED.get(t, t) for t in created} | {"_migrations"}
