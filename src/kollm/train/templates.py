"""Fitting examples into `train.max_length`: prompts are cut from the start, never the answer."""

from __future__ import annotations


def fit_prompt(tokenizer, prompt: str, answer_tokens: int, max_length: int) -> str:
    """Cut the start of `prompt` so that it and an answer of `answer_tokens` fit `max_length`.

    TRL truncates prompt + answer from the end, which would cut the answer (the only part with a
    loss) first; a long dialogue should lose its opening turns instead.
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    room = max_length - answer_tokens - 2  # BOS/EOS
    if len(ids) <= room:
        return prompt
    return tokenizer.decode(ids[-max(room, 1) :])


def fit_examples(
    tokenizer, rows: list[dict[str, str]], answer_keys: tuple[str, ...], max_length: int
):
    """`fit_prompt` over rows with a `prompt` and one or more answers."""
    fitted = []
    for row in rows:
        longest = max(
            len(tokenizer(row[k], add_special_tokens=False)["input_ids"]) for k in answer_keys
        )
        fitted.append({**row, "prompt": fit_prompt(tokenizer, row["prompt"], longest, max_length)})
    return fitted
