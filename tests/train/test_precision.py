"""Every trainer gets its precision flags explicitly: float32 on a CPU without bf16 hardware."""

from __future__ import annotations

import pytest
import torch

import kollm.train.common as common
from kollm.config import load_recipe
from kollm.train import run_training


def test_a_cpu_without_bf16_hardware_trains_in_float32(tiny_recipe, monkeypatch):
    monkeypatch.setattr(common, "cpu_has_bf16", lambda: False)
    seen = []
    from kollm.train.cpu_loss import CpuSFTTrainer as SFTTrainer  # the trainer the CPU runs

    original = SFTTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), loss.dtype, self.args.bf16, self.args.fp16))
        return loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", spy)
    run_training(load_recipe(tiny_recipe, ["train.max_steps=2"]))
    assert seen and all(s == (False, torch.float32, False, False) for s in seen)


def test_flags_follow_the_hardware_and_the_recipe(monkeypatch):
    monkeypatch.setattr(common, "cpu_has_bf16", lambda: False)
    assert common.precision_flags() == {"bf16": False, "fp16": False, "use_cpu": True}
    monkeypatch.setattr(common, "cpu_has_bf16", lambda: True)
    assert common.precision_flags()["bf16"] is True
    assert common.precision_flags("fp32")["bf16"] is False
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        common.precision_flags("fp16")


@pytest.mark.parametrize("module", ["sft", "seq2seq", "pretrain", "dpo", "rm", "rl"])
def test_every_trainer_takes_its_flags_from_common_args(module):
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(f"kollm.train.{module}"))
    assert "common_args(" in source and "bf16" not in source
