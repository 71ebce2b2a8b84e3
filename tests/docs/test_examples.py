"""Every example in README.md and docs/**/*.md runs as written (docs convention of issue 34).

One test per page: its `bash`, `sh`, `console` and `python` blocks run in page order in one
scratch working dir (copies of the repo's recipes/, data/ and examples/; bench/ and .venv
linked) with one KOLLM_HOME, offline, `kollm` on PATH running this checkout's code. A page
marked `<!-- docs-test: setup demo -->` starts from a copy of a home built once per session:
`kollm-demo:1` at production (the demo recipe, 20 training steps) and the `demo-docs`
collection of the bundled documents; its runs/ is copied into the working dir too.

Whatever a page leaves running (`kollm serve ... &`) is killed with its blocks' process groups
when the page ends. Environment: KOLLM_DOCS_TIMEOUT (seconds a block may take, 300; the demo
home three times that) and KOLLM_DOCS_KEEP_GOING=1 (run every block of a page and report every
failure, for a survey).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs import blocks

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = float(os.environ.get("KOLLM_DOCS_TIMEOUT", "300"))
KEEP_GOING = os.environ.get("KOLLM_DOCS_KEEP_GOING") == "1"
COPIED = ("recipes", "data", "examples")  # pages write next to these (runs/, exports/ ...)
LINKED = ("bench",)  # read-only: scripts a page runs
TAIL = 40
MARK = "DOCS_TEST_PAGE"
DEMO_BUILD = (
    "kollm run recipes/demo.yaml train.max_steps=20 train.batch_size=8 eval.max_samples=8\n"
    "kollm rag index --recipe recipes/demo.yaml\n"
)


class DocsSkip(UserWarning):
    """A block marked `docs-test: skip`, with its reason (listed in pytest's warnings)."""


def _pages() -> list[str]:
    """Pages with a shell or Python block (run or skipped); prose-only pages have no test."""
    found = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [str(p.relative_to(REPO)) for p in found if p.is_file() and _has_blocks(p)]


def _has_blocks(path: Path) -> bool:
    try:
        page = blocks.read_page(path)
    except blocks.MarkerError:
        return True  # the page's test reports the bad marker
    return bool(page.runnable or page.skipped)


def _env(home: Path) -> dict[str, str]:
    """The user's environment less any KOLLM_ setting, offline, this checkout's `kollm`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOLLM_")}
    paths = [str(REPO / "src"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        KOLLM_HOME=str(home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(paths),
        COLUMNS="400",  # rich wraps at 80 columns off a terminal: expected lines would break
        NO_COLOR="1",
    )
    env[MARK] = str(home)  # finds what a page started that left its process groups
    return env


def _workdir(root: Path, demo: Path | None) -> tuple[Path, Path]:
    """A scratch working dir and home; with `demo`, the session's demo home and runs/."""
    work, home = root / "work", root / "home"
    work.mkdir(parents=True)
    for name in COPIED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, work / name, symlinks=True)
    for name in LINKED:
        (work / name).symlink_to(REPO / name)
    (work / ".venv").symlink_to(Path(sys.prefix))  # `.venv/bin/python bench/...` as in a clone
    if demo is None:
        home.mkdir()
    else:
        shutil.copytree(demo / "home", home, symlinks=True)
        shutil.copytree(demo / "work" / "runs", work / "runs", symlinks=True)
    return work, home


@dataclass
class Result:
    code: int | None  # None: timed out
    output: str
    seconds: float
    timeout: float


@dataclass
class PageRun:
    """One page's shared working dir, home and environment, and the process groups it made."""

    root: Path
    demo: Path | None = None
    groups: list[int] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work, self.home = _workdir(self.root, self.demo)
        self.env = _env(self.home)
        self.scripts = self.root / "scripts"  # outside the working dir the page sees
        self.scripts.mkdir()

    def execute(self, argv: list[str], name: str, timeout: float = TIMEOUT) -> Result:
        """Run in a new process group; output goes to a file, not a pipe, so a server the
        command leaves in the background cannot hold the read open."""
        log = self.scripts / f"{name}.out"
        started = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.work,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.groups.append(proc.pid)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
                code = None
        text = log.read_text(encoding="utf-8", errors="replace")
        return Result(code, text, time.monotonic() - started, timeout)

    def script(self, block: blocks.Block, suffix: str) -> Path:
        path = self.scripts / f"L{block.line}{suffix}"
        path.write_text(block.code, encoding="utf-8")
        return path

    def close(self) -> None:
        """Stop whatever the page's blocks left running: SIGTERM, then SIGKILL, to the process
        groups of its blocks and to any process that left them (a detached job, a daemon)
        but carries the page's mark in its environment."""
        for group in self.groups:
            _signal_group(group, signal.SIGTERM)
        for pid in _marked(self.env[MARK]):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            any(_alive(g) for g in self.groups) or _marked(self.env[MARK])
        ):
            time.sleep(0.1)
        for group in self.groups:
            _signal_group(group, signal.SIGKILL)
        for pid in _marked(self.env[MARK]):
            _signal(pid, signal.SIGKILL)


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _kill_group(group: int) -> None:
    _signal_group(group, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _marked(mark: str) -> list[int]:
    """Live processes whose environment holds MARK=mark (Linux /proc; elsewhere none)."""
    needle = f"{MARK}={mark}".encode() + b"\0"
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            continue  # gone, or another user's
        if needle in environ and state != "Z":
            found.append(int(entry.name))
    return found


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())


