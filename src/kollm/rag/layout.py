"""Pages from the line layout a word processor saves: Hancom Office keeps, for each line of a
paragraph, its vertical position on the page as last laid out (HWP's PARA_LINE_SEG, HWPX's
<hp:lineseg vertpos>), so the page a paragraph starts on can be counted without laying the
document out again."""

from __future__ import annotations

FIRST_SEGMENT = 1 << 17  # of a line segment's flags: the first segment of its line


def line_positions(segments) -> list[int]:
    """The positions of lines from (position, flags) of segments: with no segment flagged
    first of its line (a writer that sets no flags) every segment is a line."""
    segments = list(segments)
    if not any(flags & FIRST_SEGMENT for _, flags in segments):
        return [v for v, _ in segments]
    return [v for v, flags in segments if flags & FIRST_SEGMENT]


def page_numbers(positions: list[list[int]], columns: int = 1) -> list[int | None]:
    """The page of each paragraph from the vertical positions of its lines (in order through
    the document): a line not below the one before starts a page. None for all when the
    layout says nothing (no positions, or every line at the top: a file no word processor
    laid out) or when a column definition has more than one column."""
    flat = [v for line in positions for v in line]
    if columns > 1 or not any(flat):
        return [None] * len(positions)
    pages: list[int | None] = []
    page, previous = 1, None
    for lines in positions:
        first = None
        for v in lines:
            if previous is not None and v <= previous:
                page += 1
            previous = v
            first = page if first is None else first
        pages.append(first if first is not None else page)
    return pages
