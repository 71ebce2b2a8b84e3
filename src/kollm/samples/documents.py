"""The bundled document set for retrieval: the rules (HWPX, some HWP 5), notices (PDF) and FAQs (DOCX, some
TXT) of 40 public services of an imaginary district office, and labelled queries that ask for
one fact of one document in other words: other particles and endings than the passage (서류를
against 서류가, 발표합니다 against 발표되나요), as people type them. Seeded, so always the same
files; a query's `relevant` is the doc_id (the path under the set's root) that answers it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from kollm.samples.files import write_docx, write_hwp, write_hwpx, write_pdf
from kollm.samples.generate import fill_slots

# slug, service name, department
SERVICES = [
    ("moving", "전입신고", "민원여권과"),
    ("passport", "여권 재발급", "민원여권과"),
    ("idcard", "주민등록증 재발급", "민원여권과"),
    ("seal", "인감증명서 발급", "민원여권과"),
    ("parking", "거주자 우선 주차", "주차관리과"),
    ("parkpass", "공영 주차장 정기권", "주차관리과"),
    ("waste", "대형 폐기물 배출", "청소행정과"),
    ("recycle", "재활용품 수거함 설치", "청소행정과"),
    ("rent", "청년 월세 지원", "복지정책과"),
    ("birth", "출산 축하금", "가족정책과"),
    ("pension", "기초연금", "어르신복지과"),
    ("elderjob", "노인 일자리 사업", "어르신복지과"),
    ("dementia", "치매 조기 검진", "보건소 치매안심센터"),
    ("smoking", "금연 클리닉", "보건소 건강증진과"),
    ("vaccine", "어린이 예방 접종", "보건소 감염병관리과"),
    ("checkup", "건강 검진 비용 지원", "보건소 건강증진과"),
    ("postnatal", "산후 조리비 지원", "가족정책과"),
    ("childcare", "아이 돌봄 서비스", "가족정책과"),
    ("daycare", "어린이집 입소 대기", "보육지원과"),
    ("singleparent", "한부모 가족 지원", "가족정책과"),
    ("disability", "장애인 활동 지원", "장애인복지과"),
    ("emergency", "긴급 복지 지원", "복지정책과"),
    ("jobs", "국민취업지원제도 상담", "일자리경제과"),
    ("startup", "창업 공간 입주", "일자리경제과"),
    ("smallbiz", "소상공인 경영 자금", "일자리경제과"),
    ("restaurant", "음식점 영업 신고", "위생과"),
    ("dog", "반려견 등록", "동물복지팀"),
    ("car", "자동차 이전 등록", "교통행정과"),
    ("bike", "공공 자전거 대여", "교통행정과"),
    ("evcharger", "전기차 충전기 설치 보조금", "환경과"),
    ("solar", "주택 태양광 설치 지원", "환경과"),
    ("vacant", "빈집 정비 지원", "도시재생과"),
    ("building", "건축물대장 열람", "건축과"),
    ("library", "도서관 회원 가입", "도서관운영과"),
    ("lifelong", "평생학습 강좌 수강", "평생학습과"),
    ("legal", "무료 법률 상담", "총무과"),
    ("foreigner", "외국인 주민 한국어 교실", "다문화가족지원센터"),
    ("multicultural", "다문화 가족 통역 지원", "다문화가족지원센터"),
    ("youthcenter", "청소년 수련관 대관", "청소년과"),
    ("disaster", "풍수해 보험 가입 지원", "안전총괄과"),
]

_TARGETS = [
    "관내에 주민등록을 둔 만 19세 이상 주민",
    "관내에 6개월 이상 거주한 가구",
    "기준 중위소득 100% 이하인 가구",
    "만 65세 이상 어르신",
    "관내 사업장을 둔 개인 사업자",
    "만 19세부터 34세까지의 무주택 청년",
    "신청일 현재 관내에 거주하는 보호자",
]
_PAPERS = [
    "신청서와 신분증 사본",
    "신청서, 주민등록등본, 통장 사본",
    "신청서와 소득 증빙 서류",
    "신청서, 임대차 계약서 사본, 가족관계증명서",
    "신청서와 사업자등록증 사본",
    "신청서, 건강보험 자격득실 확인서",
]
_PLACES = ["구청 1층 민원실", "주소지 동 주민센터", "구청 별관 3층 상담실", "보건소 2층 접수창구"]
_MONTHS = [3, 4, 5, 6, 7, 9, 10]
_FEES = ["없습니다. 무료로 처리됩니다", "1건에 1,000원입니다", "1건에 600원입니다", "5,000원입니다"]


def _facts(rng: random.Random, name: str, dept: str) -> dict[str, str]:
    month = rng.choice(_MONTHS)
    target = rng.choice(_TARGETS)
    return {
        "svc": name,
        "dept": dept,
        "target": target,
        "target_ro": target + _ro(target),
        "dept_ro": _ro(dept),
        "papers": rng.choice(_PAPERS),
        "place": rng.choice(_PLACES),
        "start": f"{month}월 {rng.randint(1, 10)}일",
        "end": f"{month}월 {rng.randint(18, 28)}일",
        "announce": f"{month + 1}월 {rng.randint(1, 15)}일",
        "fee": rng.choice(_FEES),
        "days": str(rng.choice([3, 5, 7, 10, 14])),
        "phone": f"02-{rng.randint(2100, 2199)}-{rng.randint(1000, 9999)}",
    }


_RULES = [
    "{svc} 운영 규정",
    "제1조(목적) 이 규정은 {svc}의 운영에 필요한 사항을 정함을 목적으로 한다.",
    "제2조(지원 대상) 지원 대상은 {target_ro} 한다. 다만 같은 내용의 지원을 이미"
    " 받고 있는 사람은 제외한다.",
    "제3조(제출 서류) 신청하려는 사람은 {papers}을 구청장에게 제출하여야 한다.",
    "제4조(담당 부서) 이 규정에 따른 업무는 {dept}에서 맡는다. 구청장은 필요한 경우 업무의"
    " 일부를 동 주민센터에 위임할 수 있다.",
    "제5조(시행일) 이 규정은 공포한 날부터 시행한다.",
]
_NOTICE = [
    "2026년 {svc} 신청 공고",
    "우리 구는 주민의 편의를 위하여 2026년 {svc} 신청을 아래와 같이 받습니다.",
    "신청 기간은 {start}부터 {end}까지이며, 주말과 공휴일에는 접수하지 않습니다.",
    "접수 장소는 {place}입니다. 방문이 어려운 분은 우편으로 접수할 수 있습니다.",
    "선정 결과는 {announce}에 구청 누리집에 게시하고 개별 문자로 알려 드립니다.",
    "자세한 내용은 {dept}({phone}){dept_ro} 문의하시기 바랍니다.",
]
_FAQ = [
    "{svc} 자주 묻는 질문",
    "Q. {svc}의 수수료는 얼마입니까? A. 수수료는 {fee}.",
    "Q. 처리 기간은 얼마나 걸립니까? A. 서류를 접수한 날부터 {days}일 안에 처리하며,"
    " 보완이 필요하면 더 늦어질 수 있습니다.",
    "Q. 대리인이 신청할 수 있습니까? A. 가족이나 대리인이 위임장과 본인의 신분증을 지참하면"
    " 대신 신청할 수 있습니다.",
    "Q. 온라인 신청도 됩니까? A. 정부24 누리집에서 공동인증서로 로그인한 뒤 신청할 수 있습니다.",
]

# per kind: (fact, query templates); each query is written with other particles and endings
# than the passage it asks about
_QUERIES = {
    "rules": [
        ("target", ["{svc} 신청 대상이 어떻게 되나요?", "{svc}은 어떤 사람이 대상이에요?"]),
        ("papers", ["{svc} 신청할 때 필요한 서류가 뭔가요?", "{svc}에 내야 하는 서류는?"]),
        ("dept", ["{svc}은 어느 부서가 담당해요?", "{svc} 업무 담당 부서를 알려 주세요"]),
    ],
    "notice": [
        ("period", ["{svc} 신청 기간이 언제예요?", "{svc}은 언제까지 신청받나요?"]),
        ("place", ["{svc} 접수는 어디서 하나요?", "{svc} 서류 접수 장소가 궁금합니다"]),
        ("announce", ["{svc} 선정 결과는 언제 발표되나요?", "{svc} 결과 발표일이 언제죠?"]),
    ],
    "faq": [
        ("fee", ["{svc} 수수료가 있나요?", "{svc}은 수수료를 내야 하나요?"]),
        ("days", ["{svc} 처리되는 데 며칠 걸려요?", "{svc} 처리 기간이 궁금해요"]),
        ("proxy", ["가족이 {svc}을 대신 신청해도 되나요?", "{svc} 대리 신청이 가능한가요?"]),
        ("online", ["{svc}은 인터넷으로도 신청되나요?", "{svc} 온라인으로 신청하는 방법"]),
    ],
}


def _ro(word: str) -> str:
    """The particle (으)로 after `word`: 로 after a vowel or ㄹ, else 으로."""
    last = word[-1]
    final = (ord(last) - 0xAC00) % 28 if "가" <= last <= "힣" else 0
    return "로" if final in (0, 8) else "으로"


def _fill(lines: list[str], facts: dict[str, str]) -> list[str]:
    return [fill_slots(line, facts) for line in lines]


def _wrap(text: str, width: int = 38) -> list[str]:
    """Lines of at most `width` characters, broken at spaces, as a PDF lays them out."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def document_set(seed: int = 20261201) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(documents, queries). A document is {doc_id, kind, paragraphs}; the FAQ of every fourth
    service is plain text, the rest DOCX."""
    rng = random.Random(seed)
    documents, queries = [], []
    for number, (slug, name, dept) in enumerate(SERVICES):
        facts = _facts(rng, name, dept)
        faq_suffix = "txt" if number % 4 == 3 else "docx"
        rules_suffix = "hwp" if number % 5 == 2 else "hwpx"  # HWP 5 and its successor
        for kind, lines, path in (
            ("rules", _RULES, f"rules/{slug}.{rules_suffix}"),
            ("notice", _NOTICE, f"notices/{slug}.pdf"),
            ("faq", _FAQ, f"faq/{slug}.{faq_suffix}"),
        ):
            documents.append({"doc_id": path, "kind": kind, "paragraphs": _fill(lines, facts)})
            for fact, templates in _QUERIES[kind]:
                query = fill_slots(rng.choice(templates), facts)
                queries.append({"query": query, "relevant": [path], "fact": fact})
    rng.shuffle(queries)
    return documents, [{"id": f"q{i:03d}", **q} for i, q in enumerate(queries)]


def write_document(root: Path, document: dict[str, Any]) -> None:
    """One document in the format its path names."""
    path = root / document["doc_id"]
    path.parent.mkdir(parents=True, exist_ok=True)
    paragraphs = document["paragraphs"]
    if path.suffix == ".hwpx":
        write_hwpx(path, [paragraphs])
    elif path.suffix == ".hwp":
        write_hwp(path, paragraphs)
    elif path.suffix == ".pdf":
        write_pdf(path, [[line for p in paragraphs for line in _wrap(p)]])
    elif path.suffix == ".docx":
        write_docx(path, paragraphs)
    else:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
        tmp.replace(path)


def write_document_set(root: Path, queries: Path, seed: int = 20261201) -> tuple[int, int]:
    """Write the documents under `root` and their labelled queries to `queries` (JSONL);
    returns (documents, queries)."""
    import json

    documents, labelled = document_set(seed)
    for document in documents:
        write_document(root, document)
    text = "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in labelled)
    tmp = queries.with_name(f".{queries.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(queries)
    return len(documents), len(labelled)
