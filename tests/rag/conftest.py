"""Three short Korean passages as files, the collection most retrieval tests index."""

from __future__ import annotations

import pytest

PASSAGES = {
    "moving.txt": "전입신고는 이사한 날부터 14일 안에 해야 합니다. "
    "주민센터나 정부24에서 할 수 있습니다.",
    "passport.txt": "여권을 잃어버리면 가까운 구청 민원여권과에 분실 신고를 합니다.",
    "parking.txt": "거주자 우선 주차 신청은 매월 1일부터 5일까지 받습니다.",
}


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in PASSAGES.items():
        (root / name).write_text(text, encoding="utf-8")
    return root
