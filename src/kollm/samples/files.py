"""Minimal writers of the document formats kollm reads, for the bundled document set and the
tests: HWPX (OWPML in a zip), DOCX (WordprocessingML in a zip) and PDF (a Type0 font with a
ToUnicode map, so Korean text extracts exactly; no font is embedded, as only the text matters
here). Each writes the same bytes for the same text (fixed zip dates), so the bundled files
can be checked against their generator."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
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


def _to_unicode_cmap(chars: set[str]) -> str:
    """ToUnicode map of the characters used: each 2-byte code is the character's UTF-16 unit
    (a real PDF maps only the glyphs it uses, too; a full map makes readers slow)."""
    codes = sorted(ord(c) for c in chars if ord(c) <= 0xFFFF)
    blocks = []
    for i in range(0, len(codes), 100):  # at most 100 entries a block
        part = codes[i : i + 100]
        pairs = "".join(f"<{c:04X}> <{c:04X}>\n" for c in part)
        blocks.append(f"{len(part)} beginbfchar\n{pairs}endbfchar\n")
    return (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def\n"
        "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        f"{''.join(blocks)}endcmap CMapName currentdict /CMap defineresource pop end end"
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
        _stream(_to_unicode_cmap({c for lines in pages for line in lines for c in line})),
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


# --- HWP 5: an OLE compound file (CFB v3) holding FileHeader, DocInfo and BodyText/Section0 --

_FREE, _END, _FAT_SECTOR, _NONE = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
_PARA_HEADER, _PARA_TEXT = 0x10 + 50, 0x10 + 51  # HWPTAG_BEGIN + 50, + 51


def _record(tag: int, level: int, payload: bytes) -> bytes:
    size = len(payload)
    if size >= 0xFFF:
        return (
            (tag | level << 10 | 0xFFF << 20).to_bytes(4, "little")
            + size.to_bytes(4, "little")
            + payload
        )
    return (tag | level << 10 | size << 20).to_bytes(4, "little") + payload


def hwp_section(paragraphs: list[str]) -> bytes:
    """A BodyText section: per paragraph a PARA_HEADER and a PARA_TEXT record (UTF-16LE,
    ending in 13). The first paragraph opens with an extended control (a section definition,
    eight code units), as real files do, so a reader must skip controls."""
    out = b""
    for number, text in enumerate(paragraphs):
        units = text.encode("utf-16-le") + (13).to_bytes(2, "little")
        if number == 0:
            control = (2).to_bytes(2, "little") + b"dces" + b"\0" * 8 + (2).to_bytes(2, "little")
            units = control + units
        header = (len(units) // 2).to_bytes(4, "little") + b"\0" * 18
        out += _record(_PARA_HEADER, 0, header) + _record(_PARA_TEXT, 1, units)
    return out


def _entry(name: str, kind: int, left=_NONE, right=_NONE, child=_NONE, start=0, size=0) -> bytes:
    encoded = (name + "\0").encode("utf-16-le") if name else b""
    return (
        encoded.ljust(64, b"\0")
        + len(encoded).to_bytes(2, "little")
        + bytes([kind, 1])  # type; colour black
        + b"".join(v.to_bytes(4, "little") for v in (left, right, child))
        + b"\0" * 36  # CLSID, state bits, creation and modification times
        + start.to_bytes(4, "little")
        + size.to_bytes(8, "little")
    )


def _cfb(streams: dict[str, bytes], storage: str = "BodyText") -> bytes:
    """A compound file of FileHeader, DocInfo and `storage`/Section0 (BodyText, or ViewText
    for a distribution document), every stream in the mini stream (each is under 4096 bytes,
    as the format requires of small streams)."""
    section = f"{storage}/Section0"
    order = ["DocInfo", section, "FileHeader"]
    mini, minifat, starts = b"", [], {}
    for name in order:
        data = streams[name]
        assert len(data) < 4096, f"{name} is too long for this writer"
        first, count = len(mini) // 64, max(1, -(-len(data) // 64))
        starts[name] = first
        minifat += [first + i + 1 for i in range(count - 1)] + [_END]
        mini += data.ljust(count * 64, b"\0")
    mini_sectors = -(-len(mini) // 512)
    # sectors: 0 FAT, 1-2 directory, 3 mini FAT, 4.. the mini stream
    fat = [_FAT_SECTOR, 2, _END, _END] + [5 + i for i in range(mini_sectors - 1)] + [_END]
    entries = [
        _entry("Root Entry", 5, child=2, start=4, size=len(mini)),
        _entry("DocInfo", 2, start=starts["DocInfo"], size=len(streams["DocInfo"])),
        _entry(storage, 1, left=1, right=4, child=3),
        _entry("Section0", 2, start=starts[section], size=len(streams[section])),
        _entry("FileHeader", 2, start=starts["FileHeader"], size=len(streams["FileHeader"])),
    ]
    directory = b"".join(entries).ljust(1024, b"\0")
    for i in range(5, 8):  # the unused entries of the second sector are empty, not roots
        directory = directory[: i * 128] + _entry("", 0) + directory[(i + 1) * 128 :]
    header = (
        bytes.fromhex("D0CF11E0A1B11AE1")
        + b"\0" * 16
        + (0x3E).to_bytes(2, "little")
        + (3).to_bytes(2, "little")
        + bytes.fromhex("FEFF")
        + (9).to_bytes(2, "little")
        + (6).to_bytes(2, "little")
        + b"\0" * 6
        + b"".join(v.to_bytes(4, "little") for v in (0, 1, 1, 0, 4096, 3, 1, _END, 0))
        + (0).to_bytes(4, "little")
        + b"".join(_FREE.to_bytes(4, "little") for _ in range(108))
    )
    sectors = [
        b"".join(v.to_bytes(4, "little") for v in fat).ljust(512, b"\xff"),
        directory,
        b"".join(v.to_bytes(4, "little") for v in minifat).ljust(512, b"\xff"),
        mini.ljust(mini_sectors * 512, b"\0"),
    ]
    return header + b"".join(sectors)


def hwp_bytes(
    paragraphs: list[str],
    compressed: bool = True,
    flags: int = 0,
    distribute: Callable[[bytes], bytes] | None = None,
    section: bytes | None = None,
) -> bytes:
    """An HWP 5.0.3.0 document of `paragraphs` (raw-deflated BodyText when `compressed`);
    `flags` adds FileHeader property bits (2: password, 4: distribution document). With
    `distribute` it is a distribution document: its section is ViewText/Section0, what
    `distribute` makes of the (deflated) section (its distribution record and ciphertext).
    `section` replaces the section's records (a test's own, malformed ones)."""
    import zlib

    body = hwp_section(paragraphs) if section is None else section
    if compressed:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = packer.compress(body) + packer.flush()
    storage = "BodyText"
    if distribute is not None:
        body, storage, flags = distribute(body), "ViewText", flags | 4
    properties = (1 if compressed else 0) | flags
    file_header = (
        b"HWP Document File".ljust(32, b"\0")
        + (0x05000300).to_bytes(4, "little")
        + properties.to_bytes(4, "little")
    ).ljust(256, b"\0")
    streams = {"FileHeader": file_header, "DocInfo": b"\0" * 16, f"{storage}/Section0": body}
    return _cfb(streams, storage)


def write_hwp(path: Path, paragraphs: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(hwp_bytes(paragraphs))
    tmp.replace(path)
