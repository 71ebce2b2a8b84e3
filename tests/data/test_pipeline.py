import json

import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.config import DataConfig
from kollm.data.pipeline import prepare
from kollm.samples.generate import generate_dialogues
from tests.conftest import read_jsonl, write_jsonl

# Varied Korean dialogues from the sample generator; short exchanges left out, since two
# of those may be near-duplicates of each other by design.
DIALOGUES = [
    {**r, "id": f"r{i}"}
    for i, r in enumerate(
        r
        for r in generate_dialogues(80, seed=3, prefix="g", noise=False)
        if r["dialogue"].count("\n") >= 5
    )
][:50]


def dialogue(i: int) -> dict:
    return dict(DIALOGUES[i])


@pytest.fixture
def noisy_train(tmp_path):
    rows = [dialogue(i) for i in range(40)]
    rows[3]["dialogue"] += "\n#Person2#: 연락처는 010-1234-5678로 남겨 주세요\u200b."
    rows[4]["dialogue"] = rows[4]["dialogue"].replace(" ", "\u00a0", 3)
    rows.append({**rows[5], "id": "copy"})
    rows.append(
        {
            "id": "en",
            "dialogue": "#Person1#: Hello\n#Person2#: Hi there, how are you?",
            "summary": "hi",
        }
    )
    return write_jsonl(tmp_path / "train.jsonl", rows)


def test_prepare_cleans_splits_counts_and_reports(tmp_path, noisy_train):
    cfg = DataConfig(
        input=str(noisy_train),
        kind="dialogue_summary",
        split={"dev": 0.25, "seed": 1},
        report={"tokenizer": "mecab"},
    )
    result = prepare(cfg, tmp_path / "out")
    out = tmp_path / "out"
    train, dev = read_jsonl(out / "train.jsonl"), read_jsonl(out / "dev.jsonl")
    assert len(train) + len(dev) == 40 and len(dev) == 10
    everything = "".join(r["dialogue"] for r in train + dev)
    assert (
        "#PhoneNumber#" in everything
        and "010-1234-5678" not in everything
        and "\u200b" not in everything
    )
    stats = json.loads((out / "stats.json").read_text())
    for step in stats["steps"]:
        assert step["seen"] == step["kept"] + step["dropped"]
    reasons = {r: n for s in stats["steps"] for r, n in s["reasons"].items()}
    assert reasons == {"exact_duplicate": 1, "low_hangul_ratio": 1}
    dropped = read_jsonl(out / "dropped.jsonl")
    assert {d["record"]["id"] for d in dropped} == {"copy", "en"}
    assert (out / "report" / "length_dialogue.png").stat().st_size > 1000
    html = (out / "report" / "report.html").read_text()
    assert "length_dialogue.png" in html and "exact_dedup" in html
    assert (
        result.stats["manifest_sha256"] == prepare(cfg, tmp_path / "again").stats["manifest_sha256"]
    )


def test_given_splits_are_kept_and_dev_copies_of_train_dropped(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [dialogue(i) for i in range(10)])
    dev = write_jsonl(tmp_path / "d.jsonl", [{**dialogue(2), "id": "leak"}, dialogue(20)])
    cfg = DataConfig(
        input={"train": str(train), "dev": str(dev)},
        kind="dialogue_summary",
        report={"tokenizer": None},
    )
    result = prepare(cfg, tmp_path / "out")
    assert [r["id"] for r in result.splits["dev"]] == ["r20"]
    assert len(result.splits["train"]) == 10


def test_bad_line_stops_with_exit_2_or_is_skipped(tmp_path, noisy_train):
    with noisy_train.open("a") as handle:
        handle.write("{not json}\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\noutput_dir: {tmp_path}/run\ndata:\n  input: {noisy_train}\n"
        "  kind: dialogue_summary\n  report: {tokenizer: null}\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", str(recipe)])
    assert result.exit_code == 2, result.output
    assert f"{noisy_train}:43: malformed JSON" in result.output
    assert not (tmp_path / "run" / "data" / "train.jsonl").exists()
    result = runner.invoke(app, ["data", "prepare", str(recipe), "--skip-bad-lines"])
    assert result.exit_code == 0, result.output
    bad = read_jsonl(tmp_path / "run" / "data" / "bad_lines.jsonl")
    assert [b["line"] for b in bad] == [43]


def test_clean_command_keeps_other_fields(tmp_path):
    rows = [
        {"id": 1, "text": "메일은 kim@example.com 입니다\u200b", "source": "web"},
        {"id": 2, "text": "메일은  kim@example.com 입니다", "source": "call"},
        {"id": 3, "text": "전혀 다른 문장입니다.", "source": "web"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = CliRunner().invoke(
        app, ["data", "clean", str(src), "-o", str(tmp_path / "out.jsonl"), "--field", "text"]
    )
    assert result.exit_code == 0, result.output
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {"id": 1, "text": "메일은 #Email# 입니다", "source": "web"},
        {"id": 3, "text": "전혀 다른 문장입니다.", "source": "web"},
    ]
    assert read_jsonl(tmp_path / "out.dropped.jsonl")[0]["reason"] == "exact_duplicate"
