"""`kollm tokenizer report`: what a base model's tokenizer costs on the user's own Korean text.

Characters per token, tokens per word (a word is a whitespace-separated eojeol: a stem with its
particles and endings) and per sentence, the share of byte-fallback or unknown pieces, and the
words it cuts into the most pieces; beside it the same figures for a byte-level BPE learnt on
that text at the same vocabulary size, so the cost of a tokenizer made for other languages is
visible. Tokens are counted in running text (a token belongs to the word its first character
is in), as training and serving see them."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kollm.data.io import read_rows

SENTENCE_END = re.compile(r"[.!?。？！]+(?=\s|$)|\n+")
BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # SentencePiece's byte fallback


class TokenizerReportError(ValueError):
    """A data file or field that gives no text; the message names it."""


@dataclass
class TokenStats:
    name: str
    vocab_size: int
    characters: int = 0
    tokens: int = 0
    words: int = 0
    sentences: int = 0
    fallback_tokens: int = 0
    longest: list[tuple[str, int]] = field(default_factory=list)
    tokens_per_word_counts: dict[int, int] = field(default_factory=dict)

    @property
    def figures(self) -> dict[str, float]:
        return {
            "chars_per_token": self.characters / max(self.tokens, 1),
            "tokens_per_word": self.tokens / max(self.words, 1),
            "tokens_per_sentence": self.tokens / max(self.sentences, 1),
            "fallback_share": self.fallback_tokens / max(self.tokens, 1),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), **self.figures}


def read_texts(path: Path, field_name: str = "text") -> list[str]:
    """The `field_name` of every JSONL/CSV/Parquet record, or every line of a .txt file."""
    if path.suffix == ".txt":
        if not path.is_file():
            raise TokenizerReportError(f"{path}: no such file")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = []
    for line, row in read_rows(path):
        value = row.get(field_name) if isinstance(row, dict) else None
        if value is None:
            raise TokenizerReportError(f"{path}:{line}: no field '{field_name}' (--field)")
        if not isinstance(value, str):
            raise TokenizerReportError(f"{path}:{line}: field '{field_name}' is not text")
        texts.append(value)
    if not texts:
        raise TokenizerReportError(f"{path}: no records")
    return texts


def _fallback_ids(tokenizer) -> set[int]:
    """Ids of pieces that are not whole characters: the unknown token, SentencePiece's byte
    pieces, and byte-level BPE pieces that hold part of a character's UTF-8 bytes."""
    ids = set()
    if tokenizer.unk_token_id is not None:
        ids.add(tokenizer.unk_token_id)
    for token, i in tokenizer.get_vocab().items():
        if BYTE_PIECE.match(token) or "\ufffd" in tokenizer.decode([i]):
            ids.add(i)
    return ids


def token_stats(tokenizer, texts: list[str], name: str, top: int = 15) -> TokenStats:
    """The figures of `tokenizer` over `texts` (a Hugging Face fast tokenizer)."""
    stats = TokenStats(name, len(tokenizer))
    fallback = _fallback_ids(tokenizer)
    per_word: Counter[int] = Counter()
    longest: dict[str, int] = {}
    for text in texts:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        stats.characters += len(text)
        stats.tokens += len(ids)
        stats.fallback_tokens += sum(i in fallback for i in ids)
        stats.sentences += max(1, len(SENTENCE_END.findall(text.strip())))
        words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
        counts = _tokens_per_word(words, offsets)
        stats.words += len(words)
        for (_, _, word), n in zip(words, counts, strict=True):
            per_word[n] += 1
            longest[word] = max(longest.get(word, 0), n)
    stats.tokens_per_word_counts = dict(sorted(per_word.items()))
    stats.longest = sorted(longest.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return stats


def _tokens_per_word(words: list[tuple[int, int, str]], offsets) -> list[int]:
    """How many tokens start inside each word (a leading space's token counts for the word)."""
    counts = [0] * len(words)
    w = 0
    for start, end in offsets:
        if end <= start:
            continue
        while w < len(words) - 1 and start >= words[w][1]:
            w += 1
        if words:
            counts[w] += 1
    return counts


def reference_bpe(texts: list[str], vocab_size: int, eos: str | None = None):
    """A byte-level BPE learnt on `texts` with (at most) `vocab_size` pieces (and `eos` as
    its one special token, when given), as a Hugging Face fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos] if eos else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    special = {"eos_token": eos, "pad_token": eos} if eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def report(base: str, texts: list[str]) -> dict[str, Any]:
    """The base tokenizer's figures and the learnt BPE's, with the ratio of each."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    ours = token_stats(tokenizer, texts, base)
    learnt = token_stats(reference_bpe(texts, len(tokenizer)), texts, "bpe-on-this-text")
    ratios = {k: ours.figures[k] / v if v else None for k, v in learnt.figures.items()}
    return {"base": ours.as_dict(), "reference": learnt.as_dict(), "base/reference": ratios}


def histogram(result: dict[str, Any], path: Path) -> Path:
    """A PNG of tokens per word for the base and the learnt BPE, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, key in ((-0.2, "base"), (0.2, "reference")):
        counts = {int(k): v for k, v in result[key]["tokens_per_word_counts"].items()}
        total = sum(counts.values()) or 1
        xs = sorted(counts)
        ax.bar(
            [x + offset for x in xs],
            [counts[x] / total for x in xs],
            width=0.4,
            label=f"{result[key]['name']} ({result[key]['tokens_per_word']:.2f}/word)",
        )
    ax.set_xlabel("tokens per word")
    ax.set_ylabel("share of words")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
