"""Caps on what one document may inflate to, so a small HWP, HWPX or DOCX that unpacks to
gigabytes (a decompression bomb) is refused with a named reason instead of taking the indexing
run's memory and hours: per part (a zip member, an HWP stream) its uncompressed size and its
compression ratio, per document the uncompressed bytes of all its parts together.

Declared sizes are checked before anything is inflated, and what is inflated is counted as it
is read, in chunks, so no more than a cap (plus one byte) is ever inflated even when the sizes
a file declares are false. The caps are the recipe's `rag.max_document_mb`, `rag.max_part_mb`
and `rag.max_ratio` (kollm.config.RagConfig, where their defaults are argued)."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kollm.config import RagConfig

MB = 1 << 20
CHUNK = 1 << 16  # bytes inflated per step: small, so a cap is never overshot by much
# The ratio is only judged past 1 MB: a small part may compress any amount (a few KB of
# repeated XML attributes do), and cannot cost much whatever its ratio.
RATIO_FLOOR = 1 * MB
# Stored and deflated members inflate in bounded steps; zipfile inflates bzip2 and LZMA in one
# unbounded call per read, and neither HWPX nor DOCX writers use them.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


class LimitError(ValueError):
    """A document over one of its caps; the message names the part, the cap and the setting."""


@dataclass(frozen=True)
class Limits:
    """The caps, in bytes (ratio: uncompressed over compressed size)."""

    document_bytes: int
    part_bytes: int
    ratio: float

    @classmethod
    def from_config(cls, rag: RagConfig | None = None) -> Limits:
        """The caps of a recipe's `rag` section (the defaults without one)."""
        from kollm.config import RagConfig

        rag = rag or RagConfig()
        return cls(int(rag.max_document_mb * MB), int(rag.max_part_mb * MB), rag.max_ratio)


class Budget:
    """The uncompressed bytes one document has inflated so far, checked against its limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.used = 0

    def declared(self, parts: Iterable[tuple[str, int, int]]) -> None:
        """Refuse the document before reading it when the (name, size, compressed size) its
        parts declare are over a cap."""
        total = 0
        for name, size, packed in parts:
            self._check_part(name, size, packed)
            total += size
        self._check_document(self.used + total)

    def take(self, name: str, added: int, part_size: int, packed: int) -> None:
        """Count `added` bytes just inflated from part `name` (now `part_size` bytes in all,
        from `packed` compressed bytes)."""
        self.used += added
        self._check_part(name, part_size, packed)
        self._check_document(self.used)

    def allowance(self, part_size: int) -> int:
        """How many bytes the next step may inflate and still be within both caps, plus one
        (so going past a cap is seen)."""
        left = min(self.limits.part_bytes - part_size, self.limits.document_bytes - self.used)
        return max(1, min(CHUNK, left + 1))

    def _check_part(self, name: str, size: int, packed: int) -> None:
        limits = self.limits
        if size > limits.part_bytes:
            raise LimitError(
                f"{name}: over the uncompressed-size limit of {_mb(limits.part_bytes)} MB"
                " per part (rag.max_part_mb)"
            )
        if size > RATIO_FLOOR and size > limits.ratio * max(packed, 1):
            raise LimitError(
                f"{name}: compression ratio {size // max(packed, 1)}:1 over the limit of"
                f" {limits.ratio:g}:1 (rag.max_ratio)"
            )

    def _check_document(self, total: int) -> None:
        if total > self.limits.document_bytes:
            raise LimitError(
                f"over the uncompressed-size limit of {_mb(self.limits.document_bytes)} MB"
                " per document (rag.max_document_mb)"
            )


def _mb(size: int) -> str:
    return f"{size / MB:g}"


def check_zip(archive: zipfile.ZipFile, budget: Budget, names: list[str] | None = None) -> None:
    """Refuse a zip whose members (`names`, or all of them) declare more than the caps allow or
    use a compression method other than stored and deflated."""
    infos = [i for i in archive.infolist() if names is None or i.filename in names]
    for info in infos:
        if info.compress_type not in _ZIP_METHODS:
            raise LimitError(f"{info.filename}: compression method {info.compress_type} refused")
    budget.declared((i.filename, i.file_size, i.compress_size) for i in infos)


class BoundedReader:
    """A zip member read through a budget: `read(n)` inflates at most the budget's allowance
    per step and raises LimitError past a cap (a parser reads it as a file)."""

    def __init__(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> None:
        check_zip(archive, budget, [info.filename])
        self._raw = archive.open(info)
        self._name, self._packed, self._budget = info.filename, info.compress_size, budget
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        data = self._raw.read(min(n, self._budget.allowance(self.size)))
        self.size += len(data)
        self._budget.take(self._name, len(data), self.size, self._packed)
        return data

    def close(self) -> None:
        self._raw.close()


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> bytes:
    """The whole of a zip member, within the budget."""
    reader = BoundedReader(archive, info, budget)
    try:
        return reader.read()
    finally:
        reader.close()


def inflate_raw(data: bytes, name: str, budget: Budget) -> bytes:
    """A raw-deflate stream (an HWP 5 BodyText section) inflated in bounded steps; a truncated
    stream gives what it holds."""
    inflater = zlib.decompressobj(-15)
    out, size, tail = [], 0, data
    while not inflater.eof:
        chunk = inflater.decompress(tail, budget.allowance(size))
        tail = inflater.unconsumed_tail
        if not chunk and not tail:
            break
        size += len(chunk)
        budget.take(name, len(chunk), size, len(data))
        out.append(chunk)
    return b"".join(out)
