"""HWP 5 (an OLE compound file of record streams) to text, in reading order, with where each
paragraph is found.

FileHeader says whether the section streams are raw-deflated, password-protected (refused)
or a distribution document (배포용 문서: its sections are ViewText/SectionN, AES-128-ECB
encrypted, instead of BodyText/SectionN). A section stream is a sequence of records, each with
a tag and a level; the levels make a tree (HWP 5.0 format spec, 4.2): a paragraph
(PARA_HEADER) holds its text (PARA_TEXT), its line layout (PARA_LINE_SEG) and its controls
(CTRL_HEADER); a control holds lists (LIST_HEADER followed by paragraphs): a table's cells, a
text box, a caption, a header or footer, a footnote or endnote.

Reading order: a table or drawn object (text box) is read where it stands in its paragraph's
text, a table as a line per row with its cells joined by " | " (as rag.owpml does for HWPX); a
header, footer, footnote, endnote or hidden comment (숨은 설명) after the paragraph that holds
it. Left out: equations (their script is no prose), OLE objects, charts, pictures, ruby text
(덧말) and numbers the word processor computes (page, footnote and caption numbers).

Where: paragraphs are numbered within their section from 1 (the section's top-level
paragraphs, empty ones counted, so the number matches the file's); pages are counted from the
line layout Hancom Office saves with each paragraph (a line whose vertical position is above
the line before starts a page), when the document is laid out in one column: with more, a
new column also starts at the top and the page is not known."""

from __future__ import annotations

import array
import re
import sys
from dataclasses import dataclass, field

from kollm.rag.layout import line_positions, page_numbers
from kollm.rag.limits import Budget, inflate_raw

CELL_SEPARATOR = " | "
MAX_LEVEL = 100  # real documents nest records ~20 deep; deeper is refused, not recursed into

_PARA_HEADER, _PARA_TEXT, _PARA_LINE_SEG = 0x10 + 50, 0x10 + 51, 0x10 + 53
_CTRL_HEADER, _LIST_HEADER, _TABLE = 0x10 + 55, 0x10 + 56, 0x10 + 61
# A distribution document's ViewText section opens with a DISTRIBUTE_DOC_DATA record
# (HWPTAG_BEGIN + 12) of 256 bytes; the rest of the stream is AES-128-ECB encrypted.
_DISTRIBUTE_DOC_DATA = 0x10 + 12

# Control characters of PARA_TEXT: these take one code unit; every other code below 32 is an
# inline or extended control of eight units (HWP 5.0 format spec, 4.3.2). An extended one
# stands for the paragraph's next CTRL_HEADER.
_CHAR_CONTROLS = {0, 10, 13, *range(24, 32)}
_EXTENDED = {1, 2, 3, 11, 12, 14, 15, 16, 17, 18, 21, 22, 23}
_WIDE_CODES = "".join(chr(c) for c in range(32) if c not in _CHAR_CONTROLS)
_WIDE_CONTROL = re.compile(f"[{re.escape(_WIDE_CODES)}][\\x00-\\uffff]{{0,7}}")
_SHOWN = {"\t": "\t", "\n": "\n", "\x1e": " ", "\x1f": " ", "\x18": "-"}

# controls read where they stand in the text; the rest with lists are read after it
_INLINE_CONTROLS = {"tbl ", "gso "}

DISTRIBUTION_NOTE = "a distribution HWP document (배포용 문서): its text read from ViewText"


class HwpError(ValueError):
    """An HWP file that cannot be read; the message says why."""


@dataclass
class Paragraph:
    """A section's top-level paragraph: its lines (with what it holds), its number, and the
    vertical positions of its lines as last laid out."""

    number: int
    lines: list[str]
    positions: list[int] = field(default_factory=list)
    page: int | None = None


@dataclass
class HwpSection:
    number: int
    paragraphs: list[Paragraph]


@dataclass
class HwpDocument:
    sections: list[HwpSection]
    distribution: bool
    columns: int = 1  # the most columns any column definition asks for


def read_hwp(path: str, budget: Budget) -> HwpDocument:
    """Every section of the HWP 5 file at `path`, within `budget`; pages numbered where the
    layout allows."""
    import olefile

    if not olefile.isOleFile(path):
        with open(path, "rb") as file:
            if file.read(30).startswith(b"HWP Document File V"):  # HWP 3 and older
                raise HwpError(
                    "an HWP 3 file (한글 97 or older), not read: save it as HWP 5 or HWPX"
                )
        raise HwpError("not an HWP 5 file (not an OLE compound file)")
    with olefile.OleFileIO(path) as ole:
        flags = _flags(ole)
        distribution = bool(flags & 4)
        names = _section_names(ole, distribution)
        # a stream inflates to no less than it stores, so its stored size is checked first
        budget.declared((n, ole.get_size(n), ole.get_size(n)) for n in names)
        document = HwpDocument([], distribution)
        for number, name in enumerate(names, 1):
            data = ole.openstream(name).read()
            if distribution:
                data = _undistribute(data, name)
            if flags & 1:
                data = inflate_raw(data, name, budget)
            else:
                budget.take(name, len(data), len(data), len(data))
            document.sections.append(_section(number, data, document))
    _number_pages(document)
    return document


