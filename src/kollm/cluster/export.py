"""`kollm export REF --format hf|gguf|ct2`: a registered version (or a model dir) as the file a
site's server runs. A LoRA adapter is merged into its base first.

- `hf`: a standalone Hugging Face dir.
- `gguf`: through llama.cpp's own converter (`kollm.cluster.llamacpp`) at f16, bf16 or q8_0;
  q4/q5/q6 kinds by `llama-quantize` from the f16 file when that binary is on PATH. Beside it
  an Ollama `Modelfile` (`kollm.cluster.modelfile`).
- `ct2`: the CTranslate2 dir kollm serves (int8 by default), with the tokenizer and prompt
  format copied in.

A prompt-learning adapter (prompt or prefix tuning) has no weights to merge: `hf` keeps it as
the adapter dir it is (the transformers engine serves it), gguf and ct2 refuse it by name.

Every export of a registered version is recorded in the registry with its sha256 and size."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kollm.artifacts import file_sha256, weights_sha256
from kollm.cluster import llamacpp
from kollm.engines.llamacpp_engine import find_quantize
from kollm.registry import ModelVersion, Registry

log = logging.getLogger(__name__)

FORMATS = ("hf", "gguf", "ct2")
CONVERTER_QUANTS = ("f16", "bf16", "q8_0")  # the converter writes these itself
QUANTIZE_KINDS = ("q4_0", "q4_1", "q4_k_s", "q4_k_m", "q5_0", "q5_1", "q5_k_s", "q5_k_m", "q6_k")
CT2_QUANTS = ("int8", "int8_float32", "int16", "float16", "float32")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "kollm_prompt.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


class ExportError(ValueError):
    """An export that cannot be made; the message names the cause and the fix."""


@dataclass
class Export:
    format: str
    path: Path  # the GGUF file, or the exported dir
    sha256: str
    size_bytes: int
    quant: str | None = None
    source: str = ""
    files: list[Path] = field(default_factory=list)  # what else was written (the Modelfile)
    notes: list[str] = field(default_factory=list)  # what a user should know (no Modelfile)
    quality: dict | None = None  # what it costs against the source (kollm.engines.quality)


def resolve(ref: str, registry: Registry | None = None) -> tuple[Path, ModelVersion | None]:
    """The model dir `ref` names (a dir, or a registry ref, its files checked), and the
    registered version when it is one."""
    path = Path(ref)
    if path.is_dir():
        return path, None
    version = (registry or Registry()).checkout(ref)
    return Path(version.artifact_path), version


def check_exportable(model_dir: Path, fmt: str) -> None:
    """ExportError, with what to do instead, for a prompt-learning adapter as gguf or ct2."""
    from kollm.engines.lora import AdapterNotMergeable, check_mergeable

    if fmt == "hf":
        return
    try:
        check_mergeable(
            model_dir,
            f"a {fmt} export",
            "`kollm export --format hf` keeps the adapter as it is, and"
            " `kollm serve --engine transformers` serves it",
        )
    except AdapterNotMergeable as err:
        raise ExportError(str(err)) from err


@contextlib.contextmanager
def merged(model_dir: Path, trust_remote_code: bool = False) -> Iterator[Path]:
    """`model_dir` itself (a model, or a prompt-learning adapter, which cannot be merged), or a
    LoRA adapter merged into its base in a temporary dir."""
    from kollm.engines.lora import merge_lora, prompt_learning_kind

    if not (model_dir / "adapter_config.json").exists() or prompt_learning_kind(model_dir):
        yield model_dir
        return

    with tempfile.TemporaryDirectory(prefix="kollm-merged-") as tmp:
        log.info("export: merging the LoRA adapter %s into its base", model_dir)
        yield merge_lora(model_dir, Path(tmp) / "model", trust_remote_code)


def export_model(
    ref: str,
    fmt: str,
    out: Path,
    quant: str | None = None,
    registry: Registry | None = None,
    pre_tokenizer: str | None = None,
    trust_remote_code: bool = False,
    measure: bool = False,
) -> Export:
    """Export `ref` as `fmt` into the dir `out` and record it on the version; a model that
    needs remote code is exported only with `trust_remote_code`. With `measure`, a gguf or
    ct2 export is measured against the weights it came from, the figures stored with it."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    registry = registry or Registry()
    source, version = resolve(ref, registry)
    check_exportable(source, fmt)
    remote = _remote(ref, source, trust_remote_code)
    out.mkdir(parents=True, exist_ok=True)
    with merged(source, trust_remote_code) as model_dir:
        if fmt == "hf":
            result = _hf(model_dir, out)
        elif fmt == "ct2":
            result = _ct2(model_dir, out, quant or "int8", remote)
        else:
            result = _gguf(model_dir, out, quant or "f16", version, pre_tokenizer, remote)
        if measure and fmt != "hf":
            result.quality = _measure(model_dir, result, version, trust_remote_code)
    result.source = version.ref if version else str(source)
    if version is not None:
        registry.add_export(
            version.ref,
            fmt,
            result.path,
            result.sha256,
            result.size_bytes,
            quant=result.quant,
            files=[str(f) for f in result.files],
            notes=result.notes,
            **({"quality": result.quality} if result.quality else {}),
        )
    return result


