"""Shared fixtures: tests never touch the network and write only under tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture
def repo() -> Path:
    return REPO


TINY_MODEL = {
    "base": "scratch",
    "layers": 1,
    "hidden_size": 32,
    "heads": 2,
    "intermediate_size": 64,
    "vocab_size": 400,
    "max_positions": 512,
}


def tiny_recipe_text(root: Path, n_train: int = 16, n_dev: int = 6, **sections) -> str:
    """A recipe over a few generated dialogues and a 1-layer scratch model, all under `root`."""
    import yaml

    from kollm.samples.generate import generate_dialogues

    rows = [
        r
        for r in generate_dialogues(80, seed=5, prefix="t", noise=False)
        if r["dialogue"].count("\n") >= 5
    ]
    write_jsonl(root / "train_in.jsonl", rows[:n_train])
    write_jsonl(root / "dev_in.jsonl", rows[n_train : n_train + n_dev])
    recipe = {
        "name": "tiny",
        "output_dir": str(root / "run"),
        "data": {
            "input": {"train": str(root / "train_in.jsonl"), "dev": str(root / "dev_in.jsonl")},
            "kind": "dialogue_summary",
            "report": {"tokenizer": None},
        },
        "model": dict(TINY_MODEL),
        "train": {
            "max_steps": 30,
            "batch_size": 4,
            "learning_rate": 0.003,
            "save_steps": 10,
            "logging_steps": 2,
            "max_length": 256,
        },
        "eval": {"batch_size": 8, "decoding": {"max_new_tokens": 12}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return "# Run: kollm run tiny.yaml\n" + yaml.safe_dump(recipe, allow_unicode=True)


@pytest.fixture
def tiny_recipe(tmp_path):
    """(path, text) of a tiny recipe; its data stage has already run."""
    from kollm.config import load_recipe
    from kollm.data.pipeline import prepare

    text = tiny_recipe_text(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(text, encoding="utf-8")
    recipe = load_recipe(path)
    prepare(recipe.data, recipe.data_dir)
    return path


@pytest.fixture
def local_base(tmp_path, tiny_recipe):
    """A small causal model saved to a dir, standing in for a hub model."""
    from kollm.config import ModelConfig, load_recipe
    from kollm.train.scratch import build_model, train_tokenizer

    rows = [
        json.loads(x)
        for x in (load_recipe(tiny_recipe).data_dir / "train.jsonl").read_text().splitlines()
    ]
    base = tmp_path / "base"
    tok = train_tokenizer([r["dialogue"] + r["summary"] for r in rows], 400, base)
    build_model(ModelConfig(**TINY_MODEL), tok, seed=0).save_pretrained(str(base))
    return base
