"""The store's two backends behind the one surface every module uses (sqlite3's): SQLite, a
file under KOLLM_HOME, and PostgreSQL through psycopg 3, for a cluster whose servers share one
database.

psycopg 3 and not SQLAlchemy: the modules already speak DB-API with SQL text, so a thin
connection that translates that text is all the second backend needs (no ORM, no engine pool
to configure, one maintained driver). On PostgreSQL, `PgConnection` takes the sqlite3 dialect
the modules write and sends PostgreSQL's:

- `?` placeholders become `%s` (not inside string literals);
- `BEGIN IMMEDIATE` becomes `BEGIN` plus a transaction-scoped advisory lock, so writers are
  serialised exactly as SQLite serialises them (read-then-write transactions stay correct);
- `INSERT OR IGNORE` / `INSERT OR REPLACE` become `ON CONFLICT` clauses, an `INSERT` into a
  table with an `id` identity returns it (`lastrowid`), `PRAGMA` is a no-op;
- the FTS5 candidate query of retrieval becomes a tsvector match over the same tokens;
- errors are raised as sqlite3's classes, so callers catch one family on both backends.

Every store call opens a connection and closes it (the modules' `with closing(connect(...))`).
On SQLite that is a file open; on PostgreSQL a TCP connection, an authentication and a server
process, about twice per request a server answers. So `close` gives a PostgreSQL connection
back to a small per-process set of idle ones (`IdleConnections`) that the next `connect` of
the same URL takes: a server's connections are as many as its threads use the store at once,
and at most `POOL_IDLE` stay open between requests. Not psycopg_pool: it is another package,
and its own threads and sizing are more than a reuse of idle connections needs.
"""

from __future__ import annotations

import contextlib
import decimal
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

WRITE_LOCK = 0x6B6F6C6C6D  # pg_advisory_xact_lock key of `BEGIN IMMEDIATE` ("kollm")
# Tables whose `id` is an identity: an INSERT into one returns it (sqlite3's lastrowid).
IDENTITY_TABLES = frozenset(
    {
        "alias_log",
        "feedback",
        "loop_decisions",
        "jobs",
        "rag_chunks",
        "evaluations",
        "audit_log",
        "feedback_reviews",
        "candidate_picks",
        "exports",
    }
)
# The conflict target of `INSERT OR REPLACE` per table (sqlite replaces on any unique key).
PRIMARY_KEYS = {
    "endpoint_cache": ("key",),
    "rag_vectors": ("chunk_id", "encoder"),
    "rag_documents": ("collection", "path"),
    "rag_df": ("collection", "term"),
    "aliases": ("name", "alias"),
}
RESERVED = ("end",)  # sqlite column names PostgreSQL reserves (rag_chunks.end)
POOL_IDLE = 8  # idle PostgreSQL connections a process keeps, all URLs together
IDLE_MAX_S = 300.0  # one idle longer is closed, not reused (the server may have dropped it)
CHECK_AFTER_S = 5.0  # one idle longer is checked with a round trip before it is reused


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in ("postgresql", "postgres")


def connect_postgres(url: str) -> PgConnection:
    try:
        import psycopg
    except ImportError as err:
        raise RuntimeError(
            "a postgresql:// store needs psycopg 3: pip install 'kollm[postgres]'"
        ) from err
    conn = IDLE.take(url)
    if conn is not None:
        return PgConnection(conn, url)
    try:
        # no prepared statements: a pooled connection outlives a migration by another
        # process, and a statement prepared before it would fail ("cached plan must not
        # change result type")
        conn = psycopg.connect(url, autocommit=True, connect_timeout=30, prepare_threshold=None)
    except psycopg.Error as err:
        message = f"cannot connect to the store at {_safe(url)}: {err}"
        raise sqlite3.OperationalError(message) from err
    return PgConnection(conn, url)


