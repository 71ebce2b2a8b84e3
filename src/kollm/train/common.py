"""What every training method shares: device choice, loading, checkpoints, loss log, saving.

Checkpoints are written by the Trainer into `checkpoint-N/`; only once it returns does
`CheckpointMarker` add `KOLLM_COMPLETE` (written under a temporary name, then renamed). Resume
takes the newest checkpoint with that marker, so a run killed mid-save is never resumed from a
half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kollm.config import ModelConfig, Recipe
from kollm.data.io import atomic_path, write_json
from kollm.prompts import PromptFormat, recipe_format, save_format
from kollm.remote import base_kwargs, dir_kwargs, is_hub_id, remote_record, save_remote

COMPLETE_MARKER = "KOLLM_COMPLETE"
log = logging.getLogger("kollm.train")


@dataclass
class TrainResult:
    model_dir: Path
    train_dir: Path
    method: str
    base_model: str
    global_step: int
    losses: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None
    is_adapter: bool = False
    processes: int | None = None  # that trained together; unset: this process's WORLD_SIZE

    def summary(self) -> dict[str, Any]:
        train = [entry["loss"] for entry in self.losses if "loss" in entry]
        return {
            "model_dir": str(self.model_dir),
            "method": self.method,
            "base_model": self.base_model,
            "global_step": self.global_step,
            "first_loss": train[0] if train else None,
            "last_loss": train[-1] if train else None,
            "resumed_from": self.resumed_from,
            "is_adapter": self.is_adapter,
            # torchrun, accelerate and Ray Train set WORLD_SIZE in each process
            "processes": self.processes or int(os.environ.get("WORLD_SIZE", "1")),
        }


def cpu_has_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (AMX or AVX-512 BF16); without
    it PyTorch falls back to a reference bf16 GEMM that is several times slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))


def precision_flags(precision: str = "auto") -> dict[str, Any]:
    """Every precision flag of the Trainer set explicitly: TRL's configs turn bf16 on when it
    is left unset, which on a CPU without bf16 hardware trains several times slower."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("train.precision fp16 needs a CUDA GPU; use fp32 or bf16 on the CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not cuda}


def device_settings(precision: str = "auto") -> dict[str, Any]:
    """The device and precision flags of a run; the same recipe runs on a CPU or a GPU."""
    return precision_flags(precision)


def packing_strategy(choice: str) -> str:
    """bfd packs whole examples into one padding-free row; only FlashAttention keeps that
    row's attention per example, so elsewhere fixed blocks (`wrapped`) are faster."""
    if choice != "auto":
        return choice
    import importlib.util

    import torch

    has_flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    return "bfd" if has_flash else "wrapped"


def load_kwargs(cfg: ModelConfig, source: str | Path | None = None) -> dict[str, Any]:
    """from_pretrained kwargs for the recipe's base, or for `source` (a dir trained from
    it): `model.trust_remote_code` and the pinned `model.revision`; a local dir whose
    modeling code would run without the flag is refused by name."""
    source = str(source or cfg.base)
    if Path(source).is_dir():
        return dir_kwargs(Path(source), cfg.trust_remote_code)
    return base_kwargs(source, cfg.trust_remote_code, cfg.revision)


def _needs_remote(cfg: ModelConfig) -> bool:
    """Whether the weights trained from the base need remote code to load again."""
    if not cfg.trust_remote_code or cfg.base == "scratch":
        return False
    return is_hub_id(cfg.base) or remote_record(Path(cfg.base)) is not None


def torch_dtype(cfg: ModelConfig):
    """The weights dtype of `model.dtype` (auto: bf16 on a bf16 GPU, else fp32)."""
    import torch

    if cfg.dtype == "auto":
        return (
            torch.bfloat16
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else torch.float32
        )
    return getattr(torch, cfg.dtype)


