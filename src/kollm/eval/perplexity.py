"""Perplexity of a causal LM on answers given their prompts (prompt tokens are not scored)."""

from __future__ import annotations

import math


def answer_perplexity(
    model, tokenizer, prompts: list[str], answers: list[str], device: str
) -> float:
    """exp(mean negative log-likelihood per answer token), one example at a time."""
    import torch

    total_nll, total_tokens = 0.0, 0
    model.eval()
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not answer_ids:
            continue
        ids = torch.tensor([prompt_ids + answer_ids], device=device)  # (1, P + A)
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100  # score the answer only
        with torch.inference_mode():
            loss = model(input_ids=ids, labels=labels).loss  # mean NLL over the A answer tokens
        total_nll += float(loss) * len(answer_ids)
        total_tokens += len(answer_ids)
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")
