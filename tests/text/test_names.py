"""Person names are de-identified; ordinary words that start with a surname are not."""

import json
from collections import Counter

import pytest

from kollm.text.names import mask_names, normalise_masks
from kollm.text.pii import mask_pii

CASES = [
    json.loads(line)
    for line in (
        __import__("pathlib").Path(__file__).parents[2] / "bench" / "cases" / "names.jsonl"
    )
    .read_text(encoding="utf-8")
    .splitlines()
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("남궁민 씨는 내일 오세요.", "#Name# 씨는 내일 오세요."),
        ("제갈성렬 과장이 말했다", "#Name# 과장이 말했다"),
        ("담당자 황보지원입니다.", "담당자 #Name#입니다."),
        ("성명: 홍길동", "성명: #Name#"),
        ("윤하린: 네, 예약할게요.", "#Name#: 네, 예약할게요."),
        ("김민수 고객님, 안녕하세요.", "#Name# 고객님, 안녕하세요."),
        ("민수 씨, 이것 좀 봐요.", "#Name# 씨, 이것 좀 봐요."),
        ("박 대리, 보고서요.", "#Name# 대리, 보고서요."),
        ("어제 박지성을 만났다.", "어제 #Name#을 만났다."),
        ("#Person1#: 태민 씨, 바빠요?", "#Person1#: #Name# 씨, 바빠요?"),
    ],
)
def test_names_in_their_usual_places_are_masked(text, expected):
    counts: Counter = Counter()
    assert mask_names(text, counts) == expected
    assert counts["name"] == expected.count("#Name#")


@pytest.mark.parametrize(
    "text",
    [
        "이상하게 조용하네요.",
        "김밥 한 줄 주세요.",
        "박수를 쳐 주세요.",
        "정말 고마워요.",
        "조금만 기다려요.",
        "한동안 바빴어요.",
        "강아지가 짖어요.",
        "유학을 갔어요.",
        "신문을 봤어요.",
        "임시 번호입니다.",
        "고객님, 잠시만요.",
        "선생님께 물어봐요.",
        "아저씨, 시청 가요?",
        "하느님께 기도했다.",
        "형님, 오랜만이에요.",
        "이사장님 말씀입니다.",
        "조금 과장된 표현이에요.",
        "씨앗을 심었어요.",
        "영수증을 지참해 고객센터에 요청하세요.",  # a verb form before a title-like word
        "#Person1#: 안녕하세요.",
    ],
)
def test_ordinary_words_starting_with_a_surname_are_kept(text):
    assert mask_names(text, Counter()) == text


def test_recall_and_decoys_on_the_bench_case_file():
    names = [c for c in CASES if c["names"]]
    decoys = [c for c in CASES if not c["names"]]
    assert len(names) >= 50 and len(decoys) >= 50
    found = sum(
        "#Name#" in (out := mask_pii(c["text"]).text)
        and c["names"][0] not in out.replace("#Name#", "")
        for c in names
    )
    kept = sum(mask_pii(c["text"]).text == c["text"] for c in decoys)
    assert found / len(names) >= 0.95
    assert kept / len(decoys) >= 0.98


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#Person1 #: 안녕", "#Person1#: 안녕"),
        ("# Person2#: 네", "#Person2#: 네"),
        ("＃Person1＃: 네", "#Person1#: 네"),
        ("○○○ 고객님", "#Name# 고객님"),
        ("김○○ 씨가 왔어요", "#Name# 씨가 왔어요"),
        ("OOO 님의 요청", "#Name# 님의 요청"),
        ("*** 씨에게 전달", "#Name# 씨에게 전달"),
    ],
)
def test_broken_and_foreign_masks_become_canonical_and_are_counted(text, expected):
    counts: Counter = Counter()
    assert normalise_masks(text, counts) == expected
    assert counts["mask_fixed"] == 1
    assert normalise_masks("#Person1#: ***", Counter()) == "#Person1#: ***"  # a rule, not a mask


def test_the_data_stage_counts_names_and_fixed_masks(tmp_path):
    from kollm.data.clean import clean_file
    from tests.conftest import read_jsonl, write_jsonl

    rows = [{"text": "담당자 김유나입니다. #Person1 #에게 연락 주세요."}, {"text": "정말 좋아요."}]
    summary = clean_file(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl", "text")
    pii = next(s for s in summary["steps"] if s["step"] == "pii")
    assert pii["changes"]["name"] == 1 and pii["changes"]["mask_fixed"] == 1
    assert [r["text"] for r in read_jsonl(tmp_path / "out.jsonl")] == [
        "담당자 #Name#입니다. #Person1#에게 연락 주세요.",
        "정말 좋아요.",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("○○○님, 서류가 준비되었습니다.", "#Name#님, 서류가 준비되었습니다."),
        ("김○○님께서 오셨어요.", "#Name#님께서 오셨어요."),
        ("○○○씨가 다시 온대요.", "#Name#씨가 다시 온대요."),
        ("○○○은 3층에 있어요.", "#Name#은 3층에 있어요."),
        ("김OO 주무관에게 이관", "#Name# 주무관에게 이관"),
        ("OOO고객님, 감사합니다.", "#Name#고객님, 감사합니다."),
        ("홍○동 씨, 12번입니다.", "#Name# 씨, 12번입니다."),
    ],
)
def test_masks_joined_to_particles_and_honorifics_become_one_name(text, expected):
    result = mask_pii(text)
    assert result.text == expected
    assert result.counts["mask_fixed"] == 1 and result.counts["name"] == 0


@pytest.mark.parametrize(
    "text",
    [
        "배경색은 #FF0000 #00FF00 중에서 고르세요.",
        "x = 1  # note #",
        "total += 1  # 합계 #",
        "# TODO XXX 고치기, 비밀번호 *** 입력",  # not a name before a title
        "색상 # FFF # 과 #000",
        "○○시청과 ○○은행, ○○도 지역, ○○로 12",  # places left masked by others, not people
    ],
)
def test_text_that_is_not_a_mask_is_kept_byte_identical(text):
    counts: Counter = Counter()
    assert normalise_masks(text, counts) == text and not counts
    assert mask_pii(text).text == text


@pytest.mark.parametrize(
    "text",
    [
        "담당자 주무관에게 문의하세요.",
        "담당자 주무관입니다.",
        "저는 주무관입니다.",
        "계약자 배우자도 서명해야 합니다.",
        "강서구 보건소에서 접종하세요.",  # MeCab reads the district as a person here
        "전산실 과장님께 여쭤보세요.",
        "민원실 주무관께 전달했습니다.",
        "이번 주 과장님 회의는 취소입니다.",
        "소장님께 보고하고 국장님이 승인했습니다.",
        "이용자 약관에 동의해 주세요.",  # MeCab has 이용자 as a person too
        "도지사 발표가 있었습니다.",  # MeCab reads 도지사 here as a person
        "주치의 선생님과 은행원 씨가 오셨어요.",
    ],
)
def test_role_kinship_and_office_words_are_never_names(text):
    assert mask_pii(text).text == text


def test_a_full_name_the_dictionary_knows_only_as_a_proper_noun_is_masked_before_a_title():
    text = "조민서 환자분, 들어오세요."  # MeCab: NNP of no kind, neither a person nor a place
    assert mask_names(text, Counter()) == "#Name# 환자분, 들어오세요."
