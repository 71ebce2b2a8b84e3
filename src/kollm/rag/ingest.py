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

import functools
import io
import re
import zipfile
from contextlib import closing
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from kollm.rag.hwp import DISTRIBUTION_NOTE, HwpError, read_hwp
from kollm.rag.layout import page_numbers
from kollm.rag.limits import (
    BoundedReader,
    Budget,
    LimitError,
    Limits,
    check_zip,
    read_member,
)
from kollm.rag.owpml import OwpmlError, section_paragraphs

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
    # where each paragraph of `text` starts, and where a reader finds it: {"section": 2,
    # "paragraph": 14, "page": 3} (HWP, HWPX); chunks are cited by the paragraph they open in
    places: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def place(self, paragraphs) -> None:
        """Set the text from (lines, where) pairs, a paragraph each: its lines joined by
        newlines, the empty ones left out."""
        parts: list[str] = []
        at = len(self.text) + 1 if self.text else 0
        for lines, where in paragraphs:
            text = "\n".join(line for line in lines if line.strip())
            if not text:
                continue
            self.places.append((at, {k: v for k, v in where.items() if v is not None}))
            parts.append(text)
            at += len(text) + 1
        self.text = "\n".join([self.text, *parts] if self.text else parts)


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
    inflated (rag.owpml); the sections' declared sizes are checked before any is read. Each
    paragraph is marked with its section, number and page (where the layout tells it)."""
    with _open_zip(path, "an HWPX") as archive:
        names = sorted(
            (n for n in archive.namelist() if re.fullmatch(r"Contents/section\d+\.xml", n)),
            key=lambda n: int(re.search(r"\d+", n).group()),
        )
        if not names:
            raise IngestError("not an HWPX file (no Contents/section*.xml)")
        check_zip(archive, budget, names)
        parsed = []
        for name in names:
            reader = BoundedReader(archive, archive.getinfo(name), budget)
            with closing(reader):
                parsed.append(section_paragraphs(reader, name))
    columns = max(s.columns for s in parsed)
    pages = iter(page_numbers([p for s in parsed for _, p in s.paragraphs], columns))
    sections = []
    for number, owpml in enumerate(parsed, 1):
        section = Section(doc_id, "")
        section.place(
            (lines, {"section": number, "paragraph": index, "page": next(pages)})
            for index, (lines, _) in enumerate(owpml.paragraphs, 1)
        )
        sections.append(section)
    return sections


def _hwp(path: Path, doc_id: str, budget: Budget) -> list[Section]:
    """HWP 5 (rag.hwp): a section per HWP section, each paragraph marked with its section,
    number and page (where the layout tells it); a distribution document's sections carry a
    note saying so."""
    try:
        document = read_hwp(str(path), budget)
    except HwpError as err:
        raise IngestError(str(err)) from err
    note = DISTRIBUTION_NOTE if document.distribution else None
    sections = []
    for hwp_section in document.sections:
        section = Section(doc_id, "", note=note)
        section.place(
            (p.lines, {"section": hwp_section.number, "paragraph": p.number, "page": p.page})
            for p in hwp_section.paragraphs
        )
        sections.append(section)
    return sections


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
