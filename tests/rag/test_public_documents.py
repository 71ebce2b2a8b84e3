"""Files kollm did not write (tests/rag/public: HWP and HWPX saved by Hancom Office, a PDF
the National Assembly published, DOCX from Word and LibreOffice), read as
bench/ingest_bench.py reads them: every file read or refused with its reason, its Hangul
syllables found against independent references, its tables, boxes, notes and headers in
reading order, and its chunks cited by section, paragraph and page."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import pytest

from kollm.rag.index import RagIndex
from kollm.rag.ingest import read_document

PUBLIC = Path(__file__).parent / "public"
REFUSED = {"pyhwp-password-12345.hwp": "the HWP file is password-protected"}


@cache
def _bench():
    """bench/ingest_bench.py as a module (the bench is a script, not a package)."""
    path = Path(__file__).parents[2] / "bench" / "ingest_bench.py"
    spec = importlib.util.spec_from_file_location("ingest_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILES = sorted(p.name for p in PUBLIC.iterdir() if p.suffix in (".hwp", ".hwpx", ".pdf", ".docx"))


@pytest.mark.parametrize("name", FILES)
def test_each_public_file_is_read_whole_or_refused_with_its_reason(name):
    row = _bench().measure(PUBLIC / name)
    if name in REFUSED:
        assert row.get("refused") == REFUSED[name]
        return
    assert "refused" not in row, row.get("refused")
    assert row["pages"] >= 1
    for kind, score in row["references"].items():
        assert score["found"] >= 0.98 * score["of"], (kind, score)


def test_the_set_has_every_kind_the_issue_names_and_recall_over_it_is_whole():
    result = _bench().run(PUBLIC, repeat=1)
    formats = {row["format"] for row in result["files"] if "recall" in row}
    assert formats >= {"hwp", "hwpx", "pdf", "docx"}
    assert result["recall"] >= 0.98 and not result["below"]
    assert result["refused"] == REFUSED
    # most files are checked against at least two references
    checked = [r for r in result["files"] if len(r.get("references", {})) >= 2]
    assert len(checked) >= len(result["files"]) // 2


def _lines(name: str) -> list[str]:
    return "\n".join(s.text for s in read_document(PUBLIC / name, name)).splitlines()


def test_hwp_tables_are_rows_where_they_stand_and_notes_follow_their_paragraph():
    lines = _lines("pyhwp-sample-5017.hwp")
    # the paragraph "표<table>표끝": the table's rows between the text before and after it
    at = lines.index("표")
    assert lines[at : at + 4] == ["표", "A0 | B0", "A1 | B10 B11", "표끝"]
    assert lines[1] == "머리말입니다"  # the header, after the first paragraph that holds it
    notes = _lines("pyhwp-footnote-endnote.hwp")
    assert notes == [
        "각주참조",
        " 각주입니다.",
        " 각주 두 번째입니다.",
        "미주참조",
        " 미주입니다.",
        " 미주 두 번째입니다.",
    ]
    assert "글상자" in _lines("pyhwp-textbox.hwp")  # text in a drawn text box
    captions = _lines("pyhwp-table-caption.hwp")
    assert {"표  위 캡션", "표  아래 캡션", "표  왼쪽 위"} <= set(captions)


def test_a_docx_table_from_another_writer_is_a_line_per_row():
    lines = _lines("libreoffice-bill-table.docx")
    at = lines.index("신ㆍ구조문대비표")
    assert lines[at + 1] == "현 행 | 개 정 안"
    assert lines[at + 4] == "<신 설> | 5. 「비영리민간단체 지원법」 제2조에 따른 비영리민간단체"
    assert lines[-1] == "제1조(시행일) 이 법은 공포 후 6개월이 경과한 날부터 시행한다."


def _places(name: str) -> list[dict]:
    return [where for s in read_document(PUBLIC / name, name) for _, where in s.places]


def test_hwp_paragraphs_are_placed_by_section_number_and_saved_page():
    # aligns.hwp: paragraph 1 is empty and each of paragraphs 3-17 opens with a page break
    # (15 breaks, as pyhwp reads the file): so paragraph n is on page n - 1
    places = _places("pyhwp-aligns.hwp")
    assert [(p["section"], p["paragraph"], p["page"]) for p in places] == [
        (1, n, n - 1) for n in range(2, 18)
    ]
    # sample-5017.hwp: one page break, before its last paragraph "다음 페이지" (next page)
    sections = read_document(PUBLIC / "pyhwp-sample-5017.hwp", "s")
    (start, last) = sections[0].places[-1]
    assert sections[0].text[start:] == "다음 페이지" and last == {
        "section": 1,
        "paragraph": 14,
        "page": 2,
    }
    assert {p["page"] for p in _places("pyhwp-sample-5017.hwp")[:-1]} == {1}


def test_a_multi_column_document_gives_no_page_rather_than_a_wrong_one():
    places = _places("pyhwp-multicolumns.hwp")
    assert places and all("page" not in p and p["section"] == 1 for p in places)


def test_hwpx_paragraphs_are_numbered_per_section_with_pages_over_the_document():
    places = _places("hwpxlib-sections.hwpx")
    assert {p["section"] for p in places} == {1, 2, 3}
    pages = [p["page"] for p in places]
    assert pages == sorted(pages) and pages[0] == 1 and pages[-1] > 30
    for section in (1, 2, 3):
        numbers = [p["paragraph"] for p in places if p["section"] == section]
        assert numbers == sorted(set(numbers))


def test_chunks_cite_the_section_paragraph_and_page_they_open_in(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for name in ("pyhwp-aligns.hwp", "pyhwp-sample-5017.hwp", "hwpxlib-sections.hwpx"):
        (root / name).write_bytes((PUBLIC / name).read_bytes())
    index = RagIndex(tmp_path / "home")
    index.index_paths("p", [root], max_chars=40)
    # a chunk packs several short paragraphs: it is cited by the one it opens in
    (hit, *_) = index.search("p", "다음 페이지", 1)
    assert hit.doc_id == "pyhwp-sample-5017.hwp"
    assert hit.text == "미주입니다.\n이건 각주이지요.\n다음 페이지"
    assert (hit.section, hit.paragraph, hit.page) == (1, 12, 1)
    (hit, *_) = index.search("p", "bottom", 1)
    assert hit.text == "middle 0\nmiddle -10\nbottom 0\nbottom 10"
    assert hit.place == "section 1, paragraph 14, p. 13"  # aligns.hwp: paragraph n, page n - 1
