"""Korean text normalisation that keeps what the text means.

NFC is the stored form. NFKC is applied only to full-width ASCII (digits, Latin, punctuation),
never to the whole string: NFKC folds compatibility jamo (`ㅋㅠ` -> `큐`) and would change the text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# `#Person1#`, `#PhoneNumber#`: masked spans and speaker tags of DialogSum-style data.
PLACEHOLDER_RE = re.compile(r"#[A-Za-z][A-Za-z0-9_]*#")

# C0 and C1 controls except tab and newline; U+007F DEL too.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Zero-width characters, BOM, and the Hangul fillers (U+3164, U+115F, U+1160, U+FFA0) that render
# as nothing but break matching.
_INVISIBLE_RE = re.compile(r"[\u200b-\u200f\u2060-\u2064\ufeff\u3164\u115f\u1160\uffa0\u00ad]")
_FULLWIDTH_ASCII_RE = re.compile(r"[\uff01-\uff5e]+")
_SPACE_RE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_NEWLINES_RE = re.compile(r"\n{3,}")
_LINE_EDGE_RE = re.compile(r" *\n *")


@dataclass(frozen=True)
class NormalizeOptions:
    """What `normalize_text` changes; the defaults suit Korean chat and dialogue data."""

    max_repeat: int = 2
    """Longest run of one repeated character kept (`ㅋㅋㅋㅋ` -> `ㅋㅋ`); 0 keeps every run."""
    fullwidth_to_ascii: bool = True
    """Fold full-width digits and Latin (`０１０` -> `010`) with NFKC, and nothing else."""
    collapse_whitespace: bool = True
    """Runs of spaces become one space; three or more newlines become two."""


def _fold_fullwidth(match: re.Match[str]) -> str:
    return unicodedata.normalize("NFKC", match.group(0))


def _limit_repeats(text: str, max_repeat: int) -> str:
    # Only Hangul, jamo and expressive punctuation are shortened: `1000000`, `www.` and `...`
    # carry meaning.
    pattern = re.compile(r"([\uac00-\ud7a3\u3131-\u318e!?~^])\1{" + str(max_repeat) + ",}")
    return pattern.sub(lambda m: m.group(1) * max_repeat, text)


def normalize_text(text: str, options: NormalizeOptions | None = None) -> str:
    """Return `text` in NFC with invisible and control characters removed.

    Placeholders such as `#Person1#` pass through unchanged; decomposed (NFD) Hangul is
    recomposed; U+00A0 becomes a space.
    """
    opts = options or NormalizeOptions()
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _INVISIBLE_RE.sub("", text).replace("\u00a0", " ")
    if opts.fullwidth_to_ascii:
        text = _FULLWIDTH_ASCII_RE.sub(_fold_fullwidth, text)
    if opts.max_repeat > 0:
        text = _limit_repeats(text, opts.max_repeat)
    if opts.collapse_whitespace:
        text = _SPACE_RE.sub(" ", text)
        text = _LINE_EDGE_RE.sub("\n", text)
        text = _NEWLINES_RE.sub("\n\n", text)
    return text.strip()


def hangul_ratio(text: str) -> float:
    """Share of Hangul among the letters and digits of `text`, placeholders left out."""
    text = PLACEHOLDER_RE.sub(" ", text)
    counted = [c for c in text if c.isalnum()]
    if not counted:
        return 0.0
    hangul = sum(1 for c in counted if "\uac00" <= c <= "\ud7a3" or "\u3131" <= c <= "\u318e")
    return hangul / len(counted)


def is_placeholder_only(text: str) -> bool:
    """True when nothing but placeholders, spaces and punctuation remains."""
    rest = PLACEHOLDER_RE.sub("", text)
    return not any(c.isalnum() for c in rest)
