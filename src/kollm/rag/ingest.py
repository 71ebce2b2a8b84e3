"""Documents -> text sections: TXT, Markdown, HTML, JSONL records (`text` plus metadata),
HWP 5 (its OLE streams, a section per BodyText section, or per ViewText section decrypted in
a distribution document), HWPX (its zipped XML), PDF (pypdf, a section per page; pages with
no text layer are noted for the index report, a PDF with none refused: no OCR) and DOCX
(python-docx: body paragraphs and tables in order, nested tables, text boxes, headers,
footers, footnotes and endnotes; not comments, charts or images' text).
A file that cannot be read raises IngestError
with the reason, so the index report can name it; so does an HWP, HWPX or DOCX that would
inflate past its limits (rag.limits), before it is inflated."""

from __future__ import annotations

import array
import functools
import io
import re
import sys
import zipfile
from contextlib import closing
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from kollm.rag.limits import (
    BoundedReader,
    Budget,
    LimitError,
    Limits,
    check_zip,
    inflate_raw,
    read_member,
)
from kollm.rag.owpml import OwpmlError, section_text

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".hwp", ".hwpx", ".pdf", ".docx")


class IngestError(ValueError):
    """A document that cannot be read; the message says why."""


@dataclass
class Section:
    """A piece of a document with its place: a page of a PDF, a record of a JSONL file."""

    doc_id: str
    text: str
    page: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # what the index report says of the document though it was read (not stored with chunks)
    note: str | None = None


class Sections(list):
    """A document's sections, with notes for the index report on what was not read (a PDF's
    scanned pages)."""

    def __init__(self, items=()) -> None:
        super().__init__(items)
        self.notes: list[str] = []


def read_document(path: Path, doc_id: str, limits: Limits | None = None) -> list[Section]:
    """The sections of one file, by its suffix; a compressed format (HWP, HWPX, DOCX) is
    read within `limits` [the recipe defaults]."""
    suffix = path.suffix.lower()
    readers = {".pdf": _pdf, ".jsonl": _jsonl, ".html": _html, ".htm": _html}
    bounded = {".docx": _docx, ".hwpx": _hwpx, ".hwp": _hwp}
    if suffix not in SUFFIXES:
        raise IngestError(f"unknown format {suffix or '(none)'}")
    try:
        if suffix in bounded:
            return bounded[suffix](path, doc_id, Budget(limits or Limits.from_config()))
        return readers.get(suffix, _text)(path, doc_id)
    except IngestError:
        raise
    except LimitError as err:
        raise IngestError(f"refused: {err}") from err
    except OwpmlError as err:
        raise IngestError(str(err)) from err
    except Exception as err:  # a corrupt or encrypted file: named in the report, not fatal
        raise IngestError(f"cannot read {suffix[1:].upper()}: {type(err).__name__}: {err}") from err


def _text(path: Path, doc_id: str) -> list[Section]:
    return [Section(doc_id, path.read_text(encoding="utf-8"))]


def _jsonl(path: Path, doc_id: str) -> list[Section]:
    from kollm.data.io import DataError, iter_jsonl

    sections = []
    try:
        rows = list(iter_jsonl(path))
    except DataError as err:
        raise IngestError(str(err).removeprefix(f"{path}: ")) from err
    for number, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise IngestError(f"line {number}: expected an object with a string 'text'")
        record_id = str(row.get("id", f"{doc_id}#{number}"))
        meta = {k: v for k, v in row.items() if k not in ("id", "text")}
        sections.append(Section(record_id, row["text"], None, meta))
    return sections


def _pdf(path: Path, doc_id: str) -> list[Section]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    if reader.is_encrypted:
        raise IngestError("the PDF is encrypted")
    sections = Sections(
        Section(doc_id, unwrap_lines(page.extract_text() or ""), number)
        for number, page in enumerate(reader.pages, 1)
    )
    scanned = [s.page for s in sections if not s.text.strip()]
    if scanned and len(scanned) == len(sections):
        raise IngestError("no text layer on any page (scanned?), OCR needed")
    if scanned:
        # a scan indexed as empty pages would look indexed while nothing on it can be found
        pages = ", ".join(map(str, scanned))
        sections.notes.append(
            f"page{'s' * (len(scanned) > 1)} {pages}: no text layer (scanned?), OCR needed"
        )
    return sections


