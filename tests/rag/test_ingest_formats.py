"""DOCX tables, headers, footers and footnotes are indexed in document order; a PDF page
with no text layer is named in the index report."""

from __future__ import annotations

import io
import re
import zipfile

import pytest

from kollm.rag.ingest import read_document

_FOOTNOTES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<w:footnotes xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    '<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:t>분리</w:t></w:r></w:p></w:footnote>'
    '<w:footnote w:id="1"><w:p><w:r><w:t>각주내용</w:t></w:r></w:p></w:footnote>'
    "</w:footnotes>"
)
_FN_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.footnotes+xml"
_FN_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/footnotes"


def _with_footnotes(data: bytes) -> bytes:
    """python-docx cannot write footnotes: the part, its relationship and content type are
    added to the zip."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            blob = src.read(info)
            if info.filename == "[Content_Types].xml":
                override = f'<Override PartName="/word/footnotes.xml" ContentType="{_FN_TYPE}"/>'
                blob = blob.replace(b"</Types>", override.encode() + b"</Types>")
            elif info.filename == "word/_rels/document.xml.rels":
                rel = f'<Relationship Id="rIdFn9" Type="{_FN_REL}" Target="footnotes.xml"/>'
                blob = blob.replace(b"</Relationships>", rel.encode() + b"</Relationships>")
            dst.writestr(info, blob)
        dst.writestr("word/footnotes.xml", _FOOTNOTES)
    return out.getvalue()


def _hangul(text: str) -> list[str]:
    return re.findall(r"[가-힣]+", text)


def test_docx_reads_tables_headers_footers_and_footnotes_in_order(tmp_path):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    section = document.sections[0]
    section.header.paragraphs[0].text = "머리말"
    section.footer.paragraphs[0].text = "꼬리말"
    document.add_paragraph("첫문단")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "가나"
    table.cell(0, 1).text = "다라"
    table.cell(1, 0).text = "마바"
    inner = table.cell(1, 1).add_table(rows=1, cols=2)
    inner.cell(0, 0).text = "안쪽"
    inner.cell(0, 1).text = "표칸"
    document.add_paragraph("끝문단")
    buffer = io.BytesIO()
    document.save(buffer)
    path = tmp_path / "doc.docx"
    path.write_bytes(_with_footnotes(buffer.getvalue()))

    text = "\n".join(s.text for s in read_document(path, "doc.docx"))
    expected = ["머리말", "첫문단", "가나", "다라", "마바", "안쪽", "표칸"]
    expected += ["끝문단", "꼬리말", "각주내용"]
    assert _hangul(text) == expected
    assert "가나 | 다라" in text
    assert "분리" not in text