def _measure(
    model_dir: Path, result: Export, version: ModelVersion | None, trust_remote_code: bool
) -> dict:
    from kollm.cluster.quality import measure_export, reference_engine

    reference = reference_engine(model_dir, trust_remote_code)
    try:
        return measure_export(model_dir, result, reference, version)
    except (RuntimeError, ValueError) as err:  # no llama-server here, an encoder-decoder
        log.warning("export: %s not measured: %s", result.path, err)
        return {"not_measured": str(err).splitlines()[0]}
    finally:
        reference.unload()


def _remote(ref: str, source: Path, trust_remote_code: bool) -> dict:
    """from_pretrained kwargs for the source; ExportError by name when it needs remote code
    and the flag was not given."""
    from kollm.remote import RemoteCodeRefused, dir_kwargs

    try:
        return dir_kwargs(source, trust_remote_code)
    except RemoteCodeRefused as err:
        raise ExportError(f"{ref}: {err}") from err


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _staged(out: Path, name: str) -> Iterator[Path]:
    """A temporary sibling of out/name, for the block to fill and rename into place; removed
    when the block fails (a full disk, a converter error) so no half export is left."""
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out))
    try:
        yield staged
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def _replace(staged: Path, final: Path) -> Path:
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    os.replace(staged, final)
    return final


def _hf(model_dir: Path, out: Path) -> Export:
    with _staged(out, "hf") as staged:
        shutil.copytree(
            model_dir,
            staged,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("training_args.bin", "optimizer.pt", "checkpoint-*"),
        )
        final = _replace(staged, out / "hf")
    return Export("hf", final, weights_sha256(final), _size(final))


def _ct2(model_dir: Path, out: Path, quant: str, remote: dict) -> Export:
    import ctranslate2

    from kollm.engines.ctranslate2_engine import config_compat, fill_special_tokens

    if quant not in CT2_QUANTS:
        raise ExportError(f"--quant {quant!r} for ct2: expected one of {', '.join(CT2_QUANTS)}")
    with _staged(out, "ct2") as staged:
        config_compat()
        converter = ctranslate2.converters.TransformersConverter(str(model_dir), **remote)
        converter.convert(str(staged), quantization=quant, force=True)
        fill_special_tokens(staged)
        for name in TOKENIZER_FILES:  # a deployable dir: kollm serves it with its tokenizer
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, staged / name)
        final = _replace(staged, out / f"ct2-{quant}")
    return Export("ct2", final, file_sha256(final / "model.bin"), _size(final), quant)


# The splitting regexes of the BPE pre-tokenizers llama.cpp implements, as tokenizer.json
# writes them (a `Split` before a regex-free `ByteLevel`): a base's fine-tuned or re-trained
# vocabulary keeps its family's split, but not the hash the converter knows it by.
SPLIT_REGEXES = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
}