_LIST_MARKER = re.compile(r"^\s*(?:[-•·○※▶■□◦*]|\d+[.)]|[가-하][.)]|제\s*\d+\s*조|[QA][.:])")
_PARAGRAPH_END = re.compile(r"[.!?。:」』)\]]\s*$")


def unwrap_lines(text: str) -> str:
    """A PDF page's lines joined back into paragraphs: a line continues the one before unless
    that one ends a sentence, is much shorter than the page's lines (a title, a paragraph's
    last line), or this one opens a list item; so the chunker sees whole sentences."""
    lines = [line.rstrip() for line in text.splitlines()]
    width = max((len(line) for line in lines), default=0)
    out: list[str] = []
    for line in lines:
        previous = out[-1] if out else ""
        joins = (
            previous.strip()
            and line.strip()
            and not _PARAGRAPH_END.search(previous)
            and len(previous) >= 0.7 * width
            and not _LIST_MARKER.match(line)
        )
        if joins:
            out[-1] = f"{previous} {line.strip()}"
        else:
            out.append(line)
    return "\n".join(out)


def _open_zip(path: Path, kind: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise IngestError(f"not {kind} file (not a zip archive)") from err


def _docx(path: Path, doc_id: str, budget: Budget) -> list[Section]:
    """python-docx loads every part of the package with `ZipFile.read`, which inflates a
    member's whole stream in one call whatever size it declares (a 408 KB file declaring 1 KB
    inflated 400 MB). So every part is inflated here within the budget and handed over
    repacked, stored without compression."""
    import docx

    packed = io.BytesIO()
    with _open_zip(path, "a DOCX") as archive, zipfile.ZipFile(packed, "w") as plain:
        check_zip(archive, budget)
        for info in archive.infolist():
            if not info.is_dir():
                plain.writestr(info.filename, read_member(archive, info, budget))
    packed.seek(0)
    document = docx.Document(packed)
    lines = _docx_header_footer(document, "header")
    lines += _docx_blocks(document.element.body)
    lines += _docx_header_footer(document, "footer")
    lines += _docx_notes(document)
    return [Section(doc_id, "\n".join(line for line in lines if line.strip()))]


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


@functools.cache
def _docx_runs():
    from lxml import etree  # python-docx's own dependency, loaded with it

    return etree.XPath(
        ".//w:t[not(ancestor::mc:Fallback)] | .//w:tab[not(ancestor::mc:Fallback)]",
        namespaces={
            "w": _W[1:-1],
            "mc": "http://schemas.openxmlformats.org/markup-compatibility/2006",
        },
    )


def _docx_blocks(parent) -> list[str]:
    """Paragraphs and tables in document order; a table row is one line, its cells joined
    by ` | ` (as rag.owpml does for HWPX), a table nested in a cell on lines of its own."""
    lines: list[str] = []
    for child in parent:
        if child.tag == f"{_W}p":
            lines.append(_docx_paragraph(child))
        elif child.tag == f"{_W}tbl":
            lines += _docx_table(child)
        elif child.tag == f"{_W}sdt":  # content controls wrap paragraphs and tables
            lines += _docx_blocks(child.iterfind(f"{_W}sdtContent/*"))
    return lines


def _docx_paragraph(p) -> str:
    """A paragraph's text; a text box is kept twice in Word's files (as drawing and as VML
    fallback for old readers), so its mc:Fallback copy is skipped."""
    parts = []
    for node in _docx_runs()(p):
        parts.append(node.text or "" if node.tag == f"{_W}t" else "\t")
    return "".join(parts)


def _docx_table(tbl) -> list[str]:
    lines: list[str] = []
    for row in tbl.iterfind(f"{_W}tr"):
        cells, nested = [], []
        for cell in row.iterfind(f"{_W}tc"):
            text = [_docx_paragraph(p) for p in cell.iterfind(f"{_W}p")]
            cells.append(" ".join(t for t in text if t.strip()))
            for inner in cell.iterfind(f"{_W}tbl"):
                nested += _docx_table(inner)
        lines.append(" | ".join(cells))
        lines += nested
    return lines


def _docx_header_footer(document, kind: str) -> list[str]:
    """Each section's header or footer once: sections usually repeat the same one."""
    lines: list[str] = []
    seen: set[str] = set()
    for section in document.sections:
        part = getattr(section, kind)
        if part.is_linked_to_previous:
            continue
        text = "\n".join(_docx_blocks(part._element))
        if text.strip() and text not in seen:
            seen.add(text)
            lines.append(text)
    return lines


def _docx_notes(document) -> list[str]:
    """Footnotes and endnotes: python-docx has no API for them, so their parts are read from
    the package, skipping the separator notes Word keeps there."""
    from lxml import etree

    lines: list[str] = []
    for part in document.part.package.iter_parts():
        if str(part.partname) not in ("/word/footnotes.xml", "/word/endnotes.xml"):
            continue
        root = etree.fromstring(part.blob)
        for note in root:
            if note.get(f"{_W}type") in ("separator", "continuationSeparator"):
                continue
            lines += _docx_blocks(note)
    return lines


def _hwpx(path: Path, doc_id: str, budget: Budget) -> list[Section]:
    """HWPX is a zip of OWPML sections (Contents/section0.xml ...), each parsed as it is
    inflated (rag.owpml); the sections' declared sizes are checked before any is read."""
    with _open_zip(path, "an HWPX") as archive:
        names = sorted(
            (n for n in archive.namelist() if re.fullmatch(r"Contents/section\d+\.xml", n)),
            key=lambda n: int(re.search(r"\d+", n).group()),
        )
        if not names:
            raise IngestError("not an HWPX file (no Contents/section*.xml)")
        check_zip(archive, budget, names)
        sections = []
        for page, name in enumerate(names, 1):
            reader = BoundedReader(archive, archive.getinfo(name), budget)
            with closing(reader):
                sections.append(Section(doc_id, section_text(reader, name), page))
        return sections


_HWP_PARA_TEXT = 0x10 + 51  # HWPTAG_BEGIN + 51
# Control characters of PARA_TEXT: these take one code unit; every other code below 32 is an
# inline or extended control of eight units (HWP 5.0 format spec, 4.3.2).
_HWP_CHAR_CONTROLS = {0, 10, 13, *range(24, 32)}


def _hwp(path: Path, doc_id: str, budget: Budget) -> list[Section]:
    """HWP 5: an OLE compound file; FileHeader says whether the section streams are
    raw-deflated, password-protected (refused) or a distribution document (its sections are
    ViewText/SectionN, AES-encrypted, instead of BodyText/SectionN); paragraphs are PARA_TEXT
    records. Each stream's stored size, and what it inflates to, is counted against the
    budget. A distribution document's sections carry a note saying so."""
    import olefile

    if not olefile.isOleFile(str(path)):
        raise IngestError("not an HWP 5 file (not an OLE compound file)")
    with olefile.OleFileIO(str(path)) as ole:
        flags = _hwp_flags(ole)
        storage = "ViewText" if flags & 4 else "BodyText"
        names = sorted(
            ("/".join(e) for e in ole.listdir() if len(e) == 2 and e[0] == storage),
            key=lambda n: int(re.sub(r"\D", "", n) or 0),
        )
        if not names and flags & 4:
            raise IngestError("a distribution HWP document (배포용 문서) with no ViewText sections")
        if not names:
            raise IngestError("not an HWP 5 file (no BodyText sections)")
        # a stream inflates to no less than it stores, so its stored size is checked first
        budget.declared((n, ole.get_size(n), ole.get_size(n)) for n in names)
        note = HWP_DISTRIBUTION_NOTE if flags & 4 else None
        sections = []
        for page, name in enumerate(names, 1):
            data = ole.openstream(name).read()
            if flags & 4:
                data = _hwp_undistribute(data, name)
            if flags & 1:
                data = inflate_raw(data, name, budget)
            else:
                budget.take(name, len(data), len(data), len(data))
            text = "\n".join(_hwp_paragraphs(data))
            sections.append(Section(doc_id, text, page, note=note))
        return sections


HWP_DISTRIBUTION_NOTE = "a distribution HWP document (배포용 문서): its text read from ViewText"


def _hwp_flags(ole) -> int:
    """The FileHeader's property bits, after refusing what cannot be read."""
    if not ole.exists("FileHeader"):
        raise IngestError("not an HWP 5 file (no FileHeader stream)")
    header = ole.openstream("FileHeader").read(256)
    if not header.startswith(b"HWP Document File"):
        raise IngestError("not an HWP 5 file (no HWP signature)")
    flags = int.from_bytes(header[36:40], "little")
    if flags & 2:
        raise IngestError("the HWP file is password-protected")
    return flags


# A distribution document's ViewText section opens with a DISTRIBUTE_DOC_DATA record
# (HWPTAG_BEGIN + 12) of 256 bytes; the rest of the stream is AES-128-ECB encrypted.
_HWP_DISTRIBUTE_DOC_DATA = 0x10 + 12


def _hwp_undistribute(data: bytes, name: str) -> bytes:
    """A ViewText section stream decrypted (what BodyText would hold: deflated or not)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    head = int.from_bytes(data[:4], "little")
    if len(data) < 260 or head & 0x3FF != _HWP_DISTRIBUTE_DOC_DATA or head >> 20 != 256:
        raise IngestError(f"distribution HWP document: {name} has no distribution record")
    key = hwp_distribution_key(data[4:260])
    tail = data[260:]
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    # ECB works on whole 16-byte blocks; Hancom pads the stream to them
    return decryptor.update(tail[: len(tail) // 16 * 16]) + decryptor.finalize()


def hwp_scramble(record: bytes) -> bytes:
    """DISTRIBUTE_DOC_DATA's 256 bytes past the first four XORed with runs of bytes from
    MSVC's rand() seeded with those four (HWP 5.0 format spec, 배포용 문서; pyhwp's
    hwp5.distdoc): each run is one rand() byte repeated 1 + rand() % 16 times. XOR is its own
    inverse, so this both scrambles and unscrambles."""
    seed = int.from_bytes(record[:4], "little")
    out, at = bytearray(record), 0
    while at < len(out):
        seed = (seed * 214013 + 2531011) & 0xFFFFFFFF
        byte = (seed >> 16) & 0xFF
        seed = (seed * 214013 + 2531011) & 0xFFFFFFFF
        run = ((seed >> 16) & 0x0F) + 1
        for i in range(at, min(at + run, len(out))):
            if i >= 4:
                out[i] ^= byte
        at += run
    return bytes(out)


def hwp_distribution_key(record: bytes) -> bytes:
    """The AES-128 key of a distribution document: 16 bytes of the unscrambled record, at
    4 plus the low four bits of its first byte."""
    plain = hwp_scramble(record)
    start = 4 + (plain[0] & 0x0F)
    return plain[start : start + 16]


def _hwp_paragraphs(data: bytes) -> list[str]:
    """The text of each PARA_TEXT record of a section stream."""
    paragraphs, at = [], 0
    while at + 4 <= len(data):
        head = int.from_bytes(data[at : at + 4], "little")
        tag, size, at = head & 0x3FF, head >> 20, at + 4
        if size == 0xFFF:
            size, at = int.from_bytes(data[at : at + 4], "little"), at + 4
        if tag == _HWP_PARA_TEXT:
            text = _hwp_text(data[at : at + size])
            if text.strip():
                paragraphs.append(text)
        at += size
    return paragraphs


# An extended or inline control (codes below 32 that are not character controls) takes eight
# code units: the code and seven more, whatever they hold (fewer where the paragraph ends).
_HWP_WIDE_CODES = "".join(chr(c) for c in range(32) if c not in _HWP_CHAR_CONTROLS)
_HWP_WIDE_CONTROL = re.compile(f"[{re.escape(_HWP_WIDE_CODES)}][\\x00-\\uffff]{{0,7}}")
_HWP_SHOWN = {"\t": "\t", "\n": "\n", "\x1e": " ", "\x1f": " ", "\x18": "-"}


def _hwp_text(payload: bytes) -> str:
    """The text of a PARA_TEXT payload (UTF-16LE code units with controls), one character per
    code unit while controls are cut out (UTF-32 holds surrogates unpaired), in memory of a
    few times its size (a list of code units cost ~40 bytes a unit)."""
    units = array.array("H", payload[: len(payload) // 2 * 2])
    if sys.byteorder == "big":
        units.byteswap()  # the payload is little-endian
    text = array.array("I", units).tobytes().decode(f"utf-32-{sys.byteorder[0]}e", "surrogatepass")
    # a tab is an inline control of eight units that shows as a tab
    text = _HWP_WIDE_CONTROL.sub(lambda m: "\t" if m.group()[0] == "\t" else "", text)
    text = re.sub("[\x00-\x1f]", lambda m: _HWP_SHOWN.get(m.group(), ""), text)
    # surrogate pairs arrive as two units: join them; one left alone is no character
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("p", "br", "div", "li", "h1", "h2", "h3", "tr"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _html(path: Path, doc_id: str) -> list[Section]:
    parser = _HtmlText()
    parser.feed(path.read_text(encoding="utf-8"))
    return [Section(doc_id, "".join(parser.parts))]
