"""The architecture's arrows: lower layers never import higher ones (imports inside functions
count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kollm"

# package -> the kollm packages (top-level names) it may import besides itself
ALLOWED = {
    "text": set(),
    "store": set(),
    "artifacts": set(),
    "prompts": set(),
    "logtail": set(),
    "remote": set(),
    "endpoint": {"store"},
    "grading": {"endpoint"},
    "engines": {"artifacts", "remote"},
    "registry": {"store", "artifacts", "prompts", "remote"},
    "tasks": {"config"},
}
HIGH = {"pipeline", "cluster", "cli"}
FORBIDDEN = {
    "data": {"train", "serve", "eval", "feedback", *HIGH},
    "registry": {"serve", "train", "eval", "feedback", *HIGH},
    "engines": {"serve", "train", "eval", "feedback", "registry", *HIGH},
    "train": {"serve", "eval", "feedback", *HIGH},
    "eval": {"serve", "train", "feedback", *HIGH},
    "serve": {"train", "eval", *HIGH},
    "feedback": {"serve", "train", "eval", *HIGH},
    "rag": {"serve", "train", "eval", "feedback", "registry", *HIGH},
}


def _package(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    """Top-level kollm packages a module imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("kollm."):
                found.add(name.split(".")[1])
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path):
    package = _package(path)
    imported = _imports(path) - {package}
    if package in ALLOWED:
        assert imported <= ALLOWED[package], f"{package} imports {imported - ALLOWED[package]}"
    assert not imported & FORBIDDEN.get(package, set()), f"{package} imports {imported}"
    if package not in ("cli", "__main__"):  # python -m kollm is the CLI too
        assert "cli" not in imported, "only kollm.cli imports the CLI"


def test_the_rules_see_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from kollm.serve.app import create_app\n")
    assert _imports(module) == {"serve"}
