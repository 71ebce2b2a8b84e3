"""A small KoAlpaca-style instruction set built from the sample dialogues and short templates."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

_POLITE = [
    ("밥 먹었어?", "식사하셨어요?"),
    ("어디 가?", "어디 가세요?"),
    ("이거 좀 도와줘.", "이것 좀 도와주시겠어요?"),
    ("내일 시간 있어?", "내일 시간 있으세요?"),
    ("빨리 와.", "빨리 와 주세요."),
    ("고마워.", "감사합니다."),
    ("잘 자.", "안녕히 주무세요."),
    ("이름이 뭐야?", "성함이 어떻게 되세요?"),
    ("몇 살이야?", "연세가 어떻게 되세요?"),
    ("조용히 해.", "조용히 해 주시겠어요?"),
    ("다시 말해 줘.", "다시 말씀해 주시겠어요?"),
    ("알았어.", "알겠습니다."),
]
_FACTS = [
    ("대한민국의 수도는 어디인가요?", "대한민국의 수도는 서울입니다."),
    ("한글을 만든 사람은 누구인가요?", "한글은 조선의 세종대왕이 만들었습니다."),
    ("1년은 며칠인가요?", "평년은 365일이고 윤년은 366일입니다."),
    ("물이 끓는 온도는 몇 도인가요?", "1기압에서 물은 섭씨 100도에서 끓습니다."),
    ("주민등록등본은 어디서 발급받나요?", "주민센터나 정부24 누리집에서 발급받을 수 있습니다."),
    ("전입신고는 언제까지 해야 하나요?", "이사한 날부터 14일 안에 해야 합니다."),
]


def generate_instructions(
    dialogues: list[dict[str, Any]], n_arithmetic: int, seed: int
) -> Iterator[dict[str, Any]]:
    """Every dialogue as a summarisation task, every politeness pair and fact once, and
    `n_arithmetic` additions; shuffled with `seed`."""
    rng = random.Random(seed)
    rows = [
        {
            "instruction": "다음 대화를 한두 문장으로 요약하세요.",
            "input": d["dialogue"],
            "output": d["summary"],
        }
        for d in dialogues
    ]
    rows += [
        {"instruction": "다음 문장을 존댓말로 바꾸세요.", "input": c, "output": p}
        for c, p in _POLITE
    ]
    rows += [{"instruction": q, "input": "", "output": a} for q, a in _FACTS]
    pairs = {(rng.randint(10, 999), rng.randint(10, 999)) for _ in range(n_arithmetic)}
    rows += [
        {"instruction": f"{a}에 {b}를 더하면 얼마인가요?", "input": "", "output": f"{a + b}입니다."}
        for a, b in sorted(pairs)
    ]
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        yield {"id": f"inst_{i:05d}", **row}