def common_args(recipe: Recipe, out_dir: Path, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments shared by the Trainer subclasses (SFTConfig, Seq2SeqTrainingArguments)."""
    t = recipe.train
    assert t is not None
    return {
        "output_dir": str(out_dir / "checkpoints"),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.learning_rate,
        "warmup_steps": t.warmup_ratio,  # a float below 1 is a share of the steps
        "weight_decay": t.weight_decay,
        "lr_scheduler_type": "cosine",
        "seed": t.seed,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "eval_strategy": ("steps" if t.eval_steps else "epoch") if has_eval else "no",
        "eval_steps": t.eval_steps,
        "report_to": [],
        "dataloader_num_workers": 0,
        "train_sampling_strategy": "group_by_length" if t.group_by_length else "random",
        "disable_tqdm": True,  # RichProgressCallback draws the bar instead
        # Prefix tuning feeds its virtual keys/values through the cache that checkpointing
        # turns off, so its first step fails with checkpointing on.
        "activation_checkpointing": checkpointing(recipe)
        and not (t.lora.enabled and t.lora.method == "prefix_tuning"),
        **device_settings(t.precision),
        **_strategy_args(recipe),
    }


def _strategy_args(recipe: Recipe) -> dict[str, Any]:
    if recipe.train.distributed.launcher != "ray":
        return {}
    from kollm.train.ray_launcher import strategy_args

    return strategy_args(recipe)


def checkpointing(recipe: Recipe) -> bool:
    """`train.gradient_checkpointing`, or when unset: off on the CPU (host memory holds the
    activations of any model a CPU trains in reasonable time, and recomputing them costs a
    third of the step), on a GPU (TRL's default; card memory is what runs out)."""
    import torch

    t = recipe.train
    if t.gradient_checkpointing is not None:
        return t.gradient_checkpointing
    return torch.cuda.is_available()


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has written all of it."""

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            with atomic_path(ckpt / COMPLETE_MARKER) as tmp:
                tmp.write_text(json.dumps({"step": state.global_step}))
        return control


class LossLogger(TrainerCallback):
    """Appends each logged train/eval loss to `loss.jsonl` (resumed runs continue the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        keep = ("loss", "eval_loss", "learning_rate", "num_tokens", "train_runtime")
        entry = {k: v for k, v in (logs or {}).items() if k in keep}
        if entry and state.is_world_process_zero:
            entry = {"step": state.global_step, "epoch": round(state.epoch or 0, 3), **entry}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        return control


class ProgressLog(TrainerCallback):
    """A log line at the start, every `interval_s` seconds and at the end of training, so a
    run piped into a file (`make demo | tee demo.log`) shows its progress too."""

    interval_s = 5.0

    def __init__(self) -> None:
        self.started = self.last = 0.0
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last = time.monotonic()
        where = "cpu" if args.use_cpu else "cuda"
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
        log.info("train: %d steps on %s, %s", state.max_steps, where, precision)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]
        return control

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if now - self.last >= self.interval_s and state.is_world_process_zero:
            self.last = now
            self._line(state, now)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._line(state, time.monotonic())
        return control

    def _line(self, state, now: float) -> None:
        done, total = state.global_step, max(state.max_steps, 1)
        elapsed = now - self.started
        left = elapsed / done * (total - done) if done else 0.0
        loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
        log.info(
            "train: step %d/%d (%d%%)%s, %.0f s, ~%.0f s left",
            done,
            total,
            100 * done // total,
            loss,
            elapsed,
            left,
        )


def latest_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest `checkpoint-N` with the completion marker; incomplete newer ones are removed."""
    if not checkpoints.is_dir():
        return None
    found = sorted(
        (p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for ckpt in found:
        if (ckpt / COMPLETE_MARKER).exists():
            return ckpt
        shutil.rmtree(ckpt, ignore_errors=True)
    return None


def read_losses(path: Path) -> list[dict[str, Any]]:
    """The entries of a loss.jsonl."""
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def plot_losses(losses: list[dict[str, Any]], path: Path) -> None:
    """Train and eval loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(e["step"], e[key]) for e in losses if key in e]
        if points:
            ax.plot(
                *zip(*points, strict=True), marker="o" if key == "eval_loss" else None, label=label
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    _plot_scores(ax, losses)
    if ax.get_lines():  # a run shorter than logging_steps logged no loss
        ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_scores(ax, losses: list[dict[str, Any]]) -> None:
    """`train.eval_generation` scores (higher is better) on a second axis at the right."""
    keys = sorted({k for e in losses for k in e if k.startswith("eval_") and k != "eval_loss"})
    # an evaluation the judge could not grade is logged as null: a gap, not a point
    series = {k: [(e["step"], e[k]) for e in losses if e.get(k) is not None] for k in keys}
    series = {k: points for k, points in series.items() if points}
    if not series:
        return
    right = ax.twinx()
    for key, points in series.items():
        right.plot(*zip(*points, strict=True), "s--", color="tab:green", label=key[5:])
    right.set_ylabel("score")
    right.legend(loc="upper right")


def _save_model(trainer, path: Path) -> None:
    """The trainer's model; an adapter that trained the rows of added tokens saves those rows
    alone, where PEFT would save the whole resized embedding and head beside them (two
    copies of the vocabulary's weights in every adapter of a 7B base: over a gigabyte)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    configs = getattr(model, "peft_config", None) or {}
    if any(getattr(c, "trainable_token_indices", None) for c in configs.values()):
        model.save_pretrained(str(path), save_embedding_layers=False)
    else:
        trainer.save_model(str(path))


def save_final(
    trainer,
    tokenizer,
    model_dir: Path,
    fmt: PromptFormat,
    base: str | None = None,
    model: ModelConfig | None = None,
) -> None:
    """Save model, tokenizer and prompt format into a temporary dir, then swap it into place;
    a SentencePiece base's tokenizer.model goes with it (GGUF export reads it)."""
    from kollm.artifacts import keep_sentencepiece

    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save_model(trainer, tmp)
        tokenizer.save_pretrained(str(tmp))
        keep_sentencepiece(base, tmp)
        save_format(tmp, fmt)
        if model is not None and _needs_remote(model):
            save_remote(tmp, model.base, model.revision)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        tmp.rename(model_dir)
    finally:  # a failed save (a full disk) leaves no half-written model.tmp
        shutil.rmtree(tmp, ignore_errors=True)


def callbacks(train_dir: Path, extra: list[TrainerCallback] | None = None) -> list[TrainerCallback]:
    """Checkpoint markers, the loss log, progress lines, a method's `extra` ones (generation
    scores, early stopping), and on a terminal TRL's Rich bar."""
    from trl.trainer.callbacks import RichProgressCallback

    found = [
        CheckpointMarker(),
        LossLogger(train_dir / "loss.jsonl"),
        ProgressLog(),
        *(extra or []),
    ]
    return [*found, RichProgressCallback()] if sys.stderr.isatty() else found


def train_and_save(trainer, tokenizer, recipe: Recipe, method: str, resume: bool) -> TrainResult:
    """Run `trainer` (from the newest complete checkpoint when resuming, or under Ray from the
    checkpoint Ray restarted the workers from), save the model atomically, plot the loss, and
    write train_summary.json."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars; the training bar stays
    trainer.remove_callback(PrinterCallback)  # loss goes to loss.jsonl and the rich bar
    with _resume_point(trainer, resume) as checkpoint:
        _continue_losses(trainer, recipe.train_dir / "loss.jsonl", checkpoint)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_dir = recipe.train_dir
    result = TrainResult(
        model_dir=train_dir / "model",
        train_dir=train_dir,
        method=method,
        base_model=recipe.model.base,
        global_step=trainer.state.global_step,
        resumed_from=str(checkpoint) if checkpoint else None,
        is_adapter=recipe.train.lora.enabled,
    )
    result.losses = read_losses(train_dir / "loss.jsonl")
    # With torchrun, accelerate or Ray every process gets here; one writes the model and the
    # files, or the processes race each other over model.tmp.
    if trainer.is_world_process_zero():
        base = recipe.model.base if recipe.model.base != "scratch" else None
        fmt = recipe_format(recipe)
        save_final(trainer, tokenizer, result.model_dir, fmt, base, recipe.model)
        plot_losses(result.losses, train_dir / "loss.png")
        write_json(train_dir / "train_summary.json", result.summary())
    return result


@contextmanager
def _resume_point(trainer, resume: bool):
    """The checkpoint to start from: under Ray the one it restarted the workers from (Ray's
    integration joins the trainer here), else with `resume` the newest complete local one."""
    from kollm.train import ray_launcher

    if ray_launcher.in_ray_worker():
        ray_launcher.prepare(trainer)
        with ray_launcher.ray_checkpoint() as checkpoint:
            if checkpoint is None and resume:
                checkpoint = latest_complete_checkpoint(Path(trainer.args.output_dir))
            yield checkpoint
        return
    yield latest_complete_checkpoint(Path(trainer.args.output_dir)) if resume else None


def _continue_losses(trainer, path: Path, checkpoint: Path | None) -> None:
    """A fresh run starts loss.jsonl anew; a resumed one drops what was logged after its
    checkpoint (those steps run again), so the curve goes on without a repeated stretch."""
    if not trainer.is_world_process_zero():
        return
    if checkpoint is None:
        path.unlink(missing_ok=True)
        return
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    kept = [e for e in read_losses(path) if e["step"] <= state["global_step"]]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(e) + "\n" for e in kept), encoding="utf-8")
