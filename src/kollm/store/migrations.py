"""Ordered, named schema migrations. The schema changes only by appending to MIGRATIONS.

Each migration runs once, inside the transaction that records it in `_migrations`, so two
processes opening a new store at once cannot both apply it.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_model_versions",
        """
        CREATE TABLE model_versions (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            artifact_path TEXT NOT NULL,
            weights_sha256 TEXT NOT NULL,
            base_model TEXT,
            method TEXT,
            data_manifest TEXT,
            recipe_text TEXT,
            recipe_sha256 TEXT,
            metrics TEXT NOT NULL DEFAULT '{}',
            kollm_version TEXT NOT NULL,
            created_at TEXT NOT NULL,
            parent_version INTEGER,
            PRIMARY KEY (name, version)
        );
        """,
    ),
    (
        "002_aliases",
        """
        CREATE TABLE aliases (
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (name, alias),
            FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
        );
        -- Append-only: every alias move, so rollback knows the previous holder.
        CREATE TABLE alias_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            alias TEXT NOT NULL,
            from_version INTEGER,
            to_version INTEGER NOT NULL,
            action TEXT NOT NULL,
            at TEXT NOT NULL
        );
        CREATE TRIGGER alias_log_no_update BEFORE UPDATE ON alias_log
        BEGIN SELECT RAISE(ABORT, 'alias_log is append-only'); END;
        CREATE TRIGGER alias_log_no_delete BEFORE DELETE ON alias_log
        BEGIN SELECT RAISE(ABORT, 'alias_log is append-only'); END;
        """,
    ),
    (
        "003_responses",
        """
        -- Every answer the server gave, PII-masked, so that feedback can point at it.
        CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            model TEXT NOT NULL,
            model_version TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            finish_reason TEXT,
            latency_ms REAL
        );
        CREATE INDEX responses_model ON responses (model, created_at);
        """,
    ),
    (
        "004_feedback",
        """
        -- Ratings and corrections of logged answers; one response may be rated many times.
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            response_id TEXT NOT NULL REFERENCES responses (id),
            created_at TEXT NOT NULL,
            rating TEXT NOT NULL,
            score INTEGER NOT NULL,
            is_good INTEGER NOT NULL,
            categories TEXT NOT NULL DEFAULT '[]',
            comment TEXT,
            correction TEXT,
            source TEXT NOT NULL
        );
        CREATE INDEX feedback_response ON feedback (response_id);
        CREATE INDEX feedback_created ON feedback (created_at);
        """,
    ),
    (
        "005_loop_decisions",
        """
        -- The feedback loop's audit log: every decision with the numbers that led to it.
        CREATE TABLE loop_decisions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            model TEXT NOT NULL,
            alias TEXT NOT NULL,
            trigger TEXT NOT NULL,
            production_version INTEGER,
            candidate_version INTEGER,
            decision TEXT NOT NULL,
            metrics TEXT NOT NULL DEFAULT '{}',
            export_sha256 TEXT
        );
        CREATE TRIGGER loop_decisions_no_update BEFORE UPDATE ON loop_decisions
        BEGIN SELECT RAISE(ABORT, 'loop_decisions is append-only'); END;
        """,
    ),
    (
        "006_jobs",
        """
        -- Jobs of the local executor: a recipe stage run as a detached process.
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            stage TEXT NOT NULL,
            command TEXT NOT NULL,
            executor TEXT NOT NULL,
            resources TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL,
            submitted_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            pid INTEGER,
            exit_code INTEGER,
            log_path TEXT NOT NULL
        );
        """,
    ),
    (
        "007_job_placement",
        """
        -- Where a job runs: the CUDA devices the local executor gave it, or the Ray cluster
        -- (dashboard address) and the submission id Ray knows it by.
        ALTER TABLE jobs ADD COLUMN devices TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE jobs ADD COLUMN address TEXT;
        ALTER TABLE jobs ADD COLUMN external_id TEXT;
        """,
    ),
    (
        "008_immutable_versions",
        """
        -- A version's files are stored content-addressed under KOLLM_HOME/artifacts; `files`
        -- holds each file's sha256 (checked on load), `prompt_format` the format it trained with.
        ALTER TABLE model_versions ADD COLUMN files TEXT;
        ALTER TABLE model_versions ADD COLUMN prompt_format TEXT;
        """,
    ),
    (
        "009_rag",
        """
        -- Retrieval: each indexed file (its content hash decides re-indexing), its chunks with
        -- their place, and a keyword index over the chunks' content morphemes (FTS5, rowid =
        -- chunk id; the terms are computed by kollm, so FTS5's own tokenizer only splits spaces).
        CREATE TABLE rag_documents (
            collection TEXT NOT NULL,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            indexed_at TEXT NOT NULL,
            chunks INTEGER NOT NULL,
            PRIMARY KEY (collection, path)
        );
        CREATE TABLE rag_chunks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            collection TEXT NOT NULL,
            path TEXT NOT NULL,
            doc_id TEXT NOT NULL,
            ord INTEGER NOT NULL,
            page INTEGER,
            start INTEGER NOT NULL,
            end INTEGER NOT NULL,
            text TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}',
            terms INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX rag_chunks_path ON rag_chunks (collection, path);
        CREATE VIRTUAL TABLE rag_terms USING fts5(terms, tokenize = 'unicode61');
        """,
    ),
    (
        "010_rag_vectors_and_citations",
        """
        -- Dense retrieval: one float32 vector per chunk and encoder (so a new encoder does not
        -- mix with vectors of the old one); and the chunks each RAG answer was given, so
        -- feedback on an answer can be traced to its sources.
        CREATE TABLE rag_vectors (
            chunk_id INTEGER NOT NULL,
            encoder TEXT NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (chunk_id, encoder)
        );
        ALTER TABLE responses ADD COLUMN rag TEXT;
        """,
    ),
    (
        "011_rag_term_df",
        """
        -- Each term's document frequency per collection, kept by the indexer, so BM25's IDF
        -- is a lookup and not a count over the collection at every query (a collection
        -- indexed before this migration gets its rows at its first search).
        CREATE TABLE rag_df (
            collection TEXT NOT NULL,
            term TEXT NOT NULL,
            df INTEGER NOT NULL,
            PRIMARY KEY (collection, term)
        ) WITHOUT ROWID;
        """,
    ),
    (
        "012_judge_cache",
        """
        -- LLM-as-judge answers keyed by the sha256 of the endpoint, model, settings, run and
        -- messages: a rerun of the same judging costs no call.
        CREATE TABLE judge_cache (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            response TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """,
    ),
    (
        "013_evaluations",
        """
        -- Measurements taken after a version was registered (benchmarks through lm-eval, judge
        -- scores): appended beside the version, whose own row stays as it was registered.
        CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            kind TEXT NOT NULL,
            metrics TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX evaluations_version ON evaluations (name, version);
        """,
    ),
    (
        "014_endpoint_cache",
        """
        -- The judge's cache serves every call to an endpoint now (synthesis too).
        ALTER TABLE judge_cache RENAME TO endpoint_cache;
        """,
    ),
    (
        "015_audit_log",
        """
        -- What was done through the web console, by which key (its name, never the key).
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            key_name TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        """,
    ),
    (
        "016_feedback_reviews",
        """
        -- A reviewer's verdict on a rating (the console's review queue): the categories it
        -- confirms or changes and a correction. The rating itself stays as it was given; the
        -- latest review is what the export uses.
        CREATE TABLE feedback_reviews (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            feedback_id INTEGER NOT NULL REFERENCES feedback (id),
            reviewer TEXT NOT NULL,
            categories TEXT NOT NULL,
            correction TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX feedback_reviews_item ON feedback_reviews (feedback_id);
        """,
    ),
    (
        "017_candidate_picks",
        """
        -- A reviewer's pick of the best of several candidate answers (synthesis's preference
        -- pairs the judge could not settle). An item is its file and its prompt's sha256, so a
        -- regenerated file keeps the picks of prompts it still holds; the latest pick counts.
        CREATE TABLE candidate_picks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            file TEXT NOT NULL,
            prompt_sha256 TEXT NOT NULL,
            picked INTEGER NOT NULL,
            reviewer TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX candidate_picks_item ON candidate_picks (file, prompt_sha256);
        """,
    ),
    (
        "018_exports",
        """
        -- Every export of a version (hf, gguf, ct2): part of its lineage, appended beside it.
        CREATE TABLE exports (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            format TEXT NOT NULL,
            quant TEXT,
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        );
        CREATE INDEX exports_version ON exports (name, version);
        """,
    ),
    (
        "019_version_lineage",
        """
        -- What else a version came from, as JSON: the vocabulary extension of its base
        -- (`kollm tokenizer extend`: base, data sha256, pieces added).
        ALTER TABLE model_versions ADD COLUMN lineage TEXT;
        """,
    ),
    (
        "020_bounded_log_and_home_paths",
        """
        -- The request log keeps at most `serve.log_max_kb` of a request and of its answer:
        -- the sizes of the originals (bytes of their JSON / UTF-8), and an index for retention.
        ALTER TABLE responses ADD COLUMN request_bytes INTEGER;
        ALTER TABLE responses ADD COLUMN response_bytes INTEGER;
        CREATE INDEX responses_created ON responses (created_at);
        -- A stored artifact is `artifacts/<64-hex key>` under KOLLM_HOME. Rows written while
        -- KOLLM_HOME was relative hold it relative to the working directory of the time
        -- (`.kollm/artifacts/<key>`); the key alone finds it under any home.
        UPDATE model_versions SET artifact_path = 'artifacts/' || substr(artifact_path, -64)
        WHERE substr(artifact_path, 1, 1) != '/' AND length(artifact_path) > 74
            AND substr(artifact_path, -75, 11) = '/artifacts/';
        """,
    ),
    (
        "021_feedback_keys_and_job_runners",
        """
        -- Which API key posted a rating (its name in the key file, or a hash of it; never the
        -- key), so the server can count feedback per key; and when a job's runner process
        -- started (/proc/PID/stat's start time), so a dead runner is told from a reused pid.
        ALTER TABLE feedback ADD COLUMN key_name TEXT;
        CREATE INDEX feedback_key ON feedback (key_name, created_at);
        ALTER TABLE jobs ADD COLUMN runner_started INTEGER;
        """,
    ),
]


# PostgreSQL's text of the migrations whose SQLite text it cannot take as it is (triggers,
# FTS5, substr with a negative start); the others go through `_postgres_ddl`.
_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION kollm_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$
"""
POSTGRES: dict[str, list[str]] = {
    "002_aliases": [
        _APPEND_ONLY,
        "CREATE TRIGGER alias_log_no_change BEFORE UPDATE OR DELETE ON alias_log"
        " FOR EACH ROW EXECUTE FUNCTION kollm_append_only()",
    ],
    "005_loop_decisions": [
        _APPEND_ONLY,
        "CREATE TRIGGER loop_decisions_no_update BEFORE UPDATE ON loop_decisions"
        " FOR EACH ROW EXECUTE FUNCTION kollm_append_only()",
    ],
    # The keyword index: kollm's own morpheme tokens (space-separated, as FTS5 holds them)
    # and a tsvector of exactly those tokens (no parser, no stemming), GIN-indexed.
    "009_rag": [
        "CREATE TABLE rag_terms (rowid BIGINT PRIMARY KEY, terms TEXT NOT NULL,"
        " tsv tsvector GENERATED ALWAYS AS"
        " (array_to_tsvector(string_to_array(terms, ' '))) STORED)",
        "CREATE INDEX rag_terms_tsv ON rag_terms USING gin (tsv)",
    ],
    "020_bounded_log_and_home_paths": [
        "UPDATE model_versions SET artifact_path = 'artifacts/' || right(artifact_path, 64)"
        " WHERE left(artifact_path, 1) != '/' AND length(artifact_path) > 74"
        " AND substr(artifact_path, length(artifact_path) - 74, 11) = '/artifacts/'",
    ],
}


def migrate(conn) -> list[str]:
    """Apply the migrations this database lacks, in order; returns their names."""
    postgres = getattr(conn, "dialect", "sqlite") == "postgresql"
    conn.execute("BEGIN IMMEDIATE")  # two processes creating it at once collide on PostgreSQL
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    conn.execute("COMMIT")
    applied: list[str] = []
    for name, sql in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone()
            if not done:
                for statement in statements(name, sql, postgres):
                    conn.execute(statement)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, _now()))
                applied.append(name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied


def _now() -> str:
    # the format SQLite's datetime('now') wrote before (UTC, seconds)
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def statements(name: str, sql: str, postgres: bool = False) -> list[str]:
    """A migration's statements in SQLite's or PostgreSQL's text."""
    found = _statements(sql)
    if not postgres:
        return found
    own = POSTGRES.get(name, [])
    kept = [s for s in found if not _replaced(name, s)]
    return [_postgres_ddl(s) for s in kept] + own


def _replaced(name: str, statement: str) -> bool:
    """Whether POSTGRES gives this statement its own text."""
    upper = statement.upper()
    if "CREATE TRIGGER" in upper:
        return True
    if name == "009_rag" and "VIRTUAL TABLE" in upper:
        return True
    return name == "020_bounded_log_and_home_paths" and "UPDATE MODEL_VERSIONS" in upper


_TYPES = [
    (
        re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),  # sizes in bytes, pids, start times
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
    (re.compile(r"^(\s*)end BIGINT", re.M), r'\1"end" BIGINT'),
]


def _postgres_ddl(statement: str) -> str:
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def _statements(sql: str) -> list[str]:
    """Split a migration into statements; triggers keep their inner `;`."""
    statements, current = [], []
    for line in sql.strip().splitlines():
        current.append(line)
        joined = "\n".join(current).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            statements.append(joined)
            current = []
    return [s for s in statements if s.strip(" ;\n")]