def _section_names(ole, distribution: bool) -> list[str]:
    storage = "ViewText" if distribution else "BodyText"
    names = sorted(
        ("/".join(e) for e in ole.listdir() if len(e) == 2 and e[0] == storage),
        key=lambda n: int(re.sub(r"\D", "", n) or 0),
    )
    if not names and distribution:
        raise HwpError("a distribution HWP document (배포용 문서) with no ViewText sections")
    if not names:
        raise HwpError("not an HWP 5 file (no BodyText sections)")
    return names


def _flags(ole) -> int:
    """The FileHeader's property bits, after refusing what cannot be read."""
    if not ole.exists("FileHeader"):
        raise HwpError("not an HWP 5 file (no FileHeader stream)")
    header = ole.openstream("FileHeader").read(256)
    if not header.startswith(b"HWP Document File"):
        raise HwpError("not an HWP 5 file (no HWP signature)")
    flags = int.from_bytes(header[36:40], "little")
    if flags & 2:
        raise HwpError("the HWP file is password-protected")
    return flags


# --- distribution documents -------------------------------------------------------------


def _undistribute(data: bytes, name: str) -> bytes:
    """A ViewText section stream decrypted (what BodyText would hold: deflated or not)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    head = int.from_bytes(data[:4], "little")
    if len(data) < 260 or head & 0x3FF != _DISTRIBUTE_DOC_DATA or head >> 20 != 256:
        raise HwpError(f"distribution HWP document: {name} has no distribution record")
    key = distribution_key(data[4:260])
    tail = data[260:]
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    # ECB works on whole 16-byte blocks; Hancom pads the stream to them
    return decryptor.update(tail[: len(tail) // 16 * 16]) + decryptor.finalize()


def scramble(record: bytes) -> bytes:
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


def distribution_key(record: bytes) -> bytes:
    """The AES-128 key of a distribution document: 16 bytes of the unscrambled record, at
    4 plus the low four bits of its first byte."""
    plain = scramble(record)
    start = 4 + (plain[0] & 0x0F)
    return plain[start : start + 16]


# --- the record tree ----------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "payload", "tag")

    def __init__(self, tag: int, payload: bytes) -> None:
        self.tag, self.payload, self.children = tag, payload, []


def _tree(data: bytes) -> list[_Node]:
    """The records of a section stream as a tree by their levels: a record is the child of
    the nearest record before it one level up (a malformed jump attaches it to the nearest
    record above it)."""
    root: list[_Node] = []
    stack: list[tuple[int, _Node]] = []
    at = 0
    while at + 4 <= len(data):
        head = int.from_bytes(data[at : at + 4], "little")
        tag, level, size, at = head & 0x3FF, (head >> 10) & 0x3FF, head >> 20, at + 4
        if size == 0xFFF:
            size, at = int.from_bytes(data[at : at + 4], "little"), at + 4
        if level > MAX_LEVEL:
            raise HwpError(f"records nested deeper than {MAX_LEVEL} levels")
        node = _Node(tag, data[at : at + size])
        at += size
        while stack and stack[-1][0] >= level:
            stack.pop()
        (stack[-1][1].children if stack else root).append(node)
        stack.append((level, node))
    return root


def _section(number: int, data: bytes, document: HwpDocument) -> HwpSection:
    reader = _Reader(document)
    paragraphs = []
    top = [n for n in _tree(data) if n.tag == _PARA_HEADER]
    for index, node in enumerate(top, 1):
        paragraph = Paragraph(index, reader.paragraph(node), _positions(node))
        paragraphs.append(paragraph)
    return HwpSection(number, paragraphs)


def _positions(paragraph: _Node) -> list[int]:
    """The vertical position of each line of a paragraph as last laid out (PARA_LINE_SEG:
    36 bytes a segment, the position at 4, flags at 32). A line broken around an object is
    several segments at one position: only a line's first segment (flag bit 17) is kept."""
    for child in paragraph.children:
        if child.tag == _PARA_LINE_SEG:
            return line_positions(
                (
                    int.from_bytes(child.payload[i + 4 : i + 8], "little", signed=True),
                    int.from_bytes(child.payload[i + 32 : i + 36], "little"),
                )
                for i in range(0, len(child.payload) - 35, 36)
            )
    return []


