import json
import os
import signal
import subprocess
import sys
import time

from kollm.config import load_recipe
from kollm.train import run_training
from kollm.train.common import COMPLETE_MARKER


def test_training_lowers_the_loss_on_a_memorisable_set(tiny_recipe):
    recipe = load_recipe(
        tiny_recipe, ["train.max_steps=60", "train.max_train_samples=4", "train.learning_rate=0.01"]
    )
    result = run_training(recipe)
    losses = [e["loss"] for e in result.losses if "loss" in e]
    assert result.global_step == 60
    assert losses[-1] < 0.5 * losses[0]
    assert (result.train_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((result.train_dir / "train_summary.json").read_text())
    assert summary["first_loss"] == losses[0] and summary["last_loss"] == losses[-1]
    assert (result.model_dir / "model.safetensors").exists()
    # Placeholders are single tokens of the scratch tokenizer.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(result.model_dir))
    assert tok.tokenize("#Person1#은")[0] == "#Person1#"


def test_lora_changes_every_trainable_parameter_and_no_frozen_one(
    tiny_recipe, local_base, monkeypatch
):
    import kollm.train.sft as sft

    seen = {}
    original = sft.train_and_save

    def spy(trainer, tokenizer, recipe, method, resume):
        model = trainer.model
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = original(trainer, tokenizer, recipe, method, resume)
        seen.update(
            {n: (p.requires_grad, before[n], p.detach()) for n, p in model.named_parameters()}
        )
        return result

    monkeypatch.setattr(sft, "train_and_save", spy)
    recipe = load_recipe(
        tiny_recipe,
        [
            f"model.base={local_base}",
            "train.lora.enabled=true",
            "train.max_steps=10",
            "train.lora.r=4",
        ],
    )
    result = run_training(recipe)
    trainable = {n: v for n, v in seen.items() if v[0]}
    frozen = {n: v for n, v in seen.items() if not v[0]}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(not before.equal(after) for _, before, after in trainable.values())
    assert all(before.equal(after) for _, before, after in frozen.values())
    assert result.is_adapter and (result.model_dir / "adapter_config.json").exists()


def kill_and_resume(recipe_path, overrides: list[str]):
    """Train in a subprocess, kill -9 it once checkpoint-10 is complete, fake a half-written
    newer checkpoint, then resume in this process; returns the resumed run's result."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "kollm", "train", str(recipe_path), *overrides]
    checkpoints = load_recipe(recipe_path).train_dir / "checkpoints"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (checkpoints / "checkpoint-10" / COMPLETE_MARKER).exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A checkpoint that was being written when the process died: no completion marker.
    (checkpoints / "checkpoint-999").mkdir()
    (checkpoints / "checkpoint-999" / "model.safetensors").write_bytes(b"half")
    result = run_training(load_recipe(recipe_path, overrides), resume=True)
    assert result.resumed_from is not None and "checkpoint-999" not in result.resumed_from
    assert int(result.resumed_from.rsplit("-", 1)[1]) >= 10
    assert not (checkpoints / "checkpoint-999").exists()
    return result


def test_killed_run_resumes_from_the_last_complete_checkpoint(tiny_recipe):
    overrides = ["train.max_steps=300", "train.save_steps=5", "train.logging_steps=50"]
    assert kill_and_resume(tiny_recipe, overrides).global_step == 300


def test_killed_dpo_run_resumes_from_the_last_complete_checkpoint(tmp_path, local_base):
    from tests.train.test_methods import preference_recipe

    path, _ = preference_recipe(tmp_path, local_base)
    overrides = ["train.max_steps=30", "train.save_steps=5", "train.logging_steps=5"]
    result = kill_and_resume(path, overrides)
    assert result.method == "dpo" and result.global_step == 30
    # The resumed run goes on from the checkpoint: it logs no step twice.
    steps = [e["step"] for e in result.losses if "loss" in e]
    assert steps == sorted(set(steps)) and steps[-1] == 30
