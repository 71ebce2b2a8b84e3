"""How `make test` (`pytest -n 2 --dist loadfile`) shares the suite between its two workers:
each test file goes to one worker as a whole, so its module fixtures (a served model, a
browser, a vLLM server) start once; and every file that uses the session's `ray_cluster` goes
to the same worker as one unit, first: a Ray cluster is one per machine (tests/ray_cluster.py
holds a lock for its whole session), so a second worker asking for one would wait for the
first worker's whole session to end.

xdist's own `xdist_group` marks would say the same per test, but xdist 3.8 renames the node
IDs to group them, which pytest 9 no longer lets it do: the groups are made here, from the
file names the workers report, for `--dist loadfile` and `--dist loadgroup` alike."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

RAY = "ray"
# Files whose tests share no costly module fixture and take minutes together: one unit a test,
# so both workers take pages (each worker builds the docs' demo home once, about 35 s).
PER_TEST = ("tests/docs/test_examples.py",)


@functools.cache
def uses_ray(path: Path) -> bool:
    try:
        return "ray_cluster" in path.read_text(encoding="utf-8")
    except OSError:
        return False


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # optional: `-p no:xdist` has no such hook
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") not in ("loadfile", "loadgroup"):
        return None
    from xdist.scheduler import LoadFileScheduling

    root = config.rootpath

    class FilesAndRay(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path in PER_TEST:
                return nodeid
            return RAY if uses_ray(root / path) else path

        def _assign_work_unit(self, node) -> None:
            # the Ray files are the longest unit: started first, they don't end the run alone
            if RAY in self.workqueue:
                self.workqueue.move_to_end(RAY, last=False)
            super()._assign_work_unit(node)

    return FilesAndRay(config, log)
