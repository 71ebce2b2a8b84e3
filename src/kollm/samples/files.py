"""Minimal writers of the document formats kollm reads, for the bundled document set and the
tests: HWPX (OWPML in a zip), DOCX (WordprocessingML in a zip) and PDF (a Type0 font with a
ToUnicode map, so Korean text extracts exactly; no font is embedded, as only the text matters
here). Each writes the same bytes for the same text (fixed zip dates), so the bundled files
can be checked against their generator."""

from __future__ import annotations

import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _zip(path: Path, members: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_STORED if name == "mimetype" else zipfile.ZIP_DEFLATED
            archive.writestr(info, text.encode("utf-8"))
    tmp.replace(path)


def write_hwpx(path: Path, sections: list[list[str]]) -> None:
    """An HWPX file: one Contents/sectionN.xml per section, one <hp:p> per paragraph."""
    members = {"mimetype": "application/hwp+zip"}
    for number, paragraphs in enumerate(sections):
        body = "".join(
            f"<hp:p><hp:run><hp:t>{escape(p)}</hp:t></hp:run></hp:p>" for p in paragraphs
        )
        members[f"Contents/section{number}.xml"] = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<hs:sec xmlns:hs="http://www.hancom.co.kr/hwpml/2011/section"'
            f' xmlns:hp="http://www.hancom.co.kr/hwpml/2011/paragraph">{body}</hs:sec>'
        )
    _zip(path, members)


_DOCX_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_DOCX_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/officeDocument" Target="word/document.xml"/></Relationships>'
)


def write_docx(path: Path, paragraphs: list[str]) -> None:
    """A DOCX file with one <w:p> per paragraph."""
    body = "".join(f"<w:p><w:r><w:t>{escape(p)}</w:t></w:r></w:p>" for p in paragraphs)
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body}</w:body></w:document>"
    )
    _zip(
        path,
        {
            "[Content_Types].xml": _DOCX_TYPES,
            "_rels/.rels": _DOCX_RELS,
            "word/document.xml": document,
        },
    )


def _to_unicode_cmap() -> str:
    """Identity ToUnicode map: each 2-byte code is the UTF-16 unit of the character."""
    highs = [h for h in range(256) if not 0xD8 <= h <= 0xDF]  # no surrogate halves
    ranges = "".join(f"<{h:02X}00> <{h:02X}FF> <{h:02X}00>\n" for h in highs)
    return (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def\n"
        "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        f"{len(highs)} beginbfrange\n{ranges}endbfrange\n"
        "endcmap CMapName currentdict /CMap defineresource pop end end"
    )


def _stream(data: str) -> str:
    return f"<< /Length {len(data.encode('latin-1'))} >>\nstream\n{data}\nendstream"


def pdf_bytes(pages: list[list[str]]) -> bytes:
    """A PDF with one page per item of `pages`, one text line per string."""
    objects: list[str | None] = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        None,  # the page tree, once the pages are numbered
        "<< /Type /Font /Subtype /Type0 /BaseFont /KollmGothic /Encoding /Identity-H"
        " /DescendantFonts [4 0 R] /ToUnicode 5 0 R >>",
        "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /KollmGothic /CIDSystemInfo"
        " << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /FontDescriptor 6 0 R"
        " /DW 1000 >>",
        _stream(_to_unicode_cmap()),
        "<< /Type /FontDescriptor /FontName /KollmGothic /Flags 4 /FontBBox [0 -200 1000 800]"
        " /ItalicAngle 0 /Ascent 800 /Descent -200 /CapHeight 700 /StemV 80 >>",
    ]
    kids = []
    for lines in pages:
        shown = "".join(f"<{line.encode('utf-16-be').hex().upper()}> Tj T*\n" for line in lines)
        objects.append(_stream(f"BT /F1 10 Tf 14 TL 40 800 Td\n{shown}ET"))
        objects.append(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842]"
            f" /Contents {len(objects)} 0 R /Resources << /Font << /F1 3 0 R >> >> >>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.7\n", []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def write_pdf(path: Path, pages: list[list[str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(pdf_bytes(pages))
    tmp.replace(path)
