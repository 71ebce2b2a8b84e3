import time

import pytest

from kollm.text.pii import (
    PLACEHOLDERS,
    PiiOptions,
    business_number_valid,
    luhn_valid,
    mask_pii,
    rrn_kind,
)


def luhn_complete(prefix: str) -> str:
    return next(prefix + c for c in "0123456789" if luhn_valid(prefix + c))


def business_complete(prefix9: str) -> str:
    return next(prefix9 + c for c in "0123456789" if business_number_valid(prefix9 + c))


CARD_9 = luhn_complete("941012345678901")  # Korean domestic cards may start with 9
CARD_4 = luhn_complete("453201511283036")
BUSINESS = business_complete("220811234")

POSITIVES = [
    ("주민번호는 900101-1234567입니다", "주민번호는 #SSN#입니다"),
    ("주민번호 9001011234567", "주민번호 #SSN#"),
    ("2021년생 210315-3123456", "2021년생 #SSN#"),
    ("외국인등록번호 850315-5123456", "외국인등록번호 #AlienRegistrationNumber#"),
    ("제 번호는 010-1234-5678이에요", "제 번호는 #PhoneNumber#이에요"),
    ("010 1234 5678로 연락", "#PhoneNumber#로 연락"),
    ("01012345678로 연락", "#PhoneNumber#로 연락"),
    ("+82 10-1234-5678", "#PhoneNumber#"),
    ("+821012345678", "#PhoneNumber#"),
    ("사무실 (02) 123-4567", "사무실 #PhoneNumber#"),
    ("지점 031-123-4567", "지점 #PhoneNumber#"),
    ("인터넷 전화 070-1234-5678", "인터넷 전화 #PhoneNumber#"),
    ("안심번호 0505-123-4567", "안심번호 #PhoneNumber#"),
    ("메일 kim.minsu@example.co.kr 로", "메일 #Email# 로"),
    (f"카드 {CARD_9[:4]}-{CARD_9[4:8]}-{CARD_9[8:12]}-{CARD_9[12:]}", "카드 #CardNumber#"),
    (f"결제 {CARD_4}", "결제 #CardNumber#"),
    ("국민은행 계좌 123456-78-901234로 입금", "국민은행 계좌 #AccountNumber#로 입금"),
    ("계좌번호는 110123456789입니다", "계좌번호는 #AccountNumber#입니다"),
    ("농협 302-1234-5678-91로 송금", "농협 #AccountNumber#로 송금"),
    (f"번호 {BUSINESS[:3]}-{BUSINESS[3:5]}-{BUSINESS[5:]}", "번호 #BusinessNumber#"),
    ("여권번호 M12345678", "여권번호 #PassportNumber#"),
    ("새 여권 M123A4567", "새 여권 #PassportNumber#"),
    ("면허번호 11-12-345678-90", "면허번호 #DriverLicense#"),
    ("서버 IP는 192.168.0.1 입니다", "서버 IP는 #IPAddress# 입니다"),
]

DECOYS = [
    "회의는 2024-01-15 14:30에 해요",
    "2024.01.15까지 제출",
    "2024년 1월 15일 오후 3시",
    "금액은 1,500,000원이고 할인은 150만 원",
    "금리는 12.5%예요",
    "v1.2.3으로 올렸어요",
    "버전 1.2.3.4 배포",
    "파이썬 3.10.12",
    "ISBN 978-89-123-4567-8",
    "ISBN 9788912345678",
    "좌표는 37.5665, 126.9780",
    "301호 회의실, 1203호",
    "고객센터 1588-1234 또는 1544-5678",
    "주문번호 20240115",
    "총 12345678원",
    "계좌 잔액은 2024-01-15 기준",
    "991332-1234567",  # month 13: not a birth date
    "1234-5678-9012-3456",  # fails Luhn and has no card word
    "123-45-67892",  # business-number shape with a wrong check digit (1 is right)
]


@pytest.mark.parametrize(("text", "expected"), POSITIVES)
def test_each_pii_type_is_masked(text, expected):
    assert mask_pii(text).text == expected


@pytest.mark.parametrize("text", DECOYS)
def test_decoys_survive(text):
    assert mask_pii(text).text == text


def test_counts_name_each_type():
    result = mask_pii("010-1234-5678, 900101-1234567, a@b.com, 010-9876-5432")
    assert result.counts == {"phone": 2, "rrn": 1, "email": 1}


def test_rrn_needs_a_valid_date_and_gender_digit_not_the_check_digit():
    assert rrn_kind("900101-1234567") == "rrn"  # check digit wrong, still masked (post-2020)
    assert rrn_kind("900230-1234567") is None  # 30 February
    assert rrn_kind("850315-6123456") == "alien"


def test_addresses_are_opt_in():
    text = "서울특별시 종로구 세종대로 209 301호"
    assert mask_pii(text).text == text
    everything = PiiOptions(types=frozenset(PLACEHOLDERS))
    assert mask_pii(text, everything).text == "#Address# 301호"
    assert mask_pii("바로 3시에 봐요", everything).text == "바로 3시에 봐요"


def test_types_can_be_switched_off():
    only_email = PiiOptions(types=frozenset({"email"}))
    assert mask_pii("010-1234-5678 a@b.com", only_email).text == "010-1234-5678 #Email#"


@pytest.mark.parametrize("run", ["x", "1", "가", "a.", "1-"])
def test_a_long_run_without_pii_is_masked_in_linear_time(run):
    """The request log masks whatever a client sends: a 100,000-character run took 12 s in
    the email pattern (and 20,000 Hangul syllables 6 s in the address one) before both were
    anchored to the start of their run. The bound only proves it is not quadratic."""
    text = run * (100_000 // len(run))
    started = time.perf_counter()
    masked = mask_pii(text + " 연락처 hong@example.com").text
    assert time.perf_counter() - started < 5
    assert masked.endswith("#Email#") and masked.startswith(text[:1000])
