"""Multi-turn Korean service conversations (seeded): the later answers depend on the first turn.

A resident names their district and the service they need in the first turn; the second answer
(where to go, what to bring) can only be right if the model keeps that first turn in view.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

_DISTRICTS = ["마포구", "강남구", "서초구", "송파구", "노원구", "은평구", "관악구", "동작구"]
_SERVICES = [
    ("전입신고", "민원여권과", "신분증과 임대차 계약서"),
    ("여권 발급", "민원여권과", "신분증과 여권용 사진 한 장"),
    ("주차 허가", "주차관리과", "차량 등록증과 주민등록등본"),
    ("대형 폐기물 배출", "청소행정과", "배출 신고 필증"),
    ("건강검진 예약", "보건소 건강증진과", "신분증과 건강보험증"),
    ("청년 월세 지원", "복지정책과", "임대차 계약서와 소득 증빙 서류"),
]
_SYSTEM = "당신은 구청 민원 안내를 돕는 친절한 상담원입니다."
_OPENINGS = [
    "안녕하세요, {d}에 사는데요. {s} 때문에 문의드려요.",
    "{d} 주민입니다. {s} 하려고 해요.",
]
_WHERE = ["어디로 가면 되나요?", "어느 부서로 가야 하죠?", "담당 부서가 어디예요?"]
_WHAT = ["뭘 챙겨 가야 하나요?", "준비물이 뭐예요?", "필요한 서류가 있나요?"]


def _conversation(rng: random.Random) -> list[dict[str, str]]:
    district = rng.choice(_DISTRICTS)
    service, office, documents = rng.choice(_SERVICES)
    turns = [
        {"role": "user", "content": rng.choice(_OPENINGS).format(d=district, s=service)},
        {"role": "assistant", "content": f"네, {district} {service} 안내해 드리겠습니다."},
        {"role": "user", "content": rng.choice(_WHERE)},
        {"role": "assistant", "content": f"{district}청 {office}로 방문하시면 됩니다."},
    ]
    if rng.random() < 0.5:
        turns += [
            {"role": "user", "content": rng.choice(_WHAT)},
            {"role": "assistant", "content": f"{service}에는 {documents}가 필요합니다."},
        ]
    if rng.random() < 0.3:
        turns.insert(0, {"role": "system", "content": _SYSTEM})
    return turns


def generate_chats(n: int, seed: int) -> Iterator[dict[str, Any]]:
    """`n` conversations (`messages` in OpenAI's format), each ending with the assistant."""
    rng = random.Random(seed)
    for i in range(n):
        yield {"id": f"chat_{i:05d}", "messages": _conversation(rng)}
