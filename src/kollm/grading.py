"""Single-answer grading by an LLM judge over an OpenAI-compatible endpoint: the question, the
answer (and a reference answer when there is one) scored 1-10 against a Korean rubric in the
style of LogicKor's categories; an unparseable verdict is recorded as such, never as a score.
Below both `kollm.eval` (`kollm judge`, the gate) and `kollm.train` (`train.eval_generation`
with `metric: judge`), which may not import each other."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any

from kollm.endpoint import Endpoint, EndpointClient

CATEGORIES = {
    "reasoning": "추론: 논리의 단계가 맞는지, 결론이 전제에서 나오는지 보세요.",
    "math": "수학: 계산과 최종 답이 맞는지 보세요. 풀이가 길어도 답이 틀리면 낮은 점수입니다.",
    "writing": "글쓰기: 요구한 형식, 분량, 어조를 지켰는지와 글의 짜임을 보세요.",
    "coding": "코딩: 코드가 요구대로 동작하는지, 오류나 빠진 경우가 없는지 보세요.",
    "understanding": "이해: 주어진 글이나 질문의 뜻을 바르게 이해하고 답했는지 보세요.",
    "grammar": "문법: 맞춤법, 띄어쓰기, 문법 설명이 정확한지 보세요.",
    "general": "일반: 질문에 정확하고 도움이 되게 답했는지 보세요.",
}
RUBRIC = (
    "- 질문이 요구한 것을 모두 지켰는지 하나씩 확인하세요.\n"
    "- 답변이 길다고 점수를 더 주지 마세요.\n"
    "- 한국어로 물었는데 한국어로 답하지 않았으면 0점입니다.\n"
    "- 사실과 다른 내용이 있으면 크게 깎으세요."
)
SYSTEM = "당신은 한국어 답변을 공정하고 엄격하게 평가하는 심사위원입니다."


def JudgeEndpoint(url: str, model: str, **settings: Any) -> Endpoint:
    """The judge's endpoint: its key from $KOLLM_JUDGE_API_KEY (then $OPENAI_API_KEY)."""
    return Endpoint(url, model, key_env="KOLLM_JUDGE_API_KEY", **settings)


# --- verdict parsing -------------------------------------------------------------------------

_MARKUP = re.compile(r"[*_`#>]")
_SCORE = [
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(
        r"(?:점수|평점|score|rating)\s*(?:는|은)?\s*[:：=]?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10|점)?",
        re.I,
    ),
]


def parse_score(text: str) -> float | None:
    """The judge's score (0-10): its last `[[N]]`, or else its last `점수: N` / `Score: N`
    (markdown ignored); None when there is none or it is out of range."""
    clean = _MARKUP.sub("", text)
    for pattern in _SCORE:
        found = pattern.findall(clean)
        if found:
            value = float(found[-1])
            return value if 0 <= value <= 10 else None
    return None


# --- prompts ---------------------------------------------------------------------------------


def grading_messages(
    question: str, answer: str, reference: str | None = None, category: str = "general"
) -> list[dict[str, str]]:
    rubric = CATEGORIES.get(category, CATEGORIES["general"])
    parts = [f"[질문]\n{question}"]
    if reference:
        parts.append(f"[참고 답변]\n{reference}")
    parts += [
        f"[평가할 답변]\n{answer}",
        f"[평가 기준]\n{rubric}\n{RUBRIC}",
        "먼저 두세 문장으로 근거를 쓰고, 마지막 줄에 `점수: N` (1~10의 정수)만 쓰세요.",
    ]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


# --- grading ---------------------------------------------------------------------------------


@dataclass
class Grade:
    id: str
    score: float | None  # the median of the parsed runs; None when none parsed
    scores: list[float | None]
    spread: float | None  # max - min of the parsed runs
    answer_chars: int

    @property
    def unparseable(self) -> int:
        return sum(s is None for s in self.scores)


def grade(client: EndpointClient, rows: list[dict[str, Any]], runs: int = 1) -> list[Grade]:
    """Each row (`question`, `answer`, optional `reference`, `category`, `id`) graded `runs`
    times; its score is the median of the runs that parsed."""
    jobs = [(i, run) for i in range(len(rows)) for run in range(runs)]

    def one(job: tuple[int, int]) -> float | None:
        i, run = job
        row = rows[i]
        messages = grading_messages(
            row["question"], row["answer"], row.get("reference"), row.get("category", "general")
        )
        return parse_score(client.complete(messages, run, step="grade"))

    results = client.map(one, jobs)
    grades = []
    for i, row in enumerate(rows):
        scores = results[i * runs : (i + 1) * runs]
        parsed = [s for s in scores if s is not None]
        grades.append(
            Grade(
                str(row.get("id", i)),
                statistics.median(parsed) if parsed else None,
                scores,
                (max(parsed) - min(parsed)) if parsed else None,
                len(row["answer"]),
            )
        )
    return grades
