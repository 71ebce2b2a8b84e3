"""Model artifacts on disk: what counts as weights, and their content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class ArtifactError(ValueError):
    """A model dir without weights."""


def weights_sha256(artifact: Path) -> str:
    """sha256 over the weight files of a model dir (names and bytes), or of one file."""
    files = (
        [artifact]
        if artifact.is_file()
        else sorted(p for p in artifact.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    )
    if not files:
        raise ArtifactError(f"{artifact}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(artifact).as_posix().encode() if artifact.is_dir() else b"")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
