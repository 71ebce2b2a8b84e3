import pytest

from kollm.text.morphemes import get_tokenizer

TEXT = "#Person1#: 안녕하세요, #Person2#님. 내일 #PhoneNumber#로 연락주세요."


@pytest.mark.parametrize("name", ["mecab", "kiwi", "whitespace"])
def test_placeholders_are_single_tokens(name):
    tokens = get_tokenizer(name).tokenize(TEXT)
    for placeholder in ("#Person1#", "#Person2#", "#PhoneNumber#"):
        assert placeholder in tokens


def test_mecab_splits_particles_and_keeps_surface_forms():
    tokens = get_tokenizer("mecab").tokenize("저는 학생입니다")
    assert tokens[:2] == ["저", "는"]
    assert "".join(tokens) == "저는학생입니다"


def test_whitespace_tokenizer_splits_on_spaces_only():
    assert get_tokenizer("whitespace").tokenize("저는 #Person1#의 친구") == [
        "저는",
        "#Person1#",
        "의",
        "친구",
    ]


def test_unknown_tokenizer_is_an_error():
    with pytest.raises(ValueError, match="unknown tokenizer 'spacy'"):
        get_tokenizer("spacy")
