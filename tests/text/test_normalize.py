import unicodedata

import pytest

from kollm.text.normalize import (
    NormalizeOptions,
    hangul_ratio,
    is_placeholder_only,
    normalize_text,
)


def test_compatibility_jamo_are_not_folded_by_nfkc():
    # NFKC would turn the jamo pair into the syllable 큐 and change what was written.
    assert normalize_text("ㅋㅠ 웃기다") == "ㅋㅠ 웃기다"


def test_nfd_hangul_is_recomposed():
    decomposed = unicodedata.normalize("NFD", "한국어 데이터")
    assert decomposed != "한국어 데이터"
    assert normalize_text(decomposed) == "한국어 데이터"


def test_fullwidth_digits_and_latin_fold_to_ascii():
    assert normalize_text("전화 ０１０ ＡＢＣ") == "전화 010 ABC"
    kept = normalize_text("전화 ０１０", NormalizeOptions(fullwidth_to_ascii=False))
    assert kept == "전화 ０１０"


@pytest.mark.parametrize(
    "noisy",
    [
        "안녕\u200b하세요",
        "\ufeff안녕하세요",
        "안녕\x07하세요",
        "안녕\u3164하세요",
        "안녕\x1b하세요",
        "안녕\u115f하세요",
        "안녕\u0085하세요",
    ],
)
def test_invisible_and_control_characters_are_dropped(noisy):
    assert normalize_text(noisy) == "안녕하세요"


def test_newlines_and_tabs_survive_but_whitespace_runs_collapse():
    text = "#Person1#:  안녕\u00a0하세요\n#Person2#:\t네"
    assert normalize_text(text) == "#Person1#: 안녕 하세요\n#Person2#: 네"


def test_repeated_characters_are_limited_and_configurable():
    assert normalize_text("ㅋㅋㅋㅋㅋㅋ 진짜요!!!!!") == "ㅋㅋ 진짜요!!"
    assert normalize_text("ㅋㅋㅋㅋㅋㅋ", NormalizeOptions(max_repeat=3)) == "ㅋㅋㅋ"
    assert normalize_text("ㅋㅋㅋㅋㅋㅋ", NormalizeOptions(max_repeat=0)) == "ㅋㅋㅋㅋㅋㅋ"


def test_numbers_urls_and_ellipses_are_not_shortened():
    text = "1000000원 www.example.com 그래서..."
    assert normalize_text(text) == text


def test_placeholders_stay_intact():
    text = "#Person1#: 제 번호는 #PhoneNumber#예요. #Address#로 와 주세요."
    assert normalize_text(text) == text


def test_hangul_ratio_ignores_placeholders():
    assert hangul_ratio("#Person1#: 안녕하세요") == 1.0
    assert hangul_ratio("#Person1#: Hello there") == 0.0
    assert is_placeholder_only("#Person1# #Person2#.")
    assert not is_placeholder_only("#Person1#은 간다.")
