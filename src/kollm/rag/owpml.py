"""OWPML (the XML of an HWPX section, Contents/sectionN.xml) to text, in reading order.

Parsed incrementally with lxml (already installed with python-docx): entities are not
resolved, nothing is fetched, a document type declaration (where entities would be declared)
is refused, and nesting deeper than MAX_DEPTH is refused, so a hostile section costs time and
memory in proportion to its size. Elements are matched by local name within any Hancom HWPML
namespace (hp = http://www.hancom.co.kr/hwpml/2011/paragraph, hp10 = .../2016/paragraph), not
by prefix, since a writer may bind any prefix.

Text: each paragraph (<p>) is a line made of its runs' <t> text; inside <t>, <lineBreak/>
and <tab/> become a newline and a tab, and the text after an inline element (its tail) is
kept. Paragraphs nested in a paragraph (text boxes, shapes, headers, notes: <subList>) follow
it as lines of their own; a table (<tbl>) is a line per row, its cells joined by " | " (a
cell's paragraphs by spaces), so a chunk of a table still reads as rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO

from kollm.rag.layout import line_positions

HANCOM = "{http://www.hancom.co.kr/hwpml/"
MAX_DEPTH = 200  # real sections nest ~10 elements per table level; libxml2 stops at 256
CELL_SEPARATOR = " | "
# inline elements of <t> that stand for a character
_INLINE = {"lineBreak": "\n", "tab": "\t", "nbSpace": " ", "fwSpace": " ", "hyphen": "-"}


class OwpmlError(ValueError):
    """A section that is not well-formed or not allowed; the message names the part."""


def _local(element) -> str | None:
    """The local name of a Hancom HWPML element; None for anything else."""
    tag = element.tag
    if isinstance(tag, str) and tag.startswith(HANCOM):
        return tag.rpartition("}")[2]
    return None


class _Lines:
    """Lines of text being written: a paragraph's pieces until it ends."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._pieces: list[str] = []

    def write(self, text: str | None) -> None:
        if text:
            self._pieces.append(text)

    def end(self) -> None:
        line = "".join(self._pieces)
        self._pieces = []
        if line.strip():
            self.lines.append(line)


def _text_run(t, out: _Lines) -> None:
    """The text of a <t>: its text, inline elements as characters, and their tails."""
    out.write(t.text)
    for child in t:
        name = _local(child)
        if name in _INLINE:
            out.write(_INLINE[name])
        else:  # markers (markpenBegin, insertBegin ...) hold no text; keep any they do
            _text_run(child, out)
        out.write(child.tail)


def _table(tbl, out: _Lines) -> None:
    out.end()
    for row in tbl:
        if _local(row) != "tr":
            continue
        cells = [" ".join(_block(cell)).strip() for cell in row if _local(cell) == "tc"]
        if any(cells):
            out.write(CELL_SEPARATOR.join(cells))
            out.end()


def _block(element) -> list[str]:
    """The lines of everything inside `element` (a table cell)."""
    out = _Lines()
    _walk(element, out)
    out.end()
    return [line.strip() for line in out.lines]


def _walk(element, out: _Lines) -> None:
    for child in element:
        name = _local(child)
        if name == "t":
            _text_run(child, out)
        elif name == "tbl":
            _table(child, out)
        elif name == "p":
            out.end()
            _walk(child, out)
            out.end()
        else:
            _walk(child, out)


def paragraph_lines(paragraph) -> list[str]:
    """The lines of one <p> and what it holds (lxml element)."""
    out = _Lines()
    _walk(paragraph, out)
    out.end()
    return out.lines


@dataclass
class OwpmlSection:
    """A section's outermost paragraphs, each as (its lines, the vertical positions of its
    lines as last laid out), empty ones included so that their numbers match the file's;
    and the most columns any column definition asks for."""

    paragraphs: list[tuple[list[str], list[int]]] = field(default_factory=list)
    columns: int = 1

    @property
    def text(self) -> str:
        return "\n".join(line for lines, _ in self.paragraphs for line in lines)


def section_paragraphs(source: IO[bytes], name: str) -> OwpmlSection:
    """The paragraphs of a section read from `source` (a file object; read in chunks, so a
    bounded reader can stop it), one line per paragraph or table row."""
    from lxml import etree

    events = etree.iterparse(
        source,
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    section = OwpmlSection()
    try:
        for paragraph in _outermost(events, name):
            section.paragraphs.append((paragraph_lines(paragraph), _positions(paragraph)))
            section.columns = max(section.columns, _columns(paragraph))
            _drop(paragraph)
    except etree.XMLSyntaxError as err:
        raise OwpmlError(f"{name} is not well-formed XML: {err.msg}") from err
    return section


def section_text(source: IO[bytes], name: str) -> str:
    """The text of a section, one line per paragraph or table row."""
    return section_paragraphs(source, name).text


def _positions(paragraph) -> list[int]:
    """Its lines' vertical positions: <linesegarray><lineseg vertpos= flags=> of its own."""
    segments = []
    for array in paragraph:
        if _local(array) != "linesegarray":
            continue
        for segment in array:
            if _local(segment) == "lineseg":
                segments.append((_int(segment.get("vertpos")), _int(segment.get("flags"))))
    return line_positions(segments)


def _columns(paragraph) -> int:
    counts = [_int(e.get("colCount")) for e in paragraph.iter() if _local(e) == "colPr"]
    return max(counts, default=1)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _outermost(events, name: str):
    """Each outermost paragraph as it closes (the caller reads, then drops it), so memory
    holds one paragraph, not the section."""
    depth = open_paragraphs = 0
    for event, element in events:
        is_paragraph = _local(element) == "p"
        if event == "start":
            if depth == 0 and element.getroottree().docinfo.doctype:
                raise OwpmlError(f"{name}: a document type declaration (<!DOCTYPE>) is refused")
            depth += 1
            open_paragraphs += is_paragraph
            if depth > MAX_DEPTH:
                raise OwpmlError(f"{name}: elements nested deeper than {MAX_DEPTH}")
            continue
        depth -= 1
        if is_paragraph:
            open_paragraphs -= 1
            if open_paragraphs == 0:
                yield element


def _drop(element) -> None:
    """Free a paragraph already read, and the empty ones before it."""
    element.clear(keep_tail=True)
    parent = element.getparent()
    while parent is not None and element.getprevious() is not None:
        del parent[0]
