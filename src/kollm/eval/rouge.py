"""Korean morpheme ROUGE; the arithmetic lives in `kollm.text.rouge` so training (a lower
layer than eval) can score the answers it generates with the same numbers."""

from kollm.text.rouge import (
    METRICS,
    MultiRef,
    Score,
    corpus_rouge,
    lcs_length,
    rouge_l,
    rouge_n,
    score_example,
    score_tokens,
    tokenizer_for,
)

__all__ = [
    "METRICS",
    "MultiRef",
    "Score",
    "corpus_rouge",
    "lcs_length",
    "rouge_l",
    "rouge_n",
    "score_example",
    "score_tokens",
    "tokenizer_for",
]