class IdleConnections:
    """The psycopg connections `PgConnection.close` gave back, newest last, for the next
    `connect_postgres` of the same URL. Only a connection in no transaction is kept, at most
    `POOL_IDLE` (the oldest is closed), none idle longer than `IDLE_MAX_S`; a forked child
    starts with none (its parent's sockets are not its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[tuple[str, float, Any]] = []  # (url, given back at, connection)

    def take(self, url: str):
        """A live idle connection to `url`, or None."""
        while True:
            with self._lock:
                mine = [i for i, (u, _, _) in enumerate(self._idle) if u == url]
                if not mine:
                    return None
                _, since, conn = self._idle.pop(mine[-1])  # the newest: the old ones expire
            if _usable(conn, time.monotonic() - since):
                return conn

    def give(self, url: str, conn) -> None:
        """Keep `conn` for reuse, or close it (broken, mid-transaction, one too many)."""
        if not _reset(conn):
            return
        now, closing = time.monotonic(), []
        with self._lock:
            self._idle.append((url, now, conn))
            while self._idle and (
                len(self._idle) > POOL_IDLE or now - self._idle[0][1] > IDLE_MAX_S
            ):
                closing.append(self._idle.pop(0)[2])
        for old in closing:
            old.close()

    def clear(self) -> None:
        """Close every idle connection (a test's end, a URL that changed)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _, _, conn in idle:
            conn.close()

    def _forget(self) -> None:
        # in a forked child: drop the parent's connections unclosed (psycopg closes nothing
        # it did not open in this process, so the parent's sessions go on)
        self._lock, self._idle = threading.Lock(), []


IDLE = IdleConnections()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=IDLE._forget)


def _usable(conn, idle_s: float) -> bool:
    """Whether an idle connection can serve again; closes it when not."""
    if conn.closed or conn.broken or idle_s > IDLE_MAX_S:
        conn.close()
        return False
    if idle_s <= CHECK_AFTER_S:
        return True
    try:
        conn.execute("SELECT 1")
        return True
    except Exception:  # a server restart or a dropped socket: a new connection instead
        conn.close()
        return False


def _reset(conn) -> bool:
    """The connection back in no transaction (a caller's error can leave one open); False, and
    closed, when it is broken or still busy."""
    from psycopg.pq import TransactionStatus

    status = conn.info.transaction_status
    if not conn.closed and status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(Exception):  # a dropped connection: closed below
            conn.execute("ROLLBACK")
        status = conn.info.transaction_status
    if conn.closed or conn.broken or status != TransactionStatus.IDLE:
        conn.close()
        return False
    return True


def _safe(url: str) -> str:
    """The URL without its password (it goes into error messages)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class Row(Sequence):
    """sqlite3.Row's surface: by index, by column name, `keys()`, `dict(row)`."""

    __slots__ = ("_keys", "_values")

    def __init__(self, keys: tuple[str, ...], values: tuple) -> None:
        self._keys, self._values = keys, values

    def keys(self) -> list[str]:
        return list(self._keys)

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._values[self._keys.index(key)]
            except ValueError:
                raise IndexError(f"no such column: {key}") from None
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other) -> bool:
        return isinstance(other, Row) and (self._keys, self._values) == (other._keys, other._values)

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._keys, self._values, strict=True))})"


def _value(v: Any) -> Any:
    # SUM over BIGINT is NUMERIC on PostgreSQL; SQLite gives an int or a float
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, memoryview):
        return bytes(v)
    return v


class _Closed:
    """What a closed PgConnection holds: any use is sqlite3's error for a closed database."""

    def __getattr__(self, name: str):
        raise sqlite3.ProgrammingError("Cannot operate on a closed database.")


_CLOSED = _Closed()


