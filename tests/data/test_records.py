import pytest

from kollm.data.records import KINDS, RecordError, field_texts, key_text, map_field, validate_record


def test_chat_messages_are_checked_by_index():
    chat = KINDS["chat"]
    ok = {"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "네"}]}
    assert validate_record(ok, chat) is ok
    with pytest.raises(
        RecordError, match=r"messages\[1\]\.role: expected system, user or assistant"
    ):
        validate_record(
            {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}, chat
        )
    with pytest.raises(RecordError, match=r"messages: expected a non-empty list"):
        validate_record({"messages": []}, chat)


def test_preference_and_instruction_required_fields():
    with pytest.raises(RecordError, match="missing field 'rejected'"):
        validate_record({"prompt": "질문", "chosen": "좋은 답"}, KINDS["preference"])
    row = {"instruction": "더하세요", "input": "", "output": "3"}
    assert validate_record(row, KINDS["instruction"]) is row


def test_multi_reference_summaries_are_texts():
    record = {"dialogue": "대화", "summary": ["요약 하나", "요약 둘"]}
    assert field_texts(record, "summary") == ["요약 하나", "요약 둘"]
    map_field(record, "summary", str.upper)
    assert (
        key_text({"instruction": "지시", "input": "입력"}, ("instruction", "input")) == "지시\n입력"
    )
    with pytest.raises(RecordError, match="summary: expected a string or a list of strings"):
        validate_record({"dialogue": "대화", "summary": ["a", 1]}, KINDS["dialogue_summary"])
