"""Person-name masking on bench/cases/names.jsonl: name recall and decoys kept, as
`kollm data clean` runs it (normaliser, then the PII masker), beside a baseline in the same run:
MeCab's person-name tag alone (NNP 인명), with none of the title, cue or speaker rules.
A name counts as found when `#Name#` is in the output, the name is not, and no mask character
(○◯●) is left over; a decoy (a case with no names: role words, places, code, colour codes,
hashtags, masks of places) counts as kept when the output is the input, byte for byte.

    .venv/bin/python bench/pii_names_bench.py [--show]
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from kollm.text.names import NAME, _morphemes
from kollm.text.normalize import normalize_text as normalize
from kollm.text.pii import mask_pii

CASES = Path(__file__).parent / "cases" / "names.jsonl"
_MASK_LEFT_RE = re.compile("[○◯●]")


def baseline(text: str) -> str:
    """Every morpheme MeCab tags as a person's name (NNP 인명), two syllables or more."""
    for surface, features, start in reversed(_morphemes(text)):
        if features.startswith("NNP,인명") and len(surface) >= 2:
            text = text[:start] + NAME + text[start + len(surface) :]
    return text


def score(mask, cases: list[dict]) -> tuple[float, float, list[str]]:
    found = total = kept = decoys = 0
    misses = []
    for case in cases:
        text = normalize(case["text"])
        out = mask(text)
        if case["names"]:
            for name in case["names"]:
                total += 1
                # A mask left half-done (`홍○#Name# 씨`) is a miss, not a hit.
                rest = out.replace(NAME, "")
                hit = NAME in out and name not in rest and not _MASK_LEFT_RE.search(rest)
                found += hit
                if not hit:
                    misses.append(f"missed {name!r}: {out}")
        else:
            decoys += 1
            kept += out == text
            if out != text:
                misses.append(f"decoy changed: {out}")
    return found / total, kept / decoys, misses


def main() -> None:
    cases = [json.loads(x) for x in CASES.read_text(encoding="utf-8").splitlines() if x]
    start = time.perf_counter()
    recall, kept, misses = score(lambda t: mask_pii(t).text, cases)
    seconds = time.perf_counter() - start
    base_recall, base_kept, _ = score(baseline, cases)
    names = sum(len(c["names"]) for c in cases)
    print(f"{len(cases)} cases: {names} names, {sum(not c['names'] for c in cases)} decoys")
    print(
        f"kollm      name recall {recall:.3f}  decoys kept (decoy precision) {kept:.3f}"
        f"  ({seconds:.2f} s)"
    )
    print(f"baseline   name recall {base_recall:.3f}  decoys kept {base_kept:.3f}  (NNP 인명)")
    print(f"ratio      recall x{recall / max(base_recall, 1e-9):.2f} of the baseline")
    if "--show" in sys.argv:
        print("\n".join(misses))


if __name__ == "__main__":
    main()