class PgCursor:
    """The part of sqlite3.Cursor the modules use: iteration, fetchone/fetchall, lastrowid."""

    def __init__(self, rows: list[Row], lastrowid: int | None, rowcount: int) -> None:
        self._rows, self.lastrowid, self.rowcount = rows, lastrowid, rowcount
        self._at = 0

    def fetchone(self) -> Row | None:
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    def fetchall(self) -> list[Row]:
        rows, self._at = self._rows[self._at :], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection in autocommit mode with sqlite3.Connection's surface."""

    dialect = "postgresql"

    def __init__(self, conn, url: str | None = None) -> None:
        self._conn, self._url = conn, url

    def execute(self, sql: str, params: Sequence = ()) -> PgCursor:
        import psycopg

        statement, params = translate(sql, tuple(params))
        if statement is None:
            return PgCursor([], None, 0)
        try:
            with self._conn.cursor() as cur:
                cur.execute(statement, _params(params) if params else None)
                return self._result(cur, statement)
        except psycopg.Error as err:
            raise _as_sqlite(err) from err

    def _result(self, cur, statement: str) -> PgCursor:
        if cur.description is None:
            return PgCursor([], None, cur.rowcount)
        keys = tuple(d.name for d in cur.description)
        rows = [Row(keys, tuple(_value(v) for v in r)) for r in cur.fetchall()]
        lastrowid = rows[0][0] if rows and statement.endswith(" RETURNING id") else None
        return PgCursor(rows, lastrowid, cur.rowcount)

    def executemany(self, sql: str, seq: Sequence[Sequence]) -> PgCursor:
        """One statement over many rows, pipelined (one round trip, not one a row)."""
        import psycopg

        rows = [_params(tuple(p)) for p in seq]
        if not rows:
            return PgCursor([], None, 0)
        statement, _ = translate(sql, rows[0])
        if statement is None:
            return PgCursor([], None, 0)
        statement = statement.removesuffix(" RETURNING id")
        try:
            with self._conn.cursor() as cur:
                cur.executemany(statement, rows)
                return PgCursor([], None, cur.rowcount)
        except psycopg.Error as err:
            raise _as_sqlite(err) from err

    def copy_rows(self, table: str, columns: list[str], rows: list) -> None:
        """Rows into `table` through COPY (a store's worth of rows in seconds)."""
        names = ", ".join(f'"{c}"' for c in columns)
        with self._conn.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(tuple(row))

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def commit(self) -> None:
        if self.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    def close(self) -> None:
        """Give the connection back for reuse (see `IdleConnections`); a second close, or a
        connection of no URL, closes nothing more."""
        conn, self._conn = self._conn, _CLOSED
        if conn is _CLOSED:
            return
        if self._url is None:
            conn.close()
        else:
            IDLE.give(self._url, conn)

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, kind, *_) -> None:
        # sqlite3's `with conn`: commit what is open, or roll it back on an error
        self.rollback() if kind else self.commit()


def _params(params: tuple) -> tuple:
    return tuple(_param(p) for p in params)


def _param(p: Any) -> Any:
    if isinstance(p, bool):  # sqlite keeps a bool as 0/1; PostgreSQL has no bool -> bigint cast
        return int(p)
    if isinstance(p, str) and "\x00" in p:
        # PostgreSQL's text cannot hold NUL (a model's answer can): U+FFFD stands in for it,
        # as for any character that cannot be shown, rather than the answer going unlogged
        return p.replace("\x00", "\ufffd")
    return p


def _as_sqlite(err) -> sqlite3.Error:
    import psycopg

    kind = sqlite3.OperationalError
    if isinstance(err, psycopg.IntegrityError):
        kind = sqlite3.IntegrityError
    elif isinstance(err, psycopg.ProgrammingError | psycopg.errors.RaiseException):
        kind = sqlite3.DatabaseError
    return kind(str(err).strip())


# --- translation ------------------------------------------------------------------------------

