"""LLM-as-judge over any OpenAI-compatible endpoint (a vLLM or kollm server on the site, or a
gateway): single-answer grading (1-10, a Korean rubric in the style of LogicKor's categories,
with a reference answer when there is one) and pairwise comparison run in both orders (a
verdict that flips with the order is a tie). Calls are cached in the shared store by their
content, so a rerun costs nothing; an unparseable verdict is recorded as such, never as a
score. Agreement with people is Cohen's kappa."""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from kollm.endpoint import EndpointCache, EndpointClient, EndpointError

# single-answer grading lives below eval so that training can grade too (train.eval_generation)
from kollm.grading import (  # noqa: F401 (kollm judge, the gate and the tests import them here)
    _MARKUP,
    CATEGORIES,
    RUBRIC,
    SYSTEM,
    Grade,
    JudgeEndpoint,
    grade,
    grading_messages,
    parse_score,
)

JudgeError = EndpointError
JudgeCache = EndpointCache
JudgeClient = EndpointClient


# --- verdict parsing -------------------------------------------------------------------------

_VERDICT = [
    re.compile(r"\[\[\s*(A|B|C|tie|무승부|동점)\s*\]\]", re.I),
    re.compile(r"(?:판정|verdict|winner|승자|결과)\s*[:：=]?\s*(A|B|tie|무승부|동점)\b", re.I),
]


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from `[[A]]` or `판정: B`; None when there is none."""
    clean = _MARKUP.sub("", text)
    for pattern in _VERDICT:
        found = pattern.findall(clean)
        if found:
            value = found[-1].upper()
            return value if value in ("A", "B") else "tie"
    return None


# --- prompts ---------------------------------------------------------------------------------


def pairwise_messages(
    question: str, first: str, second: str, reference: str | None = None
) -> list[dict[str, str]]:
    parts = [f"[질문]\n{question}"]
    if reference:
        parts.append(f"[참고 답변]\n{reference}")
    parts += [
        f"[답변 A]\n{first}",
        f"[답변 B]\n{second}",
        f"[평가 기준]\n{RUBRIC}\n- 답변의 순서로 판단하지 마세요.",
        "두세 문장으로 비교한 뒤, 마지막 줄에 `판정: A`, `판정: B` 또는 `판정: 무승부`만 쓰세요.",
    ]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


# --- pairwise --------------------------------------------------------------------------------


@dataclass
class PairVerdict:
    id: str
    winner: str | None  # "a", "b", "tie"; None when a verdict did not parse
    flipped: bool  # the two orders disagreed: position bias, counted as a tie
    verdicts: list[str | None]  # as given: A-first order, then B-first (mapped to a/b)
    longer: str  # "a" or "b": which answer is longer (for the length bias)


def _mapped(verdict: str | None, swapped: bool) -> str | None:
    if verdict is None or verdict == "tie":
        return verdict
    if not swapped:
        return verdict.lower()
    return "b" if verdict == "A" else "a"


def compare(client: JudgeClient, rows: list[dict[str, Any]], run: int = 0) -> list[PairVerdict]:
    """Each row (`question`, `answer_a`, `answer_b`, optional `reference`, `id`) judged twice,
    with the answers in both orders."""
    jobs = [(i, swapped) for i in range(len(rows)) for swapped in (False, True)]

    def one(job: tuple[int, bool]) -> str | None:
        i, swapped = job
        row = rows[i]
        first, second = (
            (row["answer_b"], row["answer_a"]) if swapped else (row["answer_a"], row["answer_b"])
        )
        messages = pairwise_messages(row["question"], first, second, row.get("reference"))
        return _mapped(parse_verdict(client.complete(messages, run, step="pair")), swapped)

    results = client.map(one, jobs)
    verdicts = []
    for i, row in enumerate(rows):
        v = results[2 * i : 2 * i + 2]
        if None in v:
            winner, flipped = None, False
        elif v[0] == v[1]:
            winner, flipped = v[0], False
        else:
            winner, flipped = "tie", "tie" not in v
        longer = "a" if len(row["answer_a"]) >= len(row["answer_b"]) else "b"
        verdicts.append(PairVerdict(str(row.get("id", i)), winner, flipped, v, longer))
    return verdicts


# --- summaries -------------------------------------------------------------------------------


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    import numpy as np

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rx, ry = (np.argsort(np.argsort(v)).astype(float) for v in (xs, ys))
    return round(float(np.corrcoef(rx, ry)[0, 1]), 4)


@dataclass
class GradeSummary:
    rows: int
    mean_score: float | None
    unparseable: int
    mean_spread: float | None
    length_bias: float | None  # Spearman correlation of answer length and score
    grades: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise_grades(grades: list[Grade]) -> GradeSummary:
    scored = [g for g in grades if g.score is not None]
    spreads = [g.spread for g in scored if g.spread is not None]
    return GradeSummary(
        rows=len(grades),
        mean_score=round(statistics.fmean(g.score for g in scored), 4) if scored else None,
        unparseable=sum(g.unparseable for g in grades),
        mean_spread=round(statistics.fmean(spreads), 4) if spreads else None,
        length_bias=_spearman([g.answer_chars for g in scored], [g.score for g in scored]),
        grades=[{**asdict(g), "unparseable": g.unparseable} for g in grades],
    )


@dataclass
class PairSummary:
    rows: int
    wins_a: int
    wins_b: int
    ties: int
    unparseable: int
    win_rate_a: float | None  # (wins + ties / 2) / judged
    flip_rate: float | None  # share of judged pairs whose verdict flipped with the order
    longer_wins: float | None  # share of decided pairs the longer answer won
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise_pairs(verdicts: list[PairVerdict]) -> PairSummary:
    judged = [v for v in verdicts if v.winner is not None]
    decided = [v for v in judged if v.winner in ("a", "b")]
    wins = {k: sum(v.winner == k for v in judged) for k in ("a", "b", "tie")}
    return PairSummary(
        rows=len(verdicts),
        wins_a=wins["a"],
        wins_b=wins["b"],
        ties=wins["tie"],
        unparseable=len(verdicts) - len(judged),
        win_rate_a=round((wins["a"] + wins["tie"] / 2) / len(judged), 4) if judged else None,
        flip_rate=round(sum(v.flipped for v in judged) / len(judged), 4) if judged else None,
        longer_wins=(
            round(sum(v.winner == v.longer for v in decided) / len(decided), 4) if decided else None
        ),
        verdicts=[asdict(v) for v in verdicts],
    )


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items; None with no items, 1.0 when
    both gave one same label throughout."""
    if not first or len(first) != len(second):
        return None
    n = len(first)
    labels = set(first) | set(second)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    expected = sum((first.count(k) / n) * (second.count(k) / n) for k in labels)
    if expected == 1:
        return 1.0
    return round((observed - expected) / (1 - expected), 4)


def judge_label(score: float | None, threshold: float = 6.0) -> str | None:
    """A score as a people's thumbs: good at `threshold` or above."""
    if score is None:
        return None
    return "good" if score >= threshold else "bad"