def known_pre_tokenizer(model_dir: Path) -> str | None:
    """The llama.cpp pre-tokenizer that splits text as this tokenizer does, when
    `tokenizer.json` shows it plainly: GPT-2's byte-level regex and no normaliser is `gpt-2`;
    Llama-3's and Qwen2's `Split` regexes are `llama-bpe` and `qwen2`. None when it cannot be
    told (the converter's own hash check decides)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text(encoding="utf-8"))
    if (spec.get("model") or {}).get("type") != "BPE":
        return None
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence":
        return _split_pre_tokenizer(pre.get("pretokenizers") or [])
    byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    plain = byte_level and not pre.get("add_prefix_space") and spec.get("normalizer") is None
    return "gpt-2" if plain else None


def _split_pre_tokenizer(steps: list[dict]) -> str | None:
    """`llama-bpe` or `qwen2` for a known regex `Split` followed by a regex-free ByteLevel."""
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        return None
    if steps[1].get("use_regex", True) or steps[1].get("add_prefix_space"):
        return None
    return SPLIT_REGEXES.get((steps[0].get("pattern") or {}).get("Regex", ""))


def _gguf(
    model_dir: Path,
    out: Path,
    quant: str,
    version: ModelVersion | None,
    pre: str | None,
    remote: dict | None = None,
) -> Export:
    if quant not in CONVERTER_QUANTS + QUANTIZE_KINDS:
        kinds = ", ".join(CONVERTER_QUANTS + QUANTIZE_KINDS)
        raise ExportError(f"--quant {quant!r} for gguf: expected one of {kinds}")
    if quant in QUANTIZE_KINDS and find_quantize() is None:
        raise ExportError(
            f"--quant {quant} needs llama.cpp's llama-quantize on PATH (`make llama-server` builds"
            " it), or use f16, bf16 or q8_0, which the converter writes itself"
        )
    try:
        script = llamacpp.converter()
    except llamacpp.ConverterMissing as err:
        raise ExportError(str(err)) from err
    stem = f"{version.name}-{version.version}" if version else model_dir.name
    final = out / f"{stem}-{quant}.gguf"
    first = quant if quant in CONVERTER_QUANTS else "f16"
    staged = out / f".{final.name}.{os.getpid()}.tmp"
    try:
        try:
            _convert(script, model_dir, staged, first, pre or known_pre_tokenizer(model_dir), out)
        except ExportError as err:
            if remote:  # the converter maps config.json's architecture, never runs its code
                raise ExportError(f"{err}\n{REMOTE_GGUF}") from err
            raise
        if quant in QUANTIZE_KINDS:
            _quantize(staged, quant)
        os.replace(staged, final)
    finally:
        staged.unlink(missing_ok=True)
    result = Export("gguf", final, file_sha256(final), final.stat().st_size, quant)
    try:
        result.files.append(_modelfile(model_dir, final, version, remote))
    except ValueError as err:  # the GGUF stands on its own; say why it has no Modelfile
        result.notes.append(f"no Modelfile for {final.name}: {err}")
    return result


REMOTE_GGUF = (
    "This model runs its own modeling code (remote code); llama.cpp's converter reads only"
    " config.json (trust_remote_code=False) and converts an architecture only where llama.cpp"
    " itself supports it: serve it with --engine transformers or vllm instead."
)


def _convert(script: Path, model_dir: Path, target: Path, outtype: str, pre, out: Path) -> None:
    """Run the converter in a child process (its log in out/convert.log)."""
    command = [sys.executable, "-m", "kollm.cluster.gguf_convert", str(script), str(model_dir)]
    command += ["--outtype", outtype, "--outfile", str(target)]
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter's own gguf-py, never an installed one
    if pre:
        env["KOLLM_GGUF_PRE"] = pre
    log.info("export: llama.cpp converter %s -> %s (%s)", model_dir, target.name, outtype)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    (out / "convert.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise ExportError(_explain(done.stdout + done.stderr, out / "convert.log"))


def _explain(output: str, log_path: Path) -> str:
    """The converter's failure as a user can act on it."""
    if "BPE pre-tokenizer was not recognized" in output:
        hash_line = next((x for x in output.splitlines() if "chkhsh:" in x), "")
        return (
            "llama.cpp's converter does not know this tokenizer's BPE pre-tokenizer"
            f" ({hash_line.split('chkhsh:')[-1].strip() or 'hash unknown'}). If it splits text"
            " as one llama.cpp implements, name it: --pre-tokenizer llama-bpe | qwen2 | gpt-2 |"
            " ... (a wrong name tokenises differently from transformers); otherwise a newer"
            f" llama.cpp may know it: KOLLM_LLAMACPP_DIR=<llama.cpp checkout>. Log: {log_path}"
        )
    unsupported = [x for x in output.splitlines() if "is not supported" in x]
    if unsupported:
        return f"llama.cpp cannot convert this model: {unsupported[-1].strip()}. Log: {log_path}"
    tail = "\n".join(output.strip().splitlines()[-5:])
    return f"llama.cpp's converter failed:\n{tail}\nLog: {log_path}"


def _quantize(path: Path, quant: str) -> None:
    quantized = path.with_name(path.name + ".q")
    command = [str(find_quantize()), str(path), str(quantized), quant.upper()]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ExportError(f"llama-quantize {quant} failed: {done.stderr.strip()[-400:]}")
        os.replace(quantized, path)
    finally:
        quantized.unlink(missing_ok=True)


def _modelfile(
    model_dir: Path, gguf: Path, version: ModelVersion | None, remote: dict | None = None
) -> Path:
    from transformers import AutoConfig, AutoTokenizer

    from kollm.cluster.modelfile import recipe_params, write_modelfile

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **(remote or {}))
    config = AutoConfig.from_pretrained(str(model_dir), **(remote or {}))
    context = getattr(config, "max_position_embeddings", None)
    params = recipe_params(version.recipe_text if version else None, context)
    return write_modelfile(gguf.parent, gguf, tokenizer, params)
