"""The fenced blocks of a docs page that the docs test runs (docs convention of issue 34).

Blocks whose info string is `bash`, `sh`, `console` or `python` run, in page order; any other
info string (`yaml`, `json`, `text` ...) is a listing and does not. HTML comments steer it:

- `<!-- docs-test: skip REASON -->` on the line right before a fence: that block does not run
  (the reason is required, and shown by the test);
- `<!-- docs-test: setup demo -->` anywhere (near the top): the page starts from a home with
  the registered demo model instead of an empty one.

A `# expect-fail` first line makes a block pass only when it exits non-zero (in a `console`
block: every command in it). In a `console` block, `$ ` starts a command (a line ending in `\\`
goes on to the next); the lines up to the next `$ ` are output the command must print: each
non-empty one must appear in the actual output, whitespace collapsed, `...` matching anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

RUN = ("bash", "sh", "console", "python")
SETUPS = ("demo",)
EXPECT_FAIL = "# expect-fail"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:(?P<body>.*?)-->\s*$")
_ANY_MARKER = re.compile(r"<!--\s*docs-test\b")


class MarkerError(ValueError):
    """A docs-test comment the runner cannot follow (a skip with no reason, a typo)."""


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None  # the reason, when marked skip

    @property
    def runs(self) -> bool:
        return self.lang in RUN and self.skip is None

    @property
    def expect_fail(self) -> bool:
        first = self.code.lstrip("\n").split("\n", 1)[0]
        return first.strip() == EXPECT_FAIL


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    setup: set[str] = field(default_factory=set)

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.runs]

    @property
    def skipped(self) -> list[Block]:
        return [b for b in self.blocks if b.lang in RUN and b.skip is not None]


def _marker(line: str, number: int) -> tuple[str, str] | None:
    """('skip', reason) or ('setup', name) for a docs-test comment line, None for other lines."""
    found = _MARKER.match(line)
    if found is None:
        if _ANY_MARKER.search(line):
            raise MarkerError(f"line {number}: a docs-test comment must be alone on its line")
        return None
    verb, _, rest = found["body"].strip().partition(" ")
    rest = rest.strip()
    if verb == "skip":
        if not rest:
            raise MarkerError(f"line {number}: `docs-test: skip` needs a reason")
        return "skip", rest
    if verb == "setup":
        if rest not in SETUPS:
            raise MarkerError(f"line {number}: unknown setup {rest!r} (known: {SETUPS})")
        return "setup", rest
    raise MarkerError(f"line {number}: unknown docs-test comment {found['body'].strip()!r}")


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip()


def parse(text: str, path: Path = Path("<page>")) -> Page:
    """Every fenced block of a page with its marker, and the page's setup."""
    page, lines, pending, i = Page(path), text.splitlines(), None, 0
    while i < len(lines):
        marker = _marker(lines[i], i + 1)
        if marker and marker[0] == "setup":
            page.setup.add(marker[1])
        opened = _FENCE.match(lines[i])
        if marker and marker[0] == "skip":
            pending = (i + 1, marker[1])
        elif opened:
            block, i = _read_block(lines, i, opened)
            if pending is not None:
                block.skip = pending[1]
            page.blocks.append(block)
            pending = None
        elif pending is not None:
            raise MarkerError(f"line {pending[0]}: a skip marker must come right before a fence")
        i += 1
    if pending is not None:
        raise MarkerError(f"line {pending[0]}: a skip marker must come right before a fence")
    return page


def _read_block(lines: list[str], start: int, opened: re.Match) -> tuple[Block, int]:
    """The block opening at `start`, and the index of its closing fence."""
    fence, indent = opened["fence"], opened["indent"]
    lang = opened["info"].strip().split(" ", 1)[0].strip("{}.").lower()
    body, i = [], start + 1
    while i < len(lines) and not _closes(lines[i], fence):
        body.append(_dedent(lines[i], indent))
        i += 1
    return Block(start + 1, lang, "\n".join(body) + "\n"), i


def read_page(path: Path) -> Page:
    return parse(path.read_text(encoding="utf-8"), path)


@dataclass
class Step:
    """One `$ ` command of a console block and the output lines it must print."""

    command: str
    expected: list[str]


def console_steps(code: str) -> list[Step]:
    steps: list[Step] = []
    lines = code.splitlines()
    if lines and lines[0].strip() == EXPECT_FAIL:
        lines = lines[1:]
    continuing = False
    for line in lines:
        if continuing:
            steps[-1].command += "\n" + line
        elif line.startswith("$ ") or line.rstrip() == "$":
            steps.append(Step(line[2:], []))
        elif steps:
            steps[-1].expected.append(line)
        elif line.strip():
            raise MarkerError(f"console output before any `$ ` command: {line!r}")
        continuing = bool(steps) and steps[-1].command.endswith("\\") and not steps[-1].expected
    return steps


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _pattern(expected: str) -> re.Pattern:
    parts = [re.escape(p) for p in _collapse(expected).split("...")]
    return re.compile(".*?".join(parts))


def missing(expected: list[str], actual: str) -> list[str]:
    """The expected lines that no line of `actual` holds (whitespace collapsed, `...` = any)."""
    have = [_collapse(line) for line in actual.splitlines()]
    return [
        line
        for line in expected
        if line.strip() and not any(_pattern(line).search(h) for h in have)
    ]
