import numpy as np

from kollm.config import LengthBounds
from kollm.data.steps.dedup import (
    ExactDeduplicator,
    MinhashDeduplicator,
    MinhashSigner,
    shingle_hashes,
    shingles,
)
from kollm.data.steps.filters import HangulRatioFilter, LengthFilter, PlaceholderOnlyFilter
from kollm.data.steps.normalise import TextNormaliser
from kollm.data.steps.pii import PiiMasker

DIALOGUE = (
    "#Person1#: 안녕하세요, 다음 주 화요일에 치과 진료 예약을 하고 싶은데요.\n"
    "#Person2#: 네, 어디가 불편하신가요? 처음 방문하시는 건가요?\n"
    "#Person1#: 며칠 전부터 이가 시려서 찬 물을 마시기가 힘들어요.\n"
    "#Person2#: 화요일 오후 3시 반에 예약이 가능합니다. 괜찮으세요?\n"
    "#Person1#: 네, 그 시간으로 해 주세요. 주차는 가능한가요?\n"
    "#Person2#: 네, 건물 지하 주차장을 두 시간 무료로 쓰실 수 있어요.\n"
    "#Person1#: 감사합니다. 그럼 화요일에 뵙겠습니다."
)
# One sentence dropped and three particles changed: what near-dup dedup must catch.
NEAR = DIALOGUE.replace("#Person2#: 네, 어디가 불편하신가요? 처음 방문하시는 건가요?\n", "")
NEAR = (
    NEAR.replace("이가 시려서", "이 시려서")
    .replace("찬 물을", "찬 물")
    .replace("시간으로", "시간에")
)
OTHER = (
    "#Person1#: 이번 주말에 제주도로 2박 3일 여행을 가려고 해.\n"
    "#Person2#: 좋겠다! 숙소는 어디로 잡았어? 렌터카도 빌릴 거야?\n"
    "#Person1#: 바닷가 근처 게스트하우스를 예약했고 차는 공항에서 빌릴 거야.\n"
    "#Person2#: 귤 따기 체험도 꼭 해 봐. 요즘이 제철이래."
)


def run(step, records):
    dropped: list[dict] = []
    kept = list(step.run([dict(r) for r in records], dropped))
    return kept, dropped


def test_normaliser_changes_text_fields_only_and_counts():
    step = TextNormaliser(("dialogue", "summary"))
    kept, _ = run(
        step, [{"id": "a", "dialogue": "안녕\u200b하세요", "summary": ["요약\ufeff", "둘"]}]
    )
    assert kept == [{"id": "a", "dialogue": "안녕하세요", "summary": ["요약", "둘"]}]
    assert step.stats.changes["texts_changed"] == 2


def test_pii_masker_covers_chat_messages_and_counts_types():
    step = PiiMasker(("messages",))
    msgs = [{"role": "user", "content": "제 번호는 010-1234-5678입니다"}]
    kept, _ = run(step, [{"messages": msgs}])
    assert kept[0]["messages"][0] == {"role": "user", "content": "제 번호는 #PhoneNumber#입니다"}
    assert step.stats.changes == {"phone": 1}


def test_exact_dedup_ignores_spacing_and_names_the_first():
    step = ExactDeduplicator(("dialogue",))
    kept, dropped = run(
        step,
        [{"id": "a", "dialogue": DIALOGUE}, {"id": "b", "dialogue": DIALOGUE.replace(" ", "  ")}],
    )
    assert [r["id"] for r in kept] == ["a"]
    assert dropped[0]["reason"] == "exact_duplicate" and dropped[0]["duplicate_of"] == "a"
    assert (step.stats.seen, step.stats.kept, step.stats.dropped) == (2, 1, 1)


def test_near_dedup_catches_a_korean_near_copy_and_keeps_other_dialogues():
    step = MinhashDeduplicator(("dialogue",))
    records = [
        {"id": "a", "dialogue": DIALOGUE},
        {"id": "b", "dialogue": OTHER},
        {"id": "c", "dialogue": NEAR},
    ]
    kept, dropped = run(step, records)
    assert [r["id"] for r in kept] == ["a", "b"]
    assert dropped[0]["duplicate_of"] == "a" and dropped[0]["similarity"] >= 0.6


def test_near_dedup_works_across_batches():
    step = MinhashDeduplicator(("dialogue",), batch_size=1)
    kept, _ = run(step, [{"id": "a", "dialogue": DIALOGUE}, {"id": "c", "dialogue": NEAR}])
    assert [r["id"] for r in kept] == ["a"]


def test_signature_agreement_estimates_jaccard():
    signer = MinhashSigner(num_perm=256)
    for a, b in [(DIALOGUE, NEAR), (DIALOGUE, OTHER)]:
        sa, sb = signer.sign_many([shingle_hashes(a, 4), shingle_hashes(b, 4)])
        A, B = set(shingles(a, 4)), set(shingles(b, 4))
        assert abs(np.mean(sa == sb) - len(A & B) / len(A | B)) < 0.1


def test_length_filter_uses_chars_and_tokens():
    step = LengthFilter({"summary": LengthBounds(min_chars=3, max_tokens=3)})
    kept, dropped = run(
        step,
        [{"summary": "짧"}, {"summary": "이것은 너무 긴 요약이다"}, {"summary": "알맞은 요약"}],
    )
    assert [r["summary"] for r in kept] == ["알맞은 요약"]
    assert [d["reason"] for d in dropped] == ["summary_too_short_chars", "summary_too_long_tokens"]


def test_hangul_and_placeholder_filters():
    hangul = HangulRatioFilter(("dialogue",), 0.5)
    kept, dropped = run(
        hangul, [{"dialogue": "#Person1#: Hello there"}, {"dialogue": "#Person1#: 안녕"}]
    )
    assert [r["dialogue"] for r in kept] == ["#Person1#: 안녕"] and dropped[0][
        "hangul_ratio"
    ] == 0.0
    empty = PlaceholderOnlyFilter(("dialogue", "summary"))
    kept, dropped = run(
        empty,
        [
            {"dialogue": "안녕", "summary": "#Person1#."},
            {"dialogue": "안녕", "summary": ""},
            {"dialogue": "안녕", "summary": "인사"},
        ],
    )
    assert len(kept) == 1
    assert [d["reason"] for d in dropped] == ["summary_placeholder_only", "summary_empty"]