def _failure(where: str, what: str, command: str, result: Result, extra: str = "") -> str:
    tail = "\n".join(result.output.rstrip("\n").splitlines()[-TAIL:])
    said = (
        f"timed out after {result.timeout:.0f} s" if result.code is None else f"exit {result.code}"
    )
    return (
        f"{where}: {what} ({said}, {result.seconds:.1f} s)\n"
        f"  command:\n{_indent(command)}\n{extra}"
        f"  output (last {TAIL} lines):\n{_indent(tail) or '    (none)'}"
    )


def _exit_ok(block: blocks.Block, result: Result) -> bool:
    if result.code is None:
        return False
    return (result.code != 0) if block.expect_fail else (result.code == 0)


def _wanted(block: blocks.Block) -> str:
    return "a non-zero exit (# expect-fail)" if block.expect_fail else "exit 0"


def run_block(run: PageRun, page: str, block: blocks.Block) -> list[str]:
    """Failures of one block (empty when it passed)."""
    where = f"{page}:{block.line}"
    if block.lang == "console":
        return _run_console(run, where, block)
    if block.lang == "python":
        argv = [sys.executable, str(run.script(block, ".py"))]
    else:
        argv = ["bash", "-euo", "pipefail", str(run.script(block, ".sh"))]
    result = run.execute(argv, f"L{block.line}")
    run.seconds[block.line] = result.seconds
    if _exit_ok(block, result):
        return []
    return [_failure(where, f"{block.lang} block, wanted {_wanted(block)}", block.code, result)]


def _run_console(run: PageRun, where: str, block: blocks.Block) -> list[str]:
    run.seconds[block.line] = 0.0
    for n, step in enumerate(blocks.console_steps(block.code)):
        argv = ["bash", "-euo", "pipefail", "-c", step.command]
        result = run.execute(argv, f"L{block.line}-{n}")
        run.seconds[block.line] += result.seconds
        if not _exit_ok(block, result):
            what = f"console command, wanted {_wanted(block)}"
            return [_failure(where, what, step.command, result)]
        absent = blocks.missing(step.expected, result.output)
        if absent:
            extra = f"  expected lines not in the output:\n{_indent(chr(10).join(absent))}\n"
            return [_failure(where, "console output differs", step.command, result, extra)]
    return []


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """Built once a session: the demo recipe with a short training, and its collection."""
    root = tmp_path_factory.mktemp("docs-demo")
    run = PageRun(root)
    script = run.scripts / "setup-demo.sh"
    script.write_text(DEMO_BUILD, encoding="utf-8")
    try:
        result = run.execute(["bash", "-euo", "pipefail", str(script)], "setup-demo", 3 * TIMEOUT)
    finally:
        run.close()
    if result.code != 0:
        failed = _failure("setup demo", "building the demo home failed", DEMO_BUILD, result)
        pytest.fail(failed, pytrace=False)
    return root


@pytest.mark.parametrize("page", _pages())
def test_page_examples_run(page: str, tmp_path: Path, request) -> None:
    try:
        parsed = blocks.read_page(REPO / page)
    except blocks.MarkerError as err:
        pytest.fail(f"{page}: {err}", pytrace=False)
    for block in parsed.skipped:
        warnings.warn(DocsSkip(f"{page}:{block.line}: skipped: {block.skip}"), stacklevel=1)
    if not parsed.runnable:
        pytest.skip(f"{page}: every block is marked skip")
    demo = request.getfixturevalue("demo_home") if "demo" in parsed.setup else None
    run = PageRun(tmp_path, demo)
    failures: list[str] = []
    try:
        for block in parsed.runnable:
            failures += run_block(run, page, block)
            if failures and not KEEP_GOING:
                break  # later blocks build on this one
    finally:
        run.close()
    times = ", ".join(f"L{line} {s:.0f} s" for line, s in run.seconds.items())
    request.node.user_properties.append(("block_seconds", times))
    if failures:
        pytest.fail("\n\n".join(failures) + f"\n\nblock times: {times}", pytrace=False)
