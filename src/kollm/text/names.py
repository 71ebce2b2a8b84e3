"""Korean person names -> `#Name#`, and broken or foreign masks -> one canonical form.

What the detector catches, in order:
1. Speaker labels at the start of a line (`윤하린: 네.`) whose label is a surname + given name.
2. A name before a title or honorific (`김민수 과장`, `남궁민 씨`, `하린 님`, `박 대리`): a
   surname (one or two syllables: 남궁, 선우, 황보, 제갈 ...) with a given name of one or two
   syllables, or a two-syllable given name alone before 씨/님.
3. A name after a cue (`성명: 홍길동`, `이름은 서연이에요`, `담당자 황보지원입니다`, `민원인 ...`).
4. Any word MeCab-ko's dictionary tags as a person's name (NNP 인명), e.g. `김민수가 왔어요`.

A candidate that the dictionary knows as an ordinary word (이상, 김밥, 박수, 정말, 조금, 강아지,
유학, 신문, 임시 ...) is kept, unless a title or cue vouches for it. Not caught: a given name alone
with no title, cue or dictionary entry (`하린이 왔어`), names in Latin letters, and nicknames.
Role, kinship and office words (계약자, 보호자, 주무관, 어머님, 소장님, 민원실, 강서구) are cues or
titles, never names; a word MeCab reads alone as a place or an ordinary noun is not a name even
where it tags it as one in a sentence (강서구 보건소, 도지사 발표).

Masks: `○○○님`, `김○○님`, `○○○씨가`, `김OO 주무관`, `OOO고객님`, `홍○동 씨` become one `#Name#`
with the honorific and particle kept; `○○시`, `○○은행`, `○○도` (places, firms) are left. Broken
tags are repaired only for the tag names masks use (`# Person1 #`); colours (`#FF0000`), code
comments (`# note #`) and hashtags stay byte-identical.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

NAME = "#Name#"

# One-syllable surnames, by frequency (the first ~110 cover over 99.9% of people), and the
# two-syllable ones.
_SURNAMES_1 = (
    "김이박최정강조윤장임한오서신권황안송전홍류유고문양손배백허남심노하곽성차주우구민"
    "진나지엄채원천방공현함변염여추도소석선설마길연위표명기반라왕금옥육인맹제모탁국어은"
    "편용예봉경사부가복태목형피두감호계음빈동온좌갈시견당화창"
)
_SURNAMES_2 = ("남궁", "선우", "황보", "제갈", "독고", "사공", "서문", "동방", "어금", "망절")
SURNAMES = frozenset(_SURNAMES_1) | frozenset(_SURNAMES_2)
_SURNAME = "(?:" + "|".join(_SURNAMES_2) + f"|[{_SURNAMES_1}])"

TITLES = (
    "고객님|고객|선생님|선생|교수님|교수|박사님|박사|원장님|원장|과장님|과장|대리님|대리|부장님|부장"
    "|차장님|차장|팀장님|팀장|실장님|실장|사장님|사장|대표님|대표|이사님|이사|주임|사원|주무관"
    "|담당자|환자분|환자|보호자|간호사|기사님|기사|변호사|의원님|의원|장관|위원장|위원|회장님|회장"
    "|여사님|여사|선배님|선배|후배|학생|어린이|어르신|군|양|씨|님"
)
_TITLE_RE = f"(?:{TITLES})"
CUES = (
    "성명|이름은|이름이|이름:|이름 :|이름|담당자는|담당자|민원인|계약자|신청인|신청자|피보험자"
    "|보험계약자|보호자|예금주|수취인|작성자|환자명|고객명|대표자|성함은|성함이|성함|저는|제가"
)
# What may follow a name: a particle, the copula, a title, punctuation or the end.
_AFTER = (
    r"(?=\s|$|[.,!?:;)\]'\"…~·]|입니다|이에요|예요|이고|이며|이다|이라고|라고|이랑|랑|에게|께서|께"
    r"|한테|은|는|이가|이는|이를|이의|이도|가|을|를|의|와|과|도|만|님|씨|이)"
)
_NOT_HANGUL_BEFORE = r"(?<![가-힣○◯●])"


# Given names alone before 씨/님 that are words in their own right.
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_NOT_GIVEN = _words(
    "아저 아가 아줌 하느 하나 어머 아버 아드 따 손 형 누 언 도련 서방 여러 부처 주 임 달 해 별"
    " 고객 선생 교수 사장 부장 과장 대리 회장 원장 환자 기사 의원 선배 후배 간호 신부 수녀 목사"
    " 스님 사모 도령 낭자 대감 마님 나리 형수 제수 사부 처형 처제 장모 장인 시어 시아 할머 할아"
    " 부모 조상 스승 임금 주인 작가 감독 장로 집사 사돈 이모 고모 삼촌 숙모 여보 당신 자기"
)
_NOT_GIVEN |= frozenset(t.removesuffix("님") for t in TITLES.split("|"))
_ROLE_LABELS = _words(
    "고객 상담원 상담사 직원 민원인 사용자 요약 질문 답변 참고 주의 안내 기자 사회자 진행자 환자"
    " 의사 간호사 손님 학생 선생님 엄마 아빠 남편 아내 부장 과장 팀장 대리 사장 매니저 점원 판매원"
    " 기사 승객 화자 대화 시스템 사회 진행 공지 알림 제목 내용 결론 문제 정답 해설 예시 출처"
)

# Role and kinship words: cues and titles, never a name themselves (`담당자 주무관입니다`,
# `계약자 배우자`).
_ROLE_WORDS = (
    _ROLE_LABELS
    | _words(
        "계약자 신청인 신청자 보호자 담당자 민원인 상담원 주무관 피보험자 보험계약자 예금주 수취인"
        " 작성자 대표자 대리인 배우자 본인 가족 자녀 아들 딸 누나 언니 오빠 동생 형 형님 어머니"
        " 아버지 어머님 아버님 할머니 할아버지 부모님 시어머니 장모님 고객 회원 주민 국민 시민"
        " 원장 의사 약사 간호사 관리자 운영자 책임자 위원 위원장 주임 사원 직원 공무원 팀원 상사"
        " 선생 교사 교수 학생 학부모 어르신 임차인 임대인 매수인 매도인 채무자 채권자 청구인"
        " 이장 통장 반장 동장 면장 소장 국장 지점장 센터장 약사 조교 기장 이용자 참여자 가입자"
        " 수급자 대상자 응시자 지원자 방문자 관계자 당사자 소유자 거주자 세대주 납세자 수험생"
    )
    | frozenset(TITLES.split("|"))
    | frozenset(t.removesuffix("님") for t in TITLES.split("|"))
)

_JOB_TITLES = (
    "과장|대리|부장|차장|팀장|실장|주임|교수|박사|원장|기사|변호사|주무관|의원|사장|대표|이사|회장"
    "|선생"
)
# Surname syllables that are also common words right before a title (반 선생님, 전 사장님).
_AMBIGUOUS_SURNAMES = frozenset("반전한제")
# 씨/님 as an honorific, not the start of another word (씨앗, 씨름, 님프).
_HONORIFIC = (
    r"(?:씨|님)(?=$|[^가-힣]|께서|에게|한테|이랑|랑|가|는|를|을|의|께|와|과|도|만|이|은|들|이나)"
)
# 주 after these is a week (이번 주 과장님 회의), not the surname 주.
_WEEK_BEFORE_RE = re.compile(r"(?:이번|다음|지난|저번|매|한|두|세|네|몇|첫|그)[ \t]$")
_SPEAKER_RE = re.compile(r"(?m)^([ \t]*)([가-힣]{2,5})([ \t]*[:：])")
_TITLED_RE = re.compile(_NOT_HANGUL_BEFORE + f"({_SURNAME}[가-힣]{{1,2}})([ \t]?)(?={_TITLE_RE})")
_SURNAME_TITLED_RE = re.compile(
    _NOT_HANGUL_BEFORE
    + f"({_SURNAME})(?:([ \t]?)(?=(?:{_JOB_TITLES})(?:님)?)"
    + r"|([ \t])(?=씨(?![가-힣])|씨[가는를의도]))"
)
_GIVEN_TITLED_RE = re.compile(_NOT_HANGUL_BEFORE + f"([가-힣]{{2}})([ \t]?)(?={_HONORIFIC})")
_CUED_RE = re.compile(
    f"((?:{CUES})(?:[ \t]*[:：][ \t]*|[ \t]+))({_SURNAME}[가-힣]{{1,2}}|[가-힣]{{2}}){_AFTER}"
)

# Masks that other tools leave, and typos of ours. Only tag names that masks use are repaired:
# `#FF0000 #00FF00` (colours), `# note #` (a code comment) and hashtags stay as they are.
_TAG_NAMES = (
    "Person|Name|SSN|AlienRegistrationNumber|Email|CardNumber|CreditCardNumber|PhoneNumber"
    "|BusinessNumber|PassportNumber|DriverLicense|AccountNumber|IPAddress|Address|DateOfBirth"
    "|CarNumber"
)
_BROKEN_TAG_RE = re.compile(
    rf"[#＃][ \t]*({_TAG_NAMES})(?![A-Za-z_])[ \t]*(\d*)(?![A-Za-z_])[ \t]*[#＃]"
)
# What may follow a mask in the same word: a title or honorific, then a particle or the copula
# (`○○○님`, `○○○씨가`, `○○○은`, `OOO고객님`), and then no more Hangul (`○○시`, `○○은행` are
# places and firms, not people).
_MASK_PARTICLES = (  # not 도, 로, 과: ○○도, ○○로, ○○과 are a province, a road, a department
    "께서|에게서|에게|한테|께|이랑|랑|이나|은|는|이가|이|가|을|를|의|만|입니다|이에요|예요|이고"
    "|이며|이다|들"
)
_MASK_TITLES = TITLES.removesuffix("|군|양|씨|님") + "|씨|님"  # ○○군, ○○양: a county, an ocean
_MASK_TAIL = f"(?=(?:{_MASK_TITLES})?(?:{_MASK_PARTICLES})?(?![가-힣]))"
_MASK_CHARS = "○◯●"
_FOREIGN_MASK_RE = re.compile(
    rf"(?<![\w*{_MASK_CHARS}])(?:"
    rf"{_SURNAME}(?:[{_MASK_CHARS}*]{{1,2}}|OO|XX|oo|xx)(?![A-Za-z*{_MASK_CHARS}]){_MASK_TAIL}"
    rf"|{_SURNAME}[{_MASK_CHARS}*][가-힣](?![{_MASK_CHARS}*]){_MASK_TAIL}"
    rf"|[{_MASK_CHARS}]{{2,4}}(?![{_MASK_CHARS}]){_MASK_TAIL}"
    # Latin and star runs only before a title (`*** 씨`, `OOO 고객님`): `TODO XXX 고치기` and
    # `비밀번호 ***` are code and passwords.
    rf"|(?:OOO|\*\*\*|XXX)(?![\w*])(?=[ \t]?(?:{_MASK_TITLES}))"
    rf"|(?:OOO|XXX)(?![A-Za-z]){_MASK_TAIL}(?=[가-힣])"
    rf"|(?<=[가-힣][ \t])OOO(?![\w*]))"
)


@cache
def _tagger():
    import mecab_ko

    return mecab_ko.Tagger()


# MeCab's unknown-word search is quadratic in the length of a run without spaces (50,000 `x`
# took 2.6 s, in the request log's masking of what any client sends); runs longer than this are
# parsed in slices of it. A name is a few syllables, so at most one at a slice edge is lost.
_LONG_RUN = 256
_LONG_RUN_RE = re.compile(rf"\S{{{_LONG_RUN + 1},}}")


def _sliced(match: re.Match[str]) -> str:
    run = match.group(0)
    return " ".join(run[i : i + _LONG_RUN] for i in range(0, len(run), _LONG_RUN))


def _morphemes(text: str) -> list[tuple[str, str, int]]:
    """(surface, features, start offset) of each morpheme MeCab finds in `text`."""
    out, pos = [], 0
    for line in _tagger().parse(_LONG_RUN_RE.sub(_sliced, text)).splitlines():
        if "\t" not in line:
            continue
        surface, features = line.split("\t", 1)
        start = text.find(surface, pos)
        if start < 0:
            continue
        out.append((surface, features, start))
        pos = start + len(surface)
    return out


@cache
def is_common_word(word: str, compounds: bool = True) -> bool:
    """True when the dictionary reads `word` whole as something other than a person's name;
    with `compounds=False`, its compound entries (홍길동 = 홍 + 길동) do not count."""
    found = _morphemes(word)
    if len(found) != 1 or found[0][0] != word:
        return False
    features = found[0][1].split(",")
    if not compounds and len(features) > 4 and features[4] == "Compound":
        return False
    return not found[0][1].startswith("NNP,인명")


def _is_full_name(word: str) -> bool:
    """A speaker label that is a surname and a given name (윤하린), not a role (고객, 요약)."""
    if len(word) < 2 or len(word) > 5 or word.removesuffix("님") in _ROLE_WORDS:
        return False
    surname = word[:2] if word[:2] in _SURNAMES_2 else word[:1]
    given = word[len(surname) :]
    return surname in SURNAMES and 1 <= len(given) <= 2 and not is_common_word(word, False)


def _speakers(text: str, counts: Counter) -> str:
    def repl(m: re.Match[str]) -> str:
        if not _is_full_name(m.group(2)):
            return m.group(0)
        counts["name"] += 1
        return f"{m.group(1)}{NAME}{m.group(3)}"

    return _SPEAKER_RE.sub(repl, text)


def _titled(text: str, counts: Counter) -> str:
    def mask(m: re.Match[str], space: str | None) -> str:
        counts["name"] += 1
        return NAME + (space or "")

    def full(m: re.Match[str]) -> str:
        word = m.group(1)
        title = re.match(_TITLE_RE, m.string[m.end() :])
        whole = word + (title.group(0) if title and not m.group(2) else "")
        if not _plausible(word) or (whole != word and is_common_word(whole)):
            return m.group(0)
        return mask(m, m.group(2))

    def surname(m: re.Match[str]) -> str:
        title = re.match(_JOB_TITLES, m.string[m.end() :])
        if not m.group(2) and title and is_common_word(m.group(1) + title.group(0)):
            return m.group(0)  # 조교수, 이사장: one word, not a surname and a title
        if m.group(1) in _AMBIGUOUS_SURNAMES or _WEEK_BEFORE_RE.search(m.string[: m.start()]):
            return m.group(0)
        return mask(m, m.group(2) or m.group(3))

    def given(m: re.Match[str]) -> str:
        word, rest = m.group(1), m.string[m.end() :]
        if word in _NOT_GIVEN or word in _ROLE_WORDS or _has_particle(word):
            return m.group(0)
        if not m.group(2) and (is_common_word(word + rest[:1]) or is_common_word(word)):
            return m.group(0)  # 마음씨, 아저씨, 하느님: one word; 소장님, 국장님: a role
        return mask(m, m.group(2))

    text = _TITLED_RE.sub(full, text)
    text = _SURNAME_TITLED_RE.sub(surname, text)
    return _GIVEN_TITLED_RE.sub(given, text)


def _dictionary_name(word: str) -> bool:
    found = _morphemes(word)
    return len(found) == 1 and found[0][1].startswith("NNP,인명")


@cache
def _alone_as(word: str) -> str:
    """The tag MeCab gives `word` read alone as one morpheme (`NNP,지명` for 강서구, `NNP,*` for a
    proper noun it knows no kind of), or '' when it splits `word`. In a sentence MeCab may read
    a district as a person (강서구 보건소): alone it says what the word is."""
    found = _morphemes(word)
    if len(found) != 1 or found[0][0] != word:
        return ""
    return ",".join(found[0][1].split(",")[:2])


def _has_particle(word: str) -> bool:
    """Whether `word` holds a particle or an ending, also inside a compound tag (지참해 is
    지참 + XSV+EC: a verb form, not a name)."""
    for _, features, _ in _morphemes(word):
        tags = features.split(",")[0].split("+")
        if any(t[:1] in ("J", "E") and t != "ETM" for t in tags):
            return True
    return False


# Last syllables of an office or unit (인사과, 전산실, 기획팀, 총무부, 장수군); not 서, which
# ends many given names (민서, 윤서).
_UNIT_SUFFIXES = frozenset("과실팀부국청처소군단")


def _is_unit(word: str) -> bool:
    """An ordinary noun and a unit suffix (민원 + 실), not a surname and a given name."""
    return len(word) == 3 and word[2] in _UNIT_SUFFIXES and is_common_word(word[:2])


def _plausible(word: str, cued: bool = False) -> bool:
    """Could `word` be a name? Not when the dictionary reads it as one ordinary word or it ends
    in a particle or ending (신문에, 최근에). After a cue (성명, 환자명) a compound entry may
    still be a name (홍길동, 배수지)."""
    if word.removesuffix("님") in _ROLE_WORDS or word[:2] in _NOT_GIVEN:
        return False
    kind = _alone_as(word)
    if kind == "NNP,지명" or _is_unit(word):
        return False
    if kind == "NNP,인명" or (kind == "NNP,*" and len(word) == 3):
        return True  # a surname and a given name MeCab knows only as a proper noun (조민서)
    return not is_common_word(word, compounds=not cued) and not _has_particle(word)


def _cued(text: str, counts: Counter) -> str:
    def repl(m: re.Match[str]) -> str:
        word = m.group(2)
        if not _plausible(word, cued=True) or (
            word[:1] not in SURNAMES and m.group(1).startswith(("저", "제"))
        ):
            return m.group(0)
        counts["name"] += 1
        return m.group(1) + NAME

    return _CUED_RE.sub(repl, text)


def _dictionary(text: str, counts: Counter) -> str:
    """Every morpheme MeCab tags as a person's name (NNP 인명), two syllables or more."""
    spans = [
        (start, start + len(surface))
        for surface, features, start in _morphemes(text)
        if features.startswith("NNP,인명")
        and len(surface) >= 2
        and "#" not in surface
        # Alone, a place (강서구) or an ordinary word (도지사) is what MeCab took for a name.
        and _alone_as(surface) not in ("NNP,지명", "NNG,*")
        and surface not in _ROLE_WORDS  # MeCab has 이용자 as a person too
    ]
    for start, end in reversed(spans):
        text = text[:start] + NAME + text[end:]
        counts["name"] += 1
    return text


def mask_names(text: str, counts: Counter) -> str:
    """Replace person names in `text` with `#Name#`, counting them under `name`."""
    if not re.search("[가-힣]", text):
        return text
    for detect in (_speakers, _titled, _cued, _dictionary):
        text = detect(text, counts)
    return text


def normalise_masks(text: str, counts: Counter) -> str:
    """`#Person1 #`, `# Person1#`, `＃Person1＃` -> `#Person1#`; `○○○`, `김○○`, `OOO 님`,
    `*** 씨` -> `#Name#`; each fix counted under `mask_fixed`."""

    def tag(m: re.Match[str]) -> str:
        canonical = f"#{m.group(1)}{m.group(2)}#"
        if canonical != m.group(0):
            counts["mask_fixed"] += 1
        return canonical

    def foreign(_m: re.Match[str]) -> str:
        counts["mask_fixed"] += 1
        return NAME

    text = _BROKEN_TAG_RE.sub(tag, text)
    return _FOREIGN_MASK_RE.sub(foreign, text)
