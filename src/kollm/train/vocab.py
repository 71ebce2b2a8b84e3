"""`kollm tokenizer extend`: Korean pieces added to a base model's vocabulary, with their
embeddings set from the pieces they replace, so fewer tokens carry the same Korean text.

1. Learn pieces on the user's text with the `tokenizers` BPE trainer over MeCab-ko morphemes
   (the pre-tokenisation splits at morpheme boundaries, so a piece never straddles a stem and
   its particle: 민원 and 은, not 원은), and keep the N most frequent the base tokenizer cuts
   into two or more tokens.
2. Add them to the base tokenizer as added tokens (matched before the base's own splitting);
   the old ids keep their meaning, special tokens and the chat template are unchanged. A
   piece that starts a word is added with its leading space too (` 민원`), as byte-level
   tokenizers carry the space in the word's first token.
3. Grow the model's embeddings: each new input row is the mean of the base's rows for the
   pieces the old tokenizer cut the token into. An untied `lm_head` row is the row of the
   first of those pieces: the new token is first predicted where its first piece would have
   been, and training sorts out the rest (a mean of output rows would make it less likely
   than any of its pieces). A tied model shares one matrix, set by the mean rule.

The result is a model dir a recipe names as `model.base`; `kollm_vocab.json` in it records the
base, the data's sha256, N and the pieces, and the registry keeps that in the lineage of the
versions trained from it."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LINEAGE_FILE = "kollm_vocab.json"


class VocabError(ValueError):
    """An extension that cannot be made; the message names the option or the file."""


@dataclass
class Extension:
    out: Path
    pieces: list[str]  # the added tokens, in id order
    first_id: int
    lineage: dict[str, Any]


def _has_hangul(text: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for ch in text)


def morpheme_words(texts: list[str]) -> Counter[tuple[str, bool]]:
    """Each morpheme with whether it starts its word, counted over `texts`."""
    from kollm.text.morphemes import get_tokenizer

    mecab = get_tokenizer("mecab")
    counts: Counter[tuple[str, bool]] = Counter()
    for text in texts:
        for word in text.split():
            for i, morpheme in enumerate(mecab.tokenize(word)):
                counts[(morpheme, i == 0)] += 1
    return counts


def learn_pieces(texts: list[str], tokenizer, n: int, min_frequency: int = 2) -> list[str]:
    """Up to `n` pieces (` 민원` for a word's start, `민원` inside) the base lacks, ranked by
    the tokens they save over the data's words as the base then splits the rest of each word
    (an added piece is matched before the base's own merges, so one that cuts through a
    token the base already has costs tokens and is left out)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    counts = morpheme_words(texts)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # the morphemes are the words
    trainer = trainers.BpeTrainer(
        vocab_size=n * 4 + 2000, min_frequency=min_frequency, show_progress=False
    )
    bpe.train_from_iterator((" ".join([m] * c) for (m, _), c in counts.items()), trainer)
    candidates = {p for p in bpe.get_vocab() if len(p) > 1 and _has_hangul(p)}
    forms = candidates | {" " + p for p in candidates}
    words = Counter(" " + w for text in texts for w in text.split())
    saved: Counter[str] = Counter()
    count = _token_counter(tokenizer)
    for word, freq in words.items():
        if freq < min_frequency:
            continue
        base = count(word)
        for form in _forms_in(word, forms):
            i = word.find(form)
            after = count(word[i + len(form) :])
            gain = base - (count(word[:i]) + 1 + after)
            if gain > 0:
                saved[form] += gain * freq
    return [form for form, _ in saved.most_common(n)]


def _forms_in(word: str, forms: set[str]) -> set[str]:
    """The candidate forms that occur in `word` (a leading-space form only at its start)."""
    found = set()
    for start in range(len(word)):
        for end in range(start + 2, min(len(word), start + 12) + 1):
            piece = word[start:end]
            if piece in forms and (not piece.startswith(" ") or start == 0):
                found.add(piece)
    return found


def _token_counter(tokenizer):
    from functools import lru_cache

    @lru_cache(maxsize=200_000)
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    return count


def extend(base: str, texts: list[str], n: int, out: Path, data_sha256: str) -> Extension:
    """Extend `base` (a model dir or hub id) by up to `n` pieces learnt on `texts`."""
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if n < 1:
        raise VocabError(f"--add {n}: add at least one piece")
    tokenizer = AutoTokenizer.from_pretrained(base)
    old = AutoTokenizer.from_pretrained(base)
    pieces = learn_pieces(texts, tokenizer, n)
    if not pieces:
        raise VocabError("no piece the base lacks occurs twice in the data: give more text")
    first_id = len(tokenizer)
    tokenizer.add_tokens([AddedToken(p, normalized=False) for p in pieces])
    model = AutoModelForCausalLM.from_pretrained(base)
    _grow(model, old, pieces, first_id, len(tokenizer))
    lineage = {"base": base, "data_sha256": data_sha256, "added": len(pieces), "pieces": pieces}
    _save(model, tokenizer, out, lineage)
    log.info("tokenizer extend: %d pieces added to %s -> %s", len(pieces), base, out)
    return Extension(out, pieces, first_id, lineage)


def _grow(model, old_tokenizer, pieces: list[str], first_id: int, size: int) -> None:
    import torch

    model.resize_token_embeddings(size, mean_resizing=False)
    inputs = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    untied = output is not None and output.weight.data_ptr() != inputs.data_ptr()
    with torch.no_grad():
        for offset, piece in enumerate(pieces):
            ids = old_tokenizer(piece, add_special_tokens=False)["input_ids"]
            inputs[first_id + offset] = inputs[ids].mean(dim=0)
            if untied:
                output.weight[first_id + offset] = output.weight[ids[0]]


def _save(model, tokenizer, out: Path, lineage: dict[str, Any]) -> None:
    """Write the model dir whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(staged))
        tokenizer.save_pretrained(str(staged))
        (staged / LINEAGE_FILE).write_text(json.dumps(lineage, ensure_ascii=False, indent=2))
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def data_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chars_per_token(tokenizer, texts: list[str]) -> float:
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return sum(len(t) for t in texts) / max(tokens, 1)
