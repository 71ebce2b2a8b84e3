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

from typing import IO

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
        cells = [" ".join(_block(cell)) for cell in row if _local(cell) == "tc"]
        out.write(CELL_SEPARATOR.join(c.strip() for c in cells))
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


def section_text(source: IO[bytes], name: str) -> str:
    """The text of a section read from `source` (a file object; read in chunks, so a bounded
    reader can stop it), one line per paragraph or table row."""
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
    try:
        return "\n".join(_paragraphs(events, name))
    except etree.XMLSyntaxError as err:
        raise OwpmlError(f"{name} is not well-formed XML: {err.msg}") from err


def _paragraphs(events, name: str):
    """Lines of each outermost paragraph, yielded as it closes and then dropped, so memory
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
                yield from paragraph_lines(element)
                _drop(element)


def _drop(element) -> None:
    """Free a paragraph already read, and the empty ones before it."""
    element.clear(keep_tail=True)
    parent = element.getparent()
    while parent is not None and element.getprevious() is not None:
        del parent[0]
