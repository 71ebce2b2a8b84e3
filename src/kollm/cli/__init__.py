"""The `kollm` command: one module per command group; each command parses its arguments,
calls one stage function and renders the result. Importing a module registers its commands,
in the order `kollm --help` lists them."""

# isort: off
from kollm.cli.common import app
from kollm.cli import data, recipe, train, eval, judge, registry, run, serve  # noqa: F401
from kollm.cli import feedback, loop, tune, plan, jobs, deploy, export, rag, synth  # noqa: F401
from kollm.cli import store, tokenizer  # noqa: F401

# isort: on

__all__ = ["app"]
