"""The CPU loss: the answer positions alone through the LM head give the same loss as the
model's own cross-entropy over every position (prompt masked), and the same gradients."""

from __future__ import annotations

import torch


def test_completion_loss_equals_the_model_s_own(local_base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kollm.train.cpu_loss import completion_loss

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(local_base)),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    ids = torch.randint(5, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100  # the prompt
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    ours = completion_loss(model, inputs)
    theirs = model(**inputs).loss
    assert torch.allclose(ours, theirs, atol=1e-5)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model(**inputs).loss.backward()
    for ours_grad, p in zip(grads, [p for p in model.parameters() if p.requires_grad], strict=True):
        assert torch.allclose(ours_grad, p.grad, atol=1e-5)
    assert torch.allclose(
        completion_loss(model, inputs, num_items_in_batch=5) * 5,
        theirs * int((labels[:, 1:] != -100).sum()),
        atol=1e-4,
    )