_INSERT = re.compile(r"^\s*INSERT\s+(?:OR\s+(IGNORE|REPLACE)\s+)?INTO\s+(\w+)", re.I)
_MATCH = re.compile(r"\brag_terms\s+MATCH\s+\?", re.I)
_BM25 = re.compile(r"ORDER BY bm25\(rag_terms\)", re.I)
_SELF_REF = re.compile(r"(DO UPDATE SET\s+)(\w+)(\s*=\s*)\2\b", re.I)


def translate(sql: str, params: tuple) -> tuple[str | None, tuple]:
    """(PostgreSQL text, params) for a statement in the sqlite3 dialect; None for a no-op."""
    head = sql.lstrip()[:16].upper()
    if head.startswith("PRAGMA"):
        return None, ()
    if head.startswith("BEGIN IMMEDIATE"):
        return f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})", ()
    if _MATCH.search(sql):
        sql, params = _fts(sql, params)
    sql = _insert(sql)
    return (_placeholders(sql) if params else sql), params


def _insert(sql: str) -> str:
    found = _INSERT.match(sql)
    if not found:
        return sql
    mode, table = (found.group(1) or "").upper(), found.group(2)
    sql = sql.rstrip().rstrip(";")
    sql = "INSERT INTO " + table + sql[found.end() :]
    sql = _quote_reserved(sql)
    if mode == "IGNORE":
        sql += " ON CONFLICT DO NOTHING"
    elif mode == "REPLACE":
        sql += _upsert(table)
    sql = _SELF_REF.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{table}.{m[2]}", sql)
    if table in IDENTITY_TABLES and "RETURNING" not in sql.upper():
        sql += " RETURNING id"
    return sql


def _quote_reserved(sql: str) -> str:
    """`"end"` in an INSERT's column list (PostgreSQL reserves the word)."""
    head, paren, rest = sql.partition("(")
    if not paren or "VALUES" in head.upper():
        return sql
    columns, close, tail = rest.partition(")")
    names = [f'"{c.strip()}"' if c.strip() in RESERVED else c for c in columns.split(",")]
    return head + paren + ",".join(names) + close + tail


_COLUMNS = {
    "endpoint_cache": ("key", "model", "response", "created_at"),
    "rag_vectors": ("chunk_id", "encoder", "vector"),
}


def _upsert(table: str) -> str:
    keys = PRIMARY_KEYS[table]
    others = [c for c in _COLUMNS.get(table, ()) if c not in keys]
    if not others:
        return f" ON CONFLICT ({', '.join(keys)}) DO NOTHING"
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in others)
    return f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"


def _fts(sql: str, params: tuple) -> tuple[str, tuple]:
    """Retrieval's FTS5 candidate query as a tsvector match over the same tokens: the MATCH
    argument (`"a" OR "b"`) becomes a tsquery literal (lexemes as kollm computed them, no
    parser or stemming) and FTS5's bm25 order PostgreSQL's ts_rank."""
    index = sql[: _MATCH.search(sql).start()].count("?")
    words = re.findall(r'"((?:[^"]|"")*)"', params[index])
    lexemes = " | ".join(
        "'" + w.replace('""', '"').replace("\\", "\\\\").replace("'", "''") + "'" for w in words
    )
    literal = "'" + lexemes.replace("'", "''") + "'::tsquery"
    alias = re.search(r"\brag_terms\s+(?:AS\s+)?(\w+)", sql, re.I)
    column = f"{alias.group(1) if alias else 'rag_terms'}.tsv"
    sql = _MATCH.sub(lambda _: f"{column} @@ {literal}", sql)
    sql = _BM25.sub(lambda _: f"ORDER BY ts_rank({column}, {literal}) DESC", sql)
    return sql, params[:index] + params[index + 1 :]


def _placeholders(sql: str) -> str:
    """`?` -> `%s` and `%` -> `%%` outside string literals and quoted names."""
    out, quote = [], ""
    for ch in sql:
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        else:
            out.append("%s" if ch == "?" else "%%" if ch == "%" else ch)
    return "".join(out)
