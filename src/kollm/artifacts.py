"""Model artifacts on disk: weights and their hash, and the content-addressed store.

A registered version's files are put under `$KOLLM_HOME/artifacts/<sha256>/`, where the sha256
is over every file's name and bytes: a reflink where the file system has them (btrfs, XFS: no
extra space), else a copy. Not a hard link: `save_pretrained` into the run dir again truncates
and rewrites the same inode, which would change the stored version through the other name. The
per-file hashes are checked on load all the same, so a stored file that changed is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import uuid
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_FICLONE = 0x40049409  # linux/fs.h: share the blocks of another file (btrfs, xfs, ...)


class ArtifactError(ValueError):
    """A model dir without weights, or a stored artifact whose files changed."""


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def file_hashes(artifact: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of a model dir (or of one file)."""
    if artifact.is_file():
        return {artifact.name: file_sha256(artifact)}
    return {
        p.relative_to(artifact).as_posix(): file_sha256(p)
        for p in sorted(artifact.rglob("*"))
        if p.is_file()
    }


def hashes_sha256(hashes: dict[str, str]) -> str:
    """One sha256 over a dir's per-file hashes (names and hashes, in name order)."""
    return hashlib.sha256(
        "".join(f"{name}\0{sha}\n" for name, sha in sorted(hashes.items())).encode()
    ).hexdigest()


def tree_sha256(path: Path) -> str:
    """sha256 over every file of a dir, names and bytes: any file that changes changes it."""
    return hashes_sha256(file_hashes(path))


def _place(source: Path, target: Path) -> None:
    """Reflink `source` to `target` where the file system can, else copy it."""
    with contextlib.suppress(OSError), source.open("rb") as src, target.open("wb") as dst:
        fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        return
    shutil.copy2(source, target)


def store_artifact(artifact: Path, root: Path, hashes: dict[str, str]) -> Path:
    """Put `artifact`'s files under `root/<sha256 of names and hashes>/`; returns that dir."""
    final = root / hashes_sha256(hashes)
    if final.is_dir():
        return final
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    try:
        for name in hashes:
            source = artifact if artifact.is_file() else artifact / name
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            _place(source, tmp / name)
        with contextlib.suppress(OSError):  # another process stored the same content first
            tmp.rename(final)
    finally:  # a failed copy (a full disk) leaves nothing behind either
        shutil.rmtree(tmp, ignore_errors=True)
    if not final.is_dir():
        raise OSError(f"{final} was not stored")
    return final


def verify_artifact(path: Path, hashes: dict[str, str], what: str) -> None:
    """Refuse a stored artifact whose files are missing or differ from the recorded hashes."""
    for name, expected in sorted(hashes.items()):
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{what}: {file} is missing from the stored artifact")
        actual = file_sha256(file)
        if actual != expected:
            raise ArtifactError(
                f"{what}: {file} changed after registration (sha256 {actual[:12]}, recorded "
                f"{expected[:12]}); refusing to load it"
            )


SENTENCEPIECE_FILE = "tokenizer.model"


def keep_sentencepiece(source: str | Path | None, target: Path) -> None:
    """Copy a base's SentencePiece `tokenizer.model` (Gemma, Llama-2, SOLAR) beside a
    tokenizer saved without it: transformers 5 writes only tokenizer.json, and llama.cpp's
    converter reads a SentencePiece vocabulary from tokenizer.model alone. `source` is a
    model dir or a hub id in the local cache; nothing happens where it has no such file."""
    if source is None or (target / SENTENCEPIECE_FILE).exists():
        return
    path = Path(source) / SENTENCEPIECE_FILE
    if not Path(source).is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(source), SENTENCEPIECE_FILE)
        path = Path(cached) if isinstance(cached, str) else path
    if path.is_file():
        shutil.copy2(path, target / SENTENCEPIECE_FILE)
