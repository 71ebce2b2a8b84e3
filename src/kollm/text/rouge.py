"""Korean ROUGE-1/2/L F1 on morphemes (or whitespace tokens), with several references.

The arithmetic is that of Google's rouge-score (n-gram overlap counts, LCS for ROUGE-L, F1 with
beta 1), so with the same tokens the numbers agree to 1e-6; its default tokenizer is never used
because it drops Hangul. `score` is the mean of the three F1 times 100, as the Korean
dialogue-summarisation competition reports it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Literal

from kollm.text.morphemes import get_tokenizer

METRICS = ("rouge1", "rouge2", "rougeL")
MultiRef = Literal["max", "mean"]


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    fmeasure: float


def _f1(overlap: int, n_pred: int, n_ref: int) -> Score:
    precision = overlap / n_pred if n_pred else 0.0
    recall = overlap / n_ref if n_ref else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(precision, recall, f)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(pred: Sequence[str], ref: Sequence[str], n: int) -> Score:
    """ROUGE-N precision, recall and F1 of two token lists."""
    p, r = _ngrams(pred, n), _ngrams(ref, n)
    overlap = sum(min(count, r[gram]) for gram, count in p.items())
    return _f1(overlap, sum(p.values()), sum(r.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence, one row of the DP table at a time: O(len(a) * len(b))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(pred: Sequence[str], ref: Sequence[str]) -> Score:
    """ROUGE-L (longest common subsequence) of two token lists."""
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


def score_tokens(pred: Sequence[str], ref: Sequence[str]) -> dict[str, Score]:
    """ROUGE-1/2/L F1 of a prediction against one reference."""
    return {
        "rouge1": rouge_n(pred, ref, 1),
        "rouge2": rouge_n(pred, ref, 2),
        "rougeL": rouge_l(pred, ref),
    }


def tokenizer_for(
    tokenize: str = "morpheme", morpheme_tokenizer: str = "mecab"
) -> Callable[[str], list[str]]:
    """`morpheme` -> MeCab-ko or Kiwi surface forms; `whitespace` -> split on spaces."""
    if tokenize == "whitespace":
        return get_tokenizer("whitespace").tokenize
    if tokenize == "morpheme":
        return get_tokenizer(morpheme_tokenizer).tokenize
    raise ValueError(f"unknown tokenization {tokenize!r}; use morpheme or whitespace")


def score_example(
    prediction: str,
    references: Sequence[str],
    tokenize: Callable[[str], list[str]],
    multi_ref: MultiRef = "max",
) -> dict[str, float]:
    """F1 per metric against several references: the best per metric (as rouge-score's
    `score_multi`) or their mean."""
    pred = tokenize(prediction)
    per_ref = [score_tokens(pred, tokenize(ref)) for ref in references]
    combine = max if multi_ref == "max" else fmean
    return {m: float(combine(s[m].fmeasure for s in per_ref)) if per_ref else 0.0 for m in METRICS}


def corpus_rouge(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenize: str = "morpheme",
    multi_ref: MultiRef = "max",
    morpheme_tokenizer: str = "mecab",
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Mean F1 over examples plus `score`; and the per-example scores."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    tok = tokenizer_for(tokenize, morpheme_tokenizer)
    per_example = [
        score_example(p, refs, tok, multi_ref)
        for p, refs in zip(predictions, references, strict=True)
    ]
    totals = {m: fmean(e[m] for e in per_example) if per_example else 0.0 for m in METRICS}
    totals["score"] = 100 * fmean(totals[m] for m in METRICS)
    return totals, per_example
