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
_MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"
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
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

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
    # a text box: Word keeps its text twice, as the drawing and as a VML fallback
    box = document.add_paragraph()._p
    box.append(
        parse_xml(
            f'<w:r {nsdecls("w")} xmlns:mc="{_MC}"><mc:AlternateContent>'
            "<mc:Choice Requires='wps'><w:t>글상자</w:t></mc:Choice>"
            "<mc:Fallback><w:t>글상자</w:t></mc:Fallback></mc:AlternateContent></w:r>"
        )
    )
    buffer = io.BytesIO()
    document.save(buffer)
    path = tmp_path / "doc.docx"
    path.write_bytes(_with_footnotes(buffer.getvalue()))

    text = "\n".join(s.text for s in read_document(path, "doc.docx"))
    expected = ["머리말", "첫문단", "가나", "다라", "마바", "안쪽", "표칸"]
    expected += ["끝문단", "글상자", "꼬리말", "각주내용"]
    assert _hangul(text) == expected
    assert "가나 | 다라" in text
    assert "분리" not in text


def _pdf(pages: list[bytes | None]) -> bytes:
    """A minimal PDF: a page's content stream draws text (bytes), or None for a page with
    only an image (a scan: no text layer)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")  # 3
    objects.append(  # 4: a 2x2 grey image
        b"<< /Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray"
        b" /BitsPerComponent 8 /Length 4 >>\nstream\n\x10\x80\x80\x10\nendstream"
    )
    kids = []
    for text in pages:
        body = (
            b"BT /F1 24 Tf 72 700 Td (" + text + b") Tj ET"
            if text
            else b"q 500 0 0 700 50 50 cm /Im1 Do Q"
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(body) + body + b"\nendstream")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
            b" /Resources << /Font << /F1 3 0 R >> /XObject << /Im1 4 0 R >> >> >>" % len(objects)
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [" + b" ".join(kids) + b"] /Count %d >>" % len(kids)
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_a_pdf_page_without_a_text_layer_is_named_in_the_report(tmp_path):
    pytest.importorskip("pypdf")
    from kollm.rag.index import RagIndex

    root = tmp_path / "docs"
    root.mkdir()
    (root / "mixed.pdf").write_bytes(_pdf([b"Parking permits", None, b"Opening hours", None]))
    (root / "scan.pdf").write_bytes(_pdf([None, None]))
    report = RagIndex(tmp_path / "home").index_paths("c", [root])
    assert report.indexed == 1
    notes = {n["path"].rsplit("/", 1)[-1]: n["note"] for n in report.notes}
    assert notes == {"mixed.pdf": "pages 2, 4: no text layer (scanned?), OCR needed"}
    reasons = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in report.failures}
    assert reasons == {"scan.pdf": "no text layer on any page (scanned?), OCR needed"}
    assert RagIndex(tmp_path / "home").search("c", "Parking permits")[0].doc_id == "mixed.pdf"
