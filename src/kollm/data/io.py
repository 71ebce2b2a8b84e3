"""Readers for JSONL, CSV, Parquet and saved `datasets` dirs; atomic writers.

Readers yield `(line, record)` so that every error names the file and line. Writers write under
a temporary name in the same directory and rename, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kollm.data.records import Record, RecordError, RecordKind, validate_record


class DataError(ValueError):
    """Unreadable input; the message names the file and, where there is one, the line."""


def detect_format(path: Path, declared: str = "auto") -> str:
    """The input format: the declared one, else by suffix (a dir is a datasets dir)."""
    if declared != "auto":
        return declared
    if path.is_dir():
        return "datasets" if is_dataset_dir(path) else "shards"
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in formats:
        raise DataError(f"{path}: unknown input format {suffix!r}; use .jsonl, .csv or .parquet")
    return formats[suffix]


SHARD_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def is_dataset_dir(path: Path) -> bool:
    """A dir written by `datasets`' save_to_disk (a DatasetDict or one Dataset)."""
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def is_shard_dir(path: Path, declared: str = "auto") -> bool:
    """A dir of JSONL, CSV or Parquet shards (not a saved `datasets` dir)."""
    return path.is_dir() and declared != "datasets" and not is_dataset_dir(path)


def shard_paths(path: Path, declared: str = "auto") -> list[Path]:
    """The files of one input: the file itself, or a shard dir's files in name order (the
    order records are read, numbered and deduplicated in)."""
    if not is_shard_dir(path, declared):
        return [path]
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and p.suffix.lower() in SHARD_FORMATS
        and declared in ("auto", SHARD_FORMATS[p.suffix.lower()])
    )
    if not files:
        raise DataError(f"{path}: no .jsonl, .csv or .parquet shards in this directory")
    return files


class Malformed(str):
    """A row that could not be parsed; the string is the error message."""


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, Malformed(f"malformed JSON: {err.msg} (column {err.colno})")


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            # line_num is the physical line the row ended on; quoted newlines span lines.
            yield reader.line_num, {k: _maybe_json(v) for k, v in row.items() if k is not None}


def _maybe_json(value: str | None) -> Any:
    """CSV cells holding a JSON list (multi-reference summaries, messages) are decoded."""
    if value and value[:1] in "[{":
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(value)
    return value


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def read_rows(path: Path, fmt: str = "auto") -> Iterator[tuple[int, Any]]:
    """Raw rows of one file, each with its line (JSONL, CSV) or row number (Parquet)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    readers = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}
    fmt = detect_format(path, fmt)
    if fmt in ("datasets", "shards"):
        raise DataError(f"{path}: a directory holds splits or shards, not rows of one file")
    try:
        yield from readers[fmt](path)
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from err


def read_records(
    path: Path, kind: RecordKind, fmt: str = "auto", bad_lines: list[dict] | None = None
) -> Iterator[Record]:
    """Validated records of one file. A bad row raises DataError naming the file and line, or,
    when `bad_lines` is given, is appended there and skipped."""
    for line_no, row in read_rows(path, fmt):
        try:
            if isinstance(row, Malformed):
                raise RecordError(row)
            yield validate_record(row, kind)
        except RecordError as err:
            message = f"{path}:{line_no}: {err}"
            if bad_lines is None:
                raise DataError(message) from err
            bad_lines.append({"file": str(path), "line": line_no, "error": str(err), "row": row})


def read_dataset_dir(path: Path) -> dict[str, list[Any]]:
    """A `datasets` dir saved with save_to_disk: a DatasetDict (splits) or one Dataset."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{path}: not a saved datasets dir: {err}") from err
    if isinstance(loaded, DatasetDict):
        return {name: split.to_list() for name, split in loaded.items()}
    assert isinstance(loaded, Dataset)
    return {"all": loaded.to_list()}


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file; a malformed line is a
    DataError naming the file and the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    for line_no, row in _jsonl_rows(path):
        if isinstance(row, Malformed):
            raise DataError(f"{path}: line {line_no}: {row}")
        yield line_no, row


def _split_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSONL file's values, or a sharded split's (`train/part-*.jsonl|parquet`, as the data
    stage on Ray writes it) in name order."""
    if not path.is_dir():
        yield from iter_jsonl(path)
        return
    for shard in shard_paths(path):
        for line_no, row in read_rows(shard):
            if isinstance(row, Malformed):
                raise DataError(f"{shard}: line {line_no}: {row}")
            yield line_no, row


def read_jsonl(path: Path | str, limit: int | None = None) -> list[Any]:
    """Every JSON value of a JSONL file (blank lines skipped), or of a directory of its shards,
    the first `limit` with one."""
    rows = []
    for _, row in _split_rows(Path(path)):
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


# --- writers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it to `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_jsonl(path: Path, records: Iterable[Record]) -> int:
    """Write records as JSONL atomically; returns how many."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: Path, obj: Any) -> None:
    """Write a JSON document atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_dataset_dir(path: Path, splits: dict[str, list[Record]]) -> None:
    """save_to_disk into a temporary dir, then swap it in place of `path`."""
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # our own progress bar covers the stage
    dataset = DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items() if rows})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        dataset.save_to_disk(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
