"""What every command group shares: the app and its groups, consoles, errors, progress."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from kollm import __version__
from kollm.config import Recipe, RecipeError, load_recipe
from kollm.data.io import DataError
from kollm.pipeline.loop import LoopError
from kollm.prompts import PromptError
from kollm.registry import RegistryError
from kollm.remote import RemoteCodeRefused


class DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to `run`:
    `kollm eval RECIPE` is `kollm eval run RECIPE`, beside `kollm eval rouge ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    help="kollm: run Korean LLMs in-house, from data to serving.", no_args_is_help=True
)
data_app = typer.Typer(help="The data stage: clean, de-identify, dedup, filter, split, report.")
recipe_app = typer.Typer(help="Recipes: check them and read their schema.")
eval_app = typer.Typer(
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help="Evaluate: `kollm eval RECIPE`, `kollm eval --model DIR --data FILE`, `kollm eval rouge`.",
)
registry_app = typer.Typer(
    help="The model registry: versions, lineage, aliases.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(recipe_app, name="recipe")
app.add_typer(eval_app, name="eval")
feedback_app = typer.Typer(
    help="Feedback on served answers: add, stats, export.", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")
app.add_typer(feedback_app, name="feedback")
loop_app = typer.Typer(
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help="The feedback loop: `kollm loop RECIPE` checks the trigger and acts; `loop history`.",
)
app.add_typer(loop_app, name="loop")

console = Console()
err_console = Console(stderr=True)

InventoryOpt = Annotated[
    Path | None, typer.Option(help="Inventory YAML of nodes and GPUs (default: this machine).")
]


RayAddressOpt = Annotated[
    str | None, typer.Option(help="Ray dashboard address, e.g. http://HOST:8265.")
]
RayTokenOpt = Annotated[str | None, typer.Option(help="Ray auth token (default: RAY_AUTH_TOKEN).")]
AllowNoKeysOpt = Annotated[
    bool,
    typer.Option(
        "--allow-no-keys",
        help="Listen on a non-loopback address with no API keys (anyone may call the server).",
    ),
]


RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="key.path=value overrides, e.g. data.dedup.threshold=0.8")
]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors in the user's input exit 2 with their message, without a traceback."""
    try:
        yield
    except (
        RecipeError,
        DataError,
        RegistryError,
        FileNotFoundError,
        LoopError,
        PromptError,
        RemoteCodeRefused,
    ) as err:
        fail(str(err))


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _load(recipe: Path, overrides: list[str] | None) -> Recipe:
    with user_errors():
        loaded = load_recipe(recipe, overrides)
    if loaded.store.url:  # this command and the processes it starts use the recipe's store
        os.environ.setdefault("KOLLM_DATABASE_URL", loaded.store.url)
    return loaded


class _StderrHandler(logging.StreamHandler):
    """Plain lines on whatever `sys.stderr` is at the time (a pipe, a file, a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    """kollm's progress lines (stages, training steps) on stderr: above the Rich bar on a
    terminal, as plain timestamped lines in a pipe or a log file."""
    from rich.logging import RichHandler

    logger = logging.getLogger("kollm")
    if logger.handlers:
        return
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(console=err_console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    _log_to_stderr()
    if version:
        console.print(f"kollm {__version__}")
        raise typer.Exit()
