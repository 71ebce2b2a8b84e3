"""SFTTrainer with the plain cross-entropy on the CPU.

TRL computes the loss through a fused LM head: a chunked log-prob kernel that, off Triton
devices, scores every position (the prompt's too) tile by tile in its own autograd function,
and adds entropy and top-1 metrics. On a CPU that costs time and buys nothing (its point is
not materialising the logits on a GPU). Here the backbone runs once and only the labelled
positions (the answer, for completion-only loss) go through the LM head into
`F.cross_entropy`: the same loss, normalised the same way (`num_items_in_batch`, else the
labelled tokens). Prompt learning (prompt, prefix and P-tuning), which feeds virtual tokens
through PEFT's own forward, several processes (DDP reduces gradients through the wrapper's
forward) and every GPU run keep TRL's path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer

LABEL_KEYS = ("labels", "completion_mask", "assistant_masks")


def _language_model(model):
    """The causal LM under a PEFT wrapper (its LoRA layers are in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def completion_loss(model, inputs, num_items_in_batch=None) -> torch.Tensor:
    lm = _language_model(model)
    kwargs = {k: v for k, v in inputs.items() if k not in LABEL_KEYS}
    hidden = lm.base_model(**kwargs, use_cache=False).last_hidden_state[:, :-1]
    target = inputs["labels"][:, 1:]
    mask = target != -100
    logits = lm.get_output_embeddings()(hidden[mask])
    total = F.cross_entropy(logits.float(), target[mask], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
    return total / count


class CpuSFTTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        distributed = self.accelerator.num_processes > 1  # DDP syncs through its own forward
        if return_outputs or self.args.use_cpu is False or distributed or _prompt_learning(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = completion_loss(model, inputs, num_items_in_batch)
        if model.training:  # the token count TRL logs (`num_tokens`), padding excluded
            if "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            else:
                self._total_train_tokens += int(inputs["input_ids"].numel())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return loss
