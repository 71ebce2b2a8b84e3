"""The architecture's arrows: lower layers never import higher ones (imports inside functions,
`from kollm import X` and relative imports count too), every package has its rule, and each
table of the store is named in SQL only by the module that owns it (`kollm.store.owners`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kollm.store.owners import OWNERS, RENAMED, tables

SRC = Path(__file__).resolve().parents[1] / "src" / "kollm"
ROOT = "__init__"  # `kollm` itself: it holds the version and imports nothing

# package -> the kollm packages (top-level names) it may import besides itself
ALLOWED = {
    ROOT: set(),
    "text": set(),
    "store": set(),
    "artifacts": set(),
    "prompts": set(),
    "logtail": set(),
    "remote": set(),
    "samples": set(),
    "config": {"remote", "text"},
    "tasks": {"config"},
    "docs": {"config"},
    "endpoint": {"store"},
    "grading": {"endpoint"},
    "jobtable": {"store"},
    "engines": {"artifacts", "remote"},
    "registry": {"store", "artifacts", "prompts", "remote"},
    "__main__": {"cli"},
}
HIGH = {"pipeline", "cluster", "cli"}
# package -> the kollm packages it must not import (cli may import every one)
FORBIDDEN = {
    "data": {"train", "serve", "eval", "feedback", "rag", "synth", *HIGH},
    "registry": {"serve", "train", "eval", "feedback", *HIGH},
    "engines": {"serve", "train", "eval", "feedback", "registry", *HIGH},
    "train": {"serve", "eval", "feedback", "synth", *HIGH},
    "eval": {"serve", "train", "feedback", "synth", *HIGH},
    "serve": {"train", "eval", "synth", *HIGH},
    "feedback": {"serve", "train", "eval", "synth", *HIGH},
    "rag": {"serve", "train", "eval", "feedback", "registry", "synth", *HIGH},
    "synth": {"serve", "train", "feedback", "registry", *HIGH},
    "cluster": {"serve", "pipeline", "cli"},
    "pipeline": {"cli"},
    "cli": set(),
}


def _module_name(path: Path) -> str:
    """`kollm.a.b` for src/kollm/a/b.py (and for src/kollm/a/b/__init__.py)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("kollm", *parts))


def _package(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return parts[0]


def _top_level(name: str) -> str:
    """The top-level kollm package a name under `kollm.` is in (ROOT for `kollm` itself)."""
    return name.split(".")[1] if name.startswith("kollm.") else ROOT


def _named(alias: str) -> str:
    """What `from kollm import alias` imports: a package or module of kollm, else the root's."""
    return alias if (SRC / alias).is_dir() or (SRC / f"{alias}.py").exists() else ROOT


def _from(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The absolute module a `from ... import` reads (relative ones resolved from `module`)."""
    if node.level == 0:
        return [node.module or ""]
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level - 1 < len(base) else []
    if not base:
        return []  # above the top package: Python refuses it
    return [".".join((*base, *([node.module] if node.module else [])))]


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Top-level kollm packages a module imports, anywhere in it; `module` is its dotted name
    (by default, from where it lies under src/kollm)."""
    module = module or _module_name(path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name == "kollm" or a.name.startswith("kollm.")]
            found |= {_top_level(n) for n in names}
        elif isinstance(node, ast.ImportFrom):
            for name in _from(node, module, is_package):
                if name == "kollm":
                    found |= {_named(a.name) for a in node.names}
                elif name.startswith("kollm."):
                    found.add(_top_level(name))
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))
PACKAGES = sorted({_package(p) for p in MODULES})


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path):
    package = _package(path)
    imported = _imports(path) - {package, ROOT}  # the root holds only the version
    if package in ALLOWED:
        assert imported <= ALLOWED[package], f"{package} imports {imported - ALLOWED[package]}"
    assert not imported & FORBIDDEN.get(package, set()), f"{package} imports {imported}"
    if package not in ("cli", "__main__"):  # python -m kollm is the CLI too
        assert "cli" not in imported, "only kollm.cli imports the CLI"


def test_every_package_has_a_rule():
    """A new package (or top-level module) says what it may import before it lands."""
    assert [p for p in PACKAGES if p not in ALLOWED and p not in FORBIDDEN] == []
    assert set(ALLOWED) | set(FORBIDDEN) <= set(PACKAGES), "a rule for a package that is gone"


def test_the_rules_see_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from kollm.serve.app import create_app\n")
    assert _imports(module, "kollm.rag.m") == {"serve"}


def test_the_rules_see_imports_from_kollm_and_relative_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from kollm import serve, __version__\n"
        "from . import chunk\n"
        "from ..registry import Registry\n"
        "from .. import pipeline\n"
        "def f():\n    from ...cli import main\n"  # above kollm: Python refuses it, so no package
    )
    assert _imports(module, "kollm.rag.m") == {"serve", ROOT, "rag", "registry", "pipeline"}
    package = tmp_path / "__init__.py"
    package.write_text("from . import index\nfrom .. import cluster\n")
    assert _imports(package, "kollm.rag") == {"rag", "cluster"}


# --- each table has one owner --------------------------------------------------------------

MIGRATIONS = "kollm.store.migrations"  # creates every table: the one other module naming them
_SQL = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+(\w+)", re.IGNORECASE)


def _strings(tree: ast.AST) -> list[str]:
    """The string literals of a module but its docstrings; an f-string's fixed parts joined
    around its placeholders."""
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found, parts = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            pieces = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
            parts |= {id(v) for v in node.values}
            found.append("".join(str(p) for p in pieces))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [node.value] if id(node) not in docs | parts else []
    return found


def _tables_named(source: str) -> set[str]:
    """The store's tables (and their old names) that the module's SQL names."""
    known = set(OWNERS) | set(RENAMED)
    named = set()
    for text in _strings(ast.parse(source)):
        named |= {m.lower() for m in _SQL.findall(text)} & known
    return named


def test_every_table_the_migrations_create_has_one_owner_that_exists():
    assert tables() == set(OWNERS)
    for table, owner in OWNERS.items():
        path = SRC.joinpath(*owner.split(".")[1:])
        assert path.with_suffix(".py").exists() or (path / "__init__.py").exists(), table


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_names_a_table_it_does_not_own(path):
    module = _module_name(path)
    if module == MIGRATIONS:
        return
    named = _tables_named(path.read_text(encoding="utf-8"))
    assert not named & set(RENAMED), f"{module} names a renamed table"
    foreign = {t: OWNERS[t] for t in named - set(RENAMED) if OWNERS[t] != module}
    assert not foreign, f"{module} names tables of other modules (call their owners): {foreign}"


def test_the_owner_rule_sees_sql_and_not_prose():
    source = (
        '"""Read from jobs, then update feedback."""\n'
        'RUNNING = "SELECT * FROM jobs WHERE status = ?"\n'
        'def f(where):\n    """Join rag_chunks."""\n'
        '    return f"UPDATE  loop_decisions SET x = 1 {where}", "select 1 from\\n audit_log"\n'
        'NOTE = "kollm: insert into the table of nothing"\n'
    )
    assert _tables_named(source) == {"jobs", "loop_decisions", "audit_log"}
