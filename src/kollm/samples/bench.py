"""A small Korean multiple-choice set written for kollm (lm-eval's `kollm_ko_mc` task): which
department handles a service, who a service is for, and the polite form of a sentence, four
choices each, built from the bundled documents' facts with a seeded generator."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from kollm.samples.documents import _PAPERS, _TARGETS, SERVICES
from kollm.samples.instructions import _POLITE


def _options(rng: random.Random, right: str, pool: list[str]) -> tuple[list[str], int]:
    wrong = rng.sample(sorted({p for p in pool if p != right}), 3)
    choices = [right, *wrong]
    rng.shuffle(choices)
    return choices, choices.index(right)


def generate_mc(seed: int = 20261128) -> Iterator[dict[str, Any]]:  # write_samples: seed + 6
    rng = random.Random(seed)
    departments = [d for _, _, d in SERVICES]
    rows = []
    for _, name, dept in SERVICES:
        choices, answer = _options(rng, dept, departments)
        rows.append(
            {
                "question": f"{name} 업무를 맡는 부서는 어디인가요?",
                "choices": choices,
                "answer": answer,
            }
        )
    for casual, polite in _POLITE:
        choices, answer = _options(rng, polite, [p for _, p in _POLITE])
        rows.append(
            {"question": f"'{casual}'를 존댓말로 바꾸면?", "choices": choices, "answer": answer}
        )
    for paper in _PAPERS[:3]:
        choices, answer = _options(rng, paper, [paper, *_TARGETS])  # one list of papers
        rows.append(
            {"question": "다음 중 제출 서류의 목록은?", "choices": choices, "answer": answer}
        )
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        yield {"id": f"mc{i:03d}", **row}
