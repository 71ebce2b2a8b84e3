"""llama.cpp's own HF-to-GGUF converter, taken from the llama.cpp source that the
`llama-cpp-python` sdist vendors (pinned here by version and sha256), never a converter of
ours. `make` fetches it once with pip into `<venv>/share/kollm/llama.cpp` (or
`$KOLLM_LLAMACPP_DIR`): `convert_hf_to_gguf.py`, its `conversion/` package, the `gguf-py`
it was written against (used in preference to any installed `gguf`), and the LICENSE.

Why this and not the `gguf` package's writer alone: the writer only writes what it is given;
the tensor-name mapping, the tokenizer's GGUF form (tokens, merges, pre-tokenizer, special ids,
chat template) and the quantisation are the converter's, kept by llama.cpp for every
architecture it knows. The `gguf` package from PyPI is still used to read files back."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
STAMP = f"{VERSION} lora"  # what a fetched dir holds; an older fetch lacks the LoRA converter


class ConverterMissing(RuntimeError):
    """The converter is not on this machine; the message says how to fetch it."""


def converter_dir() -> Path:
    env = os.environ.get("KOLLM_LLAMACPP_DIR")
    return Path(env) if env else Path(sys.prefix) / "share" / "kollm" / "llama.cpp"


def converter() -> Path:
    """The converter script; ConverterMissing when it has not been fetched."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ConverterMissing(
            f"llama.cpp's converter is not at {script.parent}: run `python -m"
            " kollm.cluster.llamacpp fetch` (make does it), or point KOLLM_LLAMACPP_DIR at a"
            " llama.cpp checkout"
        )
    return script


def lora_converter() -> Path:
    """llama.cpp's PEFT-LoRA-to-GGUF converter; ConverterMissing when not fetched."""
    script = converter().parent / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise ConverterMissing(
            f"llama.cpp's LoRA converter is not at {script.parent}: run `python -m"
            " kollm.cluster.llamacpp fetch` again (make does it)"
        )
    return script


def fetch(target: Path | None = None, source: Path | None = None) -> Path:
    """Download the pinned sdist with pip (or take it from the directory `source`: an
    air-gapped install's wheelhouse), check its sha256, and unpack the converter's files
    into `target` (replaced whole, so a failed fetch leaves nothing half-written)."""
    target = target or converter_dir()
    stamp = target / ".version"
    if stamp.is_file() and stamp.read_text().strip() == STAMP:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _local(source) if source else _download(Path(tmp))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{sdist}: sha256 {digest} is not the pinned {SDIST_SHA256}")
        staged = Path(tmp) / "llama.cpp"
        _unpack(sdist, staged)
        (staged / ".version").write_text(STAMP + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staged), str(target))
    return target


def _download(tmp: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
    command += ["--no-binary", ":all:", "-d", str(tmp), f"llama-cpp-python=={VERSION}"]
    subprocess.run(command, check=True)
    return tmp / SDIST


def _local(source: Path) -> Path:
    # Not `pip download --no-index`: pip would prepare the sdist's metadata, which needs its
    # build backend (scikit-build-core, maybe cmake) from the index too.
    sdist = source / SDIST
    if not sdist.is_file():
        raise ConverterMissing(f"{SDIST} is not in {source} (make wheelhouse puts it there)")
    return sdist


def _unpack(sdist: Path, out: Path) -> None:
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and member.isfile() and rel.startswith(WANTED):
                member.name = rel
                tar.extract(member, out, filter="data")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] != ["fetch"] or len(args) not in (1, 3) or args[1:2] not in ([], ["--from"]):
        raise SystemExit("usage: python -m kollm.cluster.llamacpp fetch [--from DIR]")
    source = Path(args[2]) if len(args) == 3 else None
    print(f"llama.cpp converter {VERSION}: {fetch(source=source)}")  # noqa: T201  (make's output)
