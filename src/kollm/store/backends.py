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
process, about twice per request a server answers. So a process keeps a psycopg_pool
`ConnectionPool` per URL (`Pools`): `connect` takes a connection from it and `close` gives it
back (rolled back by the pool if a caller left a transaction open), at most `POOL_SIZE` a URL.
The pool checks a connection with a round trip before handing it out, replaces broken and
hour-old ones, and shrinks while its connections sit idle; kollm's part is only which pool and
what to do when it has none to give.
"""

from __future__ import annotations

import atexit
import decimal
import os
import re
import sqlite3
import threading
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
POOL_SIZE = 8  # pooled PostgreSQL connections a process keeps to one URL, in use and idle
POOL_URLS = 2  # URLs a process keeps a pool for
POOL_WAIT_S = 2.0  # longest wait for a pooled connection before connecting directly
IDLE_MAX_S = 300.0  # each period a pool had idle connections throughout, it closes one
CLOSE_WAIT_S = 1.0  # for a pool's threads to stop when it is closed


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in ("postgresql", "postgres")


def connect_postgres(url: str) -> PgConnection:
    try:
        import psycopg
    except ImportError as err:
        raise RuntimeError(
            "a postgresql:// store needs psycopg 3: pip install 'kollm[postgres]'"
        ) from err
    pool = POOLS.get(url)
    conn = _take(pool)
    if conn is not None:
        return PgConnection(conn, pool)
    try:
        conn = psycopg.Connection.connect(url, **CONNECT_KWARGS)
    except psycopg.Error as err:
        message = f"cannot connect to the store at {_safe(url)}: {err}"
        raise sqlite3.OperationalError(message) from err
    return PgConnection(conn)  # closed, not pooled, on close


def _take(pool):
    """A connection from `pool`, or None when it has none to give soon.

    None at once when all `POOL_SIZE` are in use: the pool would make the caller wait for one
    to come back, and a thread that holds one and asks for a second (a store call inside
    another's `with closing(connect(...))`), eight of them at once, would wait on each other.
    Also None after `POOL_WAIT_S` (a race for the last slot, connections that fail their check
    after a database restart, a server the pool cannot reach): the caller then connects
    directly, which either works or raises the driver's error rather than the pool's timeout.
    """
    import psycopg_pool

    stats = pool.get_stats()
    if stats["pool_available"] == 0 and stats["pool_size"] >= pool.max_size:
        return None
    try:
        return pool.getconn(timeout=POOL_WAIT_S)
    except (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed):  # closed: a URL evicted
        return None


class Pools:
    """The psycopg_pool `ConnectionPool` of each URL this process connects to, made on first
    use: for `POOL_URLS` URLs at most (a process has one store, `store copy` two; a test suite
    a schema a test), the least recently used closed for another. A forked child starts with
    none (its parent's sockets and pool threads are not its own); exit closes them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, Any] = {}  # url -> pool, least recently used first

    def get(self, url: str):
        with self._lock:
            pool = self._pools.pop(url, None)
            self._pools[url] = pool = pool if pool is not None else _new_pool(url)
            evicted = list(self._pools.values())[:-POOL_URLS]
            for old in evicted:
                del self._pools[old.conninfo]
        for old in evicted:
            old.close(timeout=CLOSE_WAIT_S)  # one in use is closed when given back
        return pool

    def close(self) -> None:
        """Close every pool and its idle connections (exit, a test's end)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close(timeout=CLOSE_WAIT_S)

    def _forget(self) -> None:
        # in a forked child: the parent's pools are kept referenced but never used or closed
        # (their threads are not in this process; a collected pool would try to stop them)
        _FORKED_AWAY.extend(self._pools.values())
        self._lock, self._pools = threading.Lock(), {}


def _new_pool(url: str):
    from psycopg_pool import ConnectionPool

    return ConnectionPool(
        url,
        kwargs=CONNECT_KWARGS,
        min_size=0,  # no connection before a caller needs one
        max_size=POOL_SIZE,
        open=True,
        check=ConnectionPool.check_connection,  # a round trip: a dropped one is replaced
        max_idle=IDLE_MAX_S,
        reconnect_timeout=POOL_WAIT_S,  # a caller waits no longer: it connects directly
        timeout=POOL_WAIT_S,
        name="kollm-store",
    )


# no prepared statements: a pooled connection outlives a migration by another process, and a
# statement prepared before it would fail ("cached plan must not change result type")
CONNECT_KWARGS = {"autocommit": True, "connect_timeout": 30, "prepare_threshold": None}
POOLS = Pools()
_FORKED_AWAY: list = []
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOLS._forget)
atexit.register(POOLS.close)  # pool threads are daemons: a slow close cannot hold exit


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

    def __init__(self, conn, pool=None) -> None:
        self._conn, self._pool = conn, pool

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
        """Give the connection back to its pool (see `Pools`), or close one of none; a second
        close does nothing more."""
        conn, self._conn = self._conn, _CLOSED
        if conn is _CLOSED:
            return
        if self._pool is None:
            conn.close()
        else:
            self._pool.putconn(conn)  # rolls back a transaction left open; closed pool: closes

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
