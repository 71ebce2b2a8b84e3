"""The store on both backends: the sqlite3 dialect the modules write as PostgreSQL runs it,
`kollm store migrate` and `kollm store copy --to URL`, and retrieval ranking the same on both."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing

import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.feedback.responses import RequestLog
from kollm.feedback.store import FeedbackStore
from kollm.rag.index import RagIndex
from kollm.registry import Registry
from kollm.store import MIGRATIONS, connect
from kollm.store.backends import POOL_SIZE, POOLS, translate


def test_the_sqlite_dialect_becomes_postgresqls():
    sql, params = translate("SELECT * FROM t WHERE a = ? AND b = '?%' AND c LIKE ?", (1, "x%"))
    assert sql == "SELECT * FROM t WHERE a = %s AND b = '?%%' AND c LIKE %s" and params == (1, "x%")
    sql, _ = translate("INSERT OR IGNORE INTO aliases VALUES (?, ?)", (1, 2))
    assert sql.endswith("ON CONFLICT DO NOTHING")
    sql, _ = translate("INSERT OR REPLACE INTO endpoint_cache VALUES (?, ?, ?, ?)", (1, 2, 3, 4))
    assert "ON CONFLICT (key) DO UPDATE SET model = EXCLUDED.model" in sql
    sql, _ = translate("INSERT INTO feedback (a) VALUES (?)", (1,))
    assert sql.endswith("RETURNING id")
    sql, _ = translate(
        "INSERT INTO rag_df VALUES (?, ?, ?) ON CONFLICT (collection, term)"
        " DO UPDATE SET df = df + excluded.df",
        (1, 2, 3),
    )
    assert "SET df = rag_df.df + excluded.df" in sql
    assert translate("PRAGMA journal_mode=WAL", ())[0] is None


def test_an_answer_with_a_nul_character_is_kept_on_both(tmp_path, store_backend):
    log = RequestLog(tmp_path)
    log.write("nul", "chat", "m", "m:1", {"messages": []}, "a\x00b", 1, 1, "stop", 1.0)
    with closing(connect(tmp_path / "registry.db")) as conn:
        (kept,) = conn.execute("SELECT response FROM responses WHERE id = 'nul'").fetchone()
    assert kept == ("a\x00b" if store_backend == "sqlite" else "a\ufffdb")


def _populate(home, artifact) -> None:
    reg = Registry(home)
    for _ in range(2):
        reg.register("demo", artifact)
    reg.promote("demo", 1)
    reg.promote("demo", 2)
    reg.rollback("demo")
    log = RequestLog(home)
    for i in range(3):
        log.write(f"r{i}", "chat", "demo", "demo:1", {"messages": []}, "답", 1, 1, "stop", 1.0)
    feedback = FeedbackStore(home)
    feedback.add("r0", "good")
    feedback.add("r1", "bad", categories=["hallucination"])
    docs = home.parent / "docs"
    docs.mkdir()
    (docs / "passport.txt").write_text("여권을 잃어버리면 구청 민원여권과에 분실 신고를 합니다.")
    (docs / "parking.txt").write_text("거주자 우선 주차 신청은 매월 1일부터 5일까지 받습니다.")
    RagIndex(home).index_paths("civil", [docs])


def test_copy_moves_a_populated_sqlite_store_to_postgresql(tmp_path, monkeypatch, postgres_url):
    artifact = tmp_path / "model"
    artifact.mkdir()
    (artifact / "weights.bin").write_bytes(b"w")
    home = tmp_path / "home"
    monkeypatch.delenv("KOLLM_DATABASE_URL", raising=False)
    _populate(home, artifact)
    runner = CliRunner()
    out = runner.invoke(
        app, ["store", "copy", "--to", postgres_url, "--source", str(home / "registry.db")]
    )
    assert out.exit_code == 0, out.output
    assert "model_versions: 2" in out.output and "feedback: 2" in out.output
    assert (
        "alias_log: 3" in out.output
        and "rag_terms: 2" in out.output
        and "row counts match" in out.output
    )
    again = runner.invoke(
        app, ["store", "copy", "--to", postgres_url, "--source", str(home / "registry.db")]
    )
    assert again.exit_code != 0 and "already holds rows" in again.output

    monkeypatch.setenv("KOLLM_DATABASE_URL", postgres_url)
    reg = Registry(home)
    assert reg.get("demo@production").version == 1
    assert [e["action"] for e in reg.alias_log("demo")] == ["promote", "promote", "rollback"]
    reg.register("demo", artifact)  # the identity goes on after the copied rows
    reg.promote("demo", 3)
    assert [e["id"] for e in reg.alias_log("demo")] == [1, 2, 3, 4]
    assert FeedbackStore(home).add("r2", "good")["id"] == 3
    (hit,) = RagIndex(home).search("civil", "여권 분실", 1)  # the copied keyword index
    assert hit.doc_id == "passport.txt"
    out = runner.invoke(app, ["store", "migrate"])
    assert out.exit_code == 0 and "up to date" in out.output


def test_migrate_applies_every_migration_once(tmp_path, store_backend):
    runner = CliRunner()
    first = runner.invoke(app, ["store", "migrate"])
    assert first.exit_code == 0 and MIGRATIONS[-1][0] in first.output
    second = runner.invoke(app, ["store", "migrate"])
    assert second.exit_code == 0 and "up to date" in second.output


def _ndcg(runner, repo) -> float:
    docs = repo / "data" / "sample" / "documents"
    out = runner.invoke(app, ["rag", "index", str(docs), "--collection", "gov"])
    assert out.exit_code == 0 and "120 indexed" in out.output, out.output
    queries = repo / "data" / "sample" / "rag_queries.jsonl"
    out = runner.invoke(app, ["rag", "eval", "gov", "--queries", str(queries), "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output.splitlines()[-1])["ndcg_at_10"]


def test_retrieval_on_postgresql_ranks_as_on_sqlite(tmp_path, monkeypatch, postgres_url, repo):
    runner = CliRunner()
    monkeypatch.delenv("KOLLM_DATABASE_URL", raising=False)
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "sqlite-home"))
    on_sqlite = _ndcg(runner, repo)
    monkeypatch.setenv("KOLLM_DATABASE_URL", postgres_url)
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "pg-home"))
    on_postgres = _ndcg(runner, repo)
    assert on_sqlite >= 0.85 and abs(on_postgres - on_sqlite) <= 0.01
    with closing(connect(tmp_path / "pg-home" / "registry.db")) as conn:
        (chunks,) = conn.execute("SELECT COUNT(*) FROM rag_terms").fetchone()
    assert chunks > 0


def test_a_recipes_store_url_is_the_store_of_its_commands(tmp_path, monkeypatch):
    from kollm.cli.common import _load

    monkeypatch.setenv("KOLLM_DATABASE_URL", "")  # restored (unset) after the test
    monkeypatch.delenv("KOLLM_DATABASE_URL")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nstore:\n  url: sqlite:///{tmp_path}/site.db\n")
    _load(recipe, None)
    Registry(tmp_path / "home")
    assert (tmp_path / "site.db").is_file() and not (tmp_path / "home" / "registry.db").exists()


def _pid(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def _still_open(url: str, pids: set[int]) -> set[int]:
    """Those of `pids` whose server process still serves a connection (a closed one's process
    takes a moment to exit: waited for, up to 30 s). The look itself reuses one of them."""
    deadline = time.monotonic() + 30
    while True:
        with closing(connect(url)) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity").fetchall()
            live = {r[0] for r in rows} & pids
        if len(live) <= POOL_SIZE or time.monotonic() > deadline:
            return live
        time.sleep(0.1)


def test_postgresql_connections_are_reused_and_few_stay_open(postgres_url):
    burst = [connect(postgres_url) for _ in range(POOL_SIZE + 4)]  # all at once: one each
    pids = {_pid(conn) for conn in burst}
    assert len(pids) == POOL_SIZE + 4
    for conn in burst:
        conn.close()
    kept = _still_open(postgres_url, pids)
    assert len(kept) == POOL_SIZE  # the rest were closed on the server too
    again = [connect(postgres_url) for _ in range(POOL_SIZE)]
    assert {_pid(conn) for conn in again} == kept  # reused: no new server process
    for conn in again:
        conn.close()
    with pytest.raises(sqlite3.ProgrammingError):  # a closed connection, as sqlite3's
        burst[0].execute("SELECT 1")
    # the four over the pool's size connected at once, none waited out the pool's timeout (a
    # thread holding connections that waits for another could wait on itself)
    assert POOLS.get(postgres_url).get_stats().get("requests_errors", 0) == 0


def test_a_pooled_connection_the_server_dropped_is_replaced(postgres_url):
    import psycopg

    with closing(connect(postgres_url)) as conn:
        dropped = _pid(conn)  # now idle in the pool
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # as a restart or a timeout
        admin.execute("SELECT pg_terminate_backend(%s)", (dropped,))
        gone = "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = %s"
        while admin.execute(gone, (dropped,)).fetchone()[0]:
            time.sleep(0.05)
    with closing(connect(postgres_url)) as conn:  # checked, found dropped, another given
        assert _pid(conn) != dropped


def test_a_connection_given_back_mid_transaction_is_rolled_back(postgres_url):
    conn = connect(postgres_url)
    conn.execute("CREATE TABLE t (a INTEGER)")
    conn.execute("BEGIN IMMEDIATE")  # holds the store's write lock
    conn.execute("INSERT INTO t VALUES (1)")
    pid = _pid(conn)
    conn.close()  # as a caller that failed before its commit
    with closing(connect(postgres_url)) as reused:
        assert _pid(reused) == pid and not reused.in_transaction
        assert reused.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
        locks = "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'"
        assert reused.execute(locks).fetchone()[0] == 0  # the next writer does not wait
