"""Korean PII detection: each hit becomes a typed placeholder in DialogSum style (`#Email#`).

Detectors run in a fixed order and each one sees the text the earlier ones left, so a phone
number masked first is never read again as an account number. Numbers that look alike but
carry no identity (dates, amounts, versions, ISBNs, coordinates, 1588-xxxx company numbers)
are left alone: every detector either validates a checksum or date, or needs a nearby keyword.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kollm.text.names import mask_names, normalise_masks

PLACEHOLDERS = {
    "rrn": "#SSN#",
    "alien": "#AlienRegistrationNumber#",
    "email": "#Email#",
    "card": "#CardNumber#",
    "phone": "#PhoneNumber#",
    "business": "#BusinessNumber#",
    "passport": "#PassportNumber#",
    "driver": "#DriverLicense#",
    "account": "#AccountNumber#",
    "ip": "#IPAddress#",
    "address": "#Address#",
    "name": "#Name#",
}

_NOT_DIGIT_BEFORE = r"(?<![\d\-.])"
_NOT_DIGIT_AFTER = r"(?![\d]|-\d|\.\d)"


@dataclass(frozen=True)
class PiiOptions:
    """Which PII types to mask."""

    types: frozenset[str] = frozenset(PLACEHOLDERS) - {"address"}
    """Detector names (keys of `PLACEHOLDERS`); addresses are opt-in."""


@dataclass
class PiiResult:
    text: str
    counts: Counter[str] = field(default_factory=Counter)


# --- validators -----------------------------------------------------------------------------


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _valid_birth_date(yymmdd: str, gender_digit: str) -> bool:
    century = {"9": 1800, "0": 1800, "1": 1900, "2": 1900, "5": 1900, "6": 1900}.get(
        gender_digit, 2000
    )
    try:
        dt.date(century + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:6]))
    except ValueError:
        return False
    return True


def rrn_kind(number: str) -> str | None:
    """'rrn' or 'alien' for a plausible registration number, else None.

    Since October 2020 the last six digits are random, so the birth date and the gender digit
    decide; the old check digit is not required.
    """
    d = _digits(number)
    if len(d) != 13 or not _valid_birth_date(d[:6], d[6]):
        return None
    return "alien" if d[6] in "5678" else "rrn"


def luhn_valid(number: str) -> bool:
    """Whether a card number passes the Luhn check."""
    d = [int(c) for c in _digits(number)]
    total = 0
    for i, digit in enumerate(reversed(d)):
        if i % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return len(d) >= 12 and total % 10 == 0


def business_number_valid(number: str) -> bool:
    """Korean business registration number (사업자등록번호) check digit."""
    d = [int(c) for c in _digits(number)]
    if len(d) != 10:
        return False
    weights = (1, 3, 7, 1, 3, 7, 1, 3, 5)
    total = sum(a * w for a, w in zip(d, weights, strict=False)) + (d[8] * 5) // 10
    return (10 - total % 10) % 10 == d[9]


# --- patterns ---------------------------------------------------------------------------------

_RRN_RE = re.compile(
    _NOT_DIGIT_BEFORE + r"\d{6}\s?-\s?\d{7}" + _NOT_DIGIT_AFTER + r"|(?<!\d)\d{13}(?!\d)"
)
# Both patterns start only where their leading run starts (the lookbehinds): tried from every
# position inside a long run without a match, they took quadratic time (40,000 `x` took 1.6 s
# in the request log's masking, 20,000 Hangul syllables 6 s in the address pattern).
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
)
_CARD_RE = re.compile(
    _NOT_DIGIT_BEFORE
    + r"(?:\d{4}[ \-]\d{4}[ \-]\d{4}[ \-]\d{4}|\d{4}[ \-]\d{6}[ \-]\d{5}|\d{15,16})"
    + _NOT_DIGIT_AFTER
)
# Mobile 010/011/016-019, area codes 02 and 0[3-6]x, internet phone 070, safe numbers 050x;
# optional +82 with the leading 0 dropped. 15xx/16xx/18xx company numbers never match.
_PHONE_PREFIX = r"(?:1[016789]|2|[3-6][1-5]|70|50\d)"
_PHONE_RE = re.compile(
    r"(?:\+82|0082)[\s\-]?(?:\(0\))?" + _PHONE_PREFIX + r"[\s\-.]?\d{3,4}[\s\-.]?\d{4}(?!\d)"
    r"|(?<![\d\-.+])\(?0"
    + _PHONE_PREFIX
    + r"\)?[\s\-.]?\d{3,4}[\s\-.]\d{4}"
    + _NOT_DIGIT_AFTER
    + r"|(?<![\d\-.])01[016789]\d{7,8}(?!\d)"
)
_BUSINESS_RE = re.compile(_NOT_DIGIT_BEFORE + r"\d{3}-\d{2}-\d{5}" + _NOT_DIGIT_AFTER)
# Old passports: one letter and eight digits; since December 2021: letter, 3 digits, letter,
# 4 digits.
_PASSPORT_RE = re.compile(r"(?<![A-Za-z0-9])[MSRODG](?:\d{8}|\d{3}[A-Z]\d{4})(?![A-Za-z0-9])")
_DRIVER_REGIONS = (
    "서울|부산|경기|강원|충북|충남|전북|전남|경북|경남|제주|대구|인천|광주|대전|울산|세종"
)
_DRIVER_RE = re.compile(
    _NOT_DIGIT_BEFORE
    + r"(?:1[1-9]|2[0-8])-\d{2}-\d{6}-\d{2}"
    + _NOT_DIGIT_AFTER
    + r"|(?:"
    + _DRIVER_REGIONS
    + r")\s?\d{2}-\d{6}-\d{2}"
    + _NOT_DIGIT_AFTER
)
_IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w]|\.\d)"
)
_VERSION_BEFORE_RE = re.compile(r"(?:v|ver\.?|version|버전)\s*$", re.IGNORECASE)
# Bank accounts vary by bank (3-3-6, 6-2-6, 4-3-6, 3-6-5, 3-4-4-2, ...), so they need a
# banking word within the same sentence before them.
_ACCOUNT_RE = re.compile(
    _NOT_DIGIT_BEFORE + r"(?:\d{2,6}-){1,3}\d{2,7}" + _NOT_DIGIT_AFTER + r"|(?<!\d)\d{10,14}(?!\d)"
)
_ACCOUNT_WORDS_RE = re.compile(
    r"계좌|입금|송금|이체|통장|은행|뱅크|예금주|국민|신한|우리|하나|농협|기업|우체국|새마을|수협"
    r"|신협|SC제일|씨티|카카오|토스|account",
    re.IGNORECASE,
)
_ADDRESS_RE = re.compile(
    r"(?<![가-힣])(?:[가-힣]+(?:특별시|광역시|특별자치시|특별자치도|도|시)\s)?"
    r"(?:[가-힣]+(?:시|군|구)\s){1,2}"
    r"[가-힣0-9]+(?:로|길)\s?\d+(?:번길\s?\d+)?(?:-\d+)?(?![\d호층])"
)


# --- detectors --------------------------------------------------------------------------------

Detector = Callable[[str, Counter], str]


def _sub_if(pattern: re.Pattern[str], accept: Callable[[re.Match[str]], str | None]):
    """Replace each match for which `accept` names a PII type; count it under that type."""

    def detect(text: str, counts: Counter) -> str:
        def repl(m: re.Match[str]) -> str:
            kind = accept(m)
            if kind is None:
                return m.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        return pattern.sub(repl, text)

    return detect


def _context_before(m: re.Match[str], width: int = 25) -> str:
    start = max(0, m.start() - width)
    before = m.string[start : m.start()]
    # Only the current sentence or line counts as context.
    return re.split(r"[.!?\n]\s", before)[-1]


def _accept_card(m: re.Match[str]) -> str | None:
    has_card_word = "카드" in _context_before(m) or "card" in _context_before(m).lower()
    return "card" if luhn_valid(m.group(0)) or has_card_word else None


def _accept_account(m: re.Match[str]) -> str | None:
    digits = _digits(m.group(0))
    context = _context_before(m)
    if not 10 <= len(digits) <= 14 or "ISBN" in context.upper():
        return None
    return "account" if _ACCOUNT_WORDS_RE.search(context) else None


def _accept_business(m: re.Match[str]) -> str | None:
    if business_number_valid(m.group(0)) or "사업자" in _context_before(m):
        return "business"
    return None


def _accept_ip(m: re.Match[str]) -> str | None:
    return None if _VERSION_BEFORE_RE.search(_context_before(m, 10)) else "ip"


DETECTORS: dict[str, Detector] = {
    "email": _sub_if(_EMAIL_RE, lambda m: "email"),
    "rrn": _sub_if(_RRN_RE, lambda m: rrn_kind(m.group(0))),
    "card": _sub_if(_CARD_RE, _accept_card),
    "business": _sub_if(_BUSINESS_RE, _accept_business),
    "driver": _sub_if(_DRIVER_RE, lambda m: "driver"),
    "phone": _sub_if(_PHONE_RE, lambda m: "phone"),
    "passport": _sub_if(_PASSPORT_RE, lambda m: "passport"),
    "ip": _sub_if(_IPV4_RE, _accept_ip),
    "account": _sub_if(_ACCOUNT_RE, _accept_account),
    "address": _sub_if(_ADDRESS_RE, lambda m: "address"),
    "name": mask_names,
}


def mask_pii(text: str, options: PiiOptions | None = None) -> PiiResult:
    """Replace PII in `text` with typed placeholders and count what was masked per type.

    `alien` (외국인등록번호) is found by the `rrn` detector; selecting `rrn` masks both. Broken
    and foreign masks (`#Person1 #`, `○○○`) are made canonical first (`mask_fixed`).
    """
    opts = options or PiiOptions()
    counts: Counter[str] = Counter()
    text = normalise_masks(text, counts)
    for name, detect in DETECTORS.items():
        if name in opts.types:
            text = detect(text, counts)
    return PiiResult(text=text, counts=counts)


def mask_nested(value: Any, options: PiiOptions | None = None) -> Any:
    """`value` with every string in it masked, through lists and dicts (a logged request, the
    lineage copies a record keeps)."""
    if isinstance(value, str):
        return mask_pii(value, options).text
    if isinstance(value, list):
        return [mask_nested(v, options) for v in value]
    if isinstance(value, dict):
        return {k: mask_nested(v, options) for k, v in value.items()}
    return value
