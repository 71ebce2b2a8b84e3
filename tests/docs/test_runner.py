"""The docs runner on small pages: a failure says where and why; a page's servers are stopped."""

from __future__ import annotations

import os

import pytest

from tests.docs.blocks import parse
from tests.docs.test_examples import PageRun, run_block


def _run(tmp_path, text: str) -> tuple[PageRun, list[str]]:
    run, failures = PageRun(tmp_path), []
    try:
        for block in parse(text).runnable:
            failures += run_block(run, "page.md", block)
    finally:
        run.close()
    return run, failures


def test_a_failing_block_says_its_page_line_command_exit_and_output(tmp_path):
    _, (failure,) = _run(tmp_path, "# t\n\n```bash\necho before\nexit 3\n```\n")
    assert failure.startswith("page.md:3: bash block, wanted exit 0 (exit 3,")
    assert "exit 3" in failure.split("command:")[1] and "before" in failure.split("output")[1]


def test_blocks_share_the_working_dir_and_home_and_find_the_repo_data(tmp_path):
    page = (
        "```bash\necho 1 > mark\ntest -f data/sample/instructions.jsonl\n```\n"
        '```python\nimport os, pathlib\nassert pathlib.Path("mark").read_text() == "1\\n"\n'
        'assert os.environ["KOLLM_HOME"].endswith("home")\n```\n'
        "```bash\n# expect-fail\nkollm registry show nothing@production\n```\n"
    )
    assert _run(tmp_path, page)[1] == []


def test_console_output_is_checked(tmp_path):
    page = "```console\n$ echo 'kollm-demo:1  production'\nkollm-demo:... production\n"
    page += "$ echo b\nc\n```\n"
    _, (failure,) = _run(tmp_path, page)
    assert "page.md:1: console output differs" in failure and "    c" in failure


@pytest.mark.parametrize("start", ["sleep 600 &", "setsid sleep 600 &"])
def test_what_a_page_leaves_running_is_stopped_when_it_ends(tmp_path, start):
    """In the page's process group (a server in the background) or out of it (a detached job)."""
    run, failures = _run(tmp_path, f"```bash\n{start}\necho $! > sleeper.pid\n```\n")
    pid = int((run.work / "sleeper.pid").read_text())
    assert failures == []
    try:
        os.kill(pid, 0)
        alive = not _zombie(pid)
    except ProcessLookupError:
        alive = False
    assert not alive


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1].startswith("Z")