class _Reader:
    """Lines of paragraphs and of what their controls hold."""

    def __init__(self, document: HwpDocument) -> None:
        self.document = document

    def paragraph(self, node: _Node) -> list[str]:
        controls = iter([c for c in node.children if c.tag == _CTRL_HEADER])
        text = next((c.payload for c in node.children if c.tag == _PARA_TEXT), b"")
        lines, after, piece = [], [], []
        for part in _text_parts(text):
            if isinstance(part, str):
                piece.append(part)
                continue
            control = next(controls, None)
            if control is None:
                continue
            kind = _control_id(control)
            if kind in _INLINE_CONTROLS:
                lines.append("".join(piece))
                piece = []
                lines += self.control(control, kind)
            else:
                after += self.control(control, kind)
        lines.append("".join(piece))
        return [line for line in lines + after if line.strip()]

    def control(self, node: _Node, kind: str) -> list[str]:
        if kind == "cold":
            self._columns(node.payload)
        if kind == "tbl ":
            return self.table(node)
        lines = []
        for paragraphs in _lists(node):
            for paragraph in paragraphs:
                lines += self.paragraph(paragraph)
        return lines

    def table(self, node: _Node) -> list[str]:
        """A caption (a list before the TABLE record) on its own, then a line per row."""
        lines, rows = [], {}
        for header, paragraphs, after_table in _groups(node.children):
            text = [line for p in paragraphs for line in self.paragraph(p)]
            if not after_table:
                lines += text
                continue
            row, col = _cell_address(header.payload)
            rows.setdefault(row, []).append((col, " ".join(t.strip() for t in text)))
        for row in sorted(rows):
            cells = [text for _, text in sorted(rows[row])]
            if any(cells):
                lines.append(CELL_SEPARATOR.join(cells))
        return lines

    def _columns(self, payload: bytes) -> None:
        # column definition: after the control id, a 16-bit attribute whose bits 2-9 hold
        # the number of columns
        if len(payload) >= 6:
            count = (int.from_bytes(payload[4:6], "little") >> 2) & 0xFF
            self.document.columns = max(self.document.columns, count)


def _control_id(node: _Node) -> str:
    # stored as a little-endian 32-bit number of four ASCII letters: b" lbt" is "tbl "
    return node.payload[:4][::-1].decode("latin-1")


def _cell_address(payload: bytes) -> tuple[int, int]:
    """(row, column) of a table cell's LIST_HEADER: the list's paragraph count (2 bytes),
    2 unknown, flags (4), then the column and the row (2 bytes each)."""
    if len(payload) < 12:
        return 0, 0
    return int.from_bytes(payload[10:12], "little"), int.from_bytes(payload[8:10], "little")


def _lists(node: _Node):
    """The lists a control holds, anywhere below it (a text box sits in a shape component,
    a group's shapes in their container): each LIST_HEADER's paragraphs."""
    for _, paragraphs, _ in _groups(node.children):
        yield paragraphs
    for child in node.children:
        if child.tag not in (_LIST_HEADER, _PARA_HEADER):
            yield from _lists(child)


def _groups(children: list[_Node]):
    """(LIST_HEADER, the paragraphs after it up to the next other record, whether a TABLE
    record came before it) for each list among `children`."""
    header, paragraphs, after_table = None, [], False
    for child in children:
        if child.tag == _PARA_HEADER and header is not None:
            paragraphs.append(child)
            continue
        if header is not None:
            yield header, paragraphs, after_table
        header, paragraphs = (child, []) if child.tag == _LIST_HEADER else (None, [])
        after_table = after_table or child.tag == _TABLE
    if header is not None:
        yield header, paragraphs, after_table


def _text_parts(payload: bytes):
    """The text of a PARA_TEXT payload, as strings and, for each extended control, its code
    (an int) where it stands."""
    text = _units(payload)
    at = 0
    for match in _WIDE_CONTROL.finditer(text):
        yield _shown(text[at : match.start()])
        code = ord(match.group()[0])
        if code == 9:  # a tab is an inline control of eight units that shows as a tab
            yield "\t"
        elif code in _EXTENDED:
            yield code
        at = match.end()
    yield _shown(text[at:])


def _units(payload: bytes) -> str:
    """UTF-16LE code units, one character each (UTF-32 holds surrogates unpaired, so a
    control's arguments never join a neighbour), in memory of a few times the payload."""
    units = array.array("H", payload[: len(payload) // 2 * 2])
    if sys.byteorder == "big":
        units.byteswap()  # the payload is little-endian
    return array.array("I", units).tobytes().decode(f"utf-32-{sys.byteorder[0]}e", "surrogatepass")


def _shown(text: str) -> str:
    text = re.sub("[\x00-\x1f]", lambda m: _SHOWN.get(m.group(), ""), text)
    # surrogate pairs arrive as two units: join them; one left alone is no character
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# --- pages ---------------------------------------------------------------------------------


def _number_pages(document: HwpDocument) -> None:
    paragraphs = [p for s in document.sections for p in s.paragraphs]
    pages = page_numbers([p.positions for p in paragraphs], document.columns)
    for paragraph, page in zip(paragraphs, pages, strict=True):
        paragraph.page = page
