"""A soak of the loop (issue 29, section 6): the production alias is served by the real app,
scripted users ask and rate its answers through the API, and `kollm loop` runs three cycles
with no hand between them: a promotion, a rejection of a worse candidate, and a promotion that
the users' ratings roll back. `kollm loop history` then shows exactly those decisions.

No sleeps: the server follows the alias by polling the registry (0.1 s here), and each rating
lands seconds before the promotion that ends its version's tenure (the retraining and the
evaluation lie between), as the alias log's whole seconds need."""

from __future__ import annotations

import re
import time
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

import kollm.eval.evaluate
from kollm.cli import app
from kollm.config import ServeConfig, load_recipe, recipe_text
from kollm.data.io import read_jsonl
from kollm.registry import Registry
from kollm.serve.server import build_server

# Production's last 6 ratings fire the loop when more than half are bad; a promoted version is
# judged on its first 6. Nobody reviews the scripted corrections: train on all of them.
LOOP = [
    "loop.train_on=all",
    "loop.trigger.min_corrections=null",
    "loop.trigger.bad_rate=0.5",
    "loop.trigger.window=6",
    "loop.trigger.min_ratings=6",
    "loop.watch.min_ratings=6",
    "loop.max_steps=2",
    "eval.max_samples=2",
]
# Two steps leave a tiny candidate scoring about as production does: a loose gate promotes it.
LOOSE = "loop.gate.epsilon=100"
FIRED = "bad rate 0.67 over the last 6 ratings > 0.5"


class Users:
    """Scripted users of the served model: each asks for the summary of a train dialogue and
    rates the answer as scripted; a bad rating carries the gold summary as its correction."""

    def __init__(self, client: TestClient, rows: list[dict]) -> None:
        self.client, self.rows, self.asked = client, rows, 0

    def rate(self, version: str, ratings: str) -> None:
        """One question per letter of `ratings` (g good, b bad), each answered by `version`."""
        _wait_serving(self.client, version)
        for letter in ratings:
            row = self.rows[self.asked % len(self.rows)]
            self.asked += 1
            chat = self.client.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny",
                    "messages": [{"role": "user", "content": row["dialogue"]}],
                    "max_tokens": 8,
                    "temperature": 0,
                },
            ).json()
            assert chat.get("model_version") == version, chat  # the log says who answered
            bad = letter == "b"
            feedback = {
                "response_id": chat["id"],
                "rating": "bad" if bad else "good",
                "correction": row["summary"] if bad else None,
            }
            self.client.post("/v1/feedback", json=feedback).raise_for_status()


def _wait_serving(client: TestClient, version: str) -> None:
    """Until the server has followed the alias to `version` (it polls the registry)."""
    deadline = time.monotonic() + 60
    while client.get("/health").json().get("models", {}).get("tiny") != version:
        assert time.monotonic() < deadline, f"the server never served {version}"
        time.sleep(0.05)


def _loop(recipe_path: Path, *overrides: str) -> str:
    args = ["loop", str(recipe_path), *LOOP, *overrides]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


def _scores(said: str) -> str:
    """`kollm loop`'s scores as `loop history` shows them: candidate / production."""
    score = {
        side: float(re.search(rf"{side}\s+score (\S+)", said).group(1))
        for side in ("candidate", "production")
    }
    return f"{score['candidate']:.2f} / {score['production']:.2f}"


def _history() -> list[list[str]]:
    """The cells of each decision `kollm loop history` shows (its header has other lines)."""
    shown = CliRunner().invoke(app, ["loop", "history", "tiny"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if line.startswith("│")]
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]


def _production_answers_right(monkeypatch, recipe, production: str) -> None:
    """Scripted evaluation: `production` answers the eval split with its gold summaries, so
    a tiny candidate (which never writes them) scores worse; other models generate."""
    gold = [r["summary"] for r in read_jsonl(recipe.split_path(recipe.eval.split))]
    generate = kollm.eval.evaluate.generate_all

    def scripted(engine, prompts, cfg, advance):
        if Path(engine.model_dir) == Path(production):
            return gold[: len(prompts)]
        return generate(engine, prompts, cfg, advance)

    monkeypatch.setattr(kollm.eval.evaluate, "generate_all", scripted)


def test_three_cycles_promote_reject_and_roll_back_with_no_hand_between(
    tiny_recipe, local_base, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("KOLLM_HOME", str(home))
    registry = Registry(home)
    recipe = load_recipe(tiny_recipe, LOOP)
    text = recipe_text(tiny_recipe)
    registry.register("tiny", local_base, base_model="scratch", method="sft", recipe_text=text)
    registry.promote("tiny", 1, "production")
    # the dialogues that fit the tiny model's 512 positions with the answer
    rows = [r for r in read_jsonl(recipe.split_path("train")) if len(r["dialogue"]) < 400]
    cfg = ServeConfig(models=["tiny@production"], engine="transformers", alias_poll_s=0.1)
    server, _ = build_server(cfg, registry)
    said = {}
    with TestClient(server) as client:
        users = Users(client, rows)
        users.rate("tiny:1", "bbbbgg")  # cycle 1: production disappoints
        said["promoted"] = _loop(tiny_recipe, LOOSE)
        users.rate("tiny:2", "bbbbgg")  # cycle 2: no better than tiny:1 (kept), still bad
        with monkeypatch.context() as scripted:
            _production_answers_right(scripted, recipe, registry.get("tiny:2").artifact_path)
            said["rejected"] = _loop(tiny_recipe)  # the default gate: epsilon 0.5
        users.rate("tiny:2", "bbbbgg")  # cycle 3: tiny:2 stayed, and still disappoints
        said["promoted again"] = _loop(tiny_recipe, LOOSE)
        users.rate("tiny:3", "bbbbbb")  # tiny:3 does worse than tiny:2 did
        said["rolled back"] = _loop(tiny_recipe, LOOSE)
        users.rate("tiny:2", "g")  # the server followed the alias back
        said["after"] = _loop(tiny_recipe, LOOSE)

    assert "promoted tiny:2 to production" in said["promoted"]
    assert "gate: FAIL  score: 0.000 < 100.000 - 0.5" in said["rejected"]
    assert "promoted tiny:3 to production" in said["promoted again"]
    assert "rolled production back to tiny:2" in said["rolled back"]
    # the rollback ends the watch and starts tiny:2's count afresh: one rating fires nothing
    assert "loop: not triggered (no trigger rule met by tiny:2" in said["after"]
    assert "1 ratings (bad rate 0.00) < loop.trigger.min_ratings=6" in said["after"]
    assert registry.get("tiny@production").version == 2
    since = "over 6 ratings since its promotion"
    kept = f"bad rate of tiny:2 0.67 {since}; tiny:1 0.67 over its last 6: within 0.1"
    worse = f"bad rate of tiny:3 1.00 {since}; tiny:2 0.67 over its last 6: worse by 0.33 > 0.1"
    # each run judges the watch first: cycle 2's run kept tiny:2, then its trigger fired
    assert [row[2:] for row in _history()] == [
        ["promoted", FIRED, "1", "2", _scores(said["promoted"])],
        ["kept", kept, "2", "-", "-"],
        ["rejected", FIRED, "2", "-", "0.00 / 100.00"],
        ["promoted", FIRED, "2", "3", _scores(said["promoted again"])],
        ["rolled back", worse, "3", "2", "-"],
    ]
