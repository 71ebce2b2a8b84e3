"""Seeded generator of the bundled Korean sample data (dialogue summaries and instructions).

The same seed gives the same files on every machine: `kollm data sample data/sample` rewrites
the bundled files and a test checks they match. Noise is planted on purpose so that the data
stage has work to do: control and zero-width characters, NFD text, full-width digits, repeated
jamo, raw PII, exact and near-duplicates, non-Korean and empty records.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from kollm.samples.topics import (
    ASIDES,
    CHIME,
    FILLERS,
    NAMES,
    OPENERS,
    SMALL_TALK,
    SURNAMES,
    TOPICS,
)

_FINAL_CONSONANT_DIGITS = set("013678")  # 영 일 삼 육 칠 팔 end in a consonant
_JOSA = {"은": "는", "이": "가", "을": "를", "과": "와"}
_SUMMARY_SLOT_RE = re.compile(r"\{P(\d)(은|이|을|과|에게|의)?\}")
_PARTICLE_SWAPS = [("은 ", "는 "), ("이 ", "가 "), ("을 ", "를 "), ("에서 ", "에 "), ("요.", "요!")]


def speaker(index: int) -> str:
    return f"#Person{index + 1}#"


def with_josa(index: int, particle: str) -> str:
    """`#Person1#은`, `#Person2#는`: the particle follows how the last digit is read."""
    tag = speaker(index)
    if particle in _JOSA and tag[-2] not in _FINAL_CONSONANT_DIGITS:
        particle = _JOSA[particle]
    return tag + particle


def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        digits = [int(c) for c in prefix + check]
        total = sum(
            d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
            for i, d in enumerate(reversed(digits))
        )
        if total % 10 == 0:
            return prefix + check
    raise AssertionError("unreachable")


def pii_values(rng: random.Random) -> dict[str, str]:
    """Raw PII of plausible shape; the masker must catch every one."""
    year, month, day = rng.randint(60, 99), rng.randint(1, 12), rng.randint(1, 28)
    # Korean domestic cards may start with 9; every card number passes the Luhn check.
    card = _luhn_complete(rng.choice("459") + "".join(rng.choices("0123456789", k=14)))
    mobile = f"010-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
    return {
        "phone": rng.choice(
            [
                mobile,
                mobile.replace("-", " "),
                f"02-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
                "#PhoneNumber#",
            ]
        ),
        "email": rng.choice(["minsu", "jiyoung.kim", "hello", "office", "seo_jun"])
        + str(rng.randint(1, 99))
        + "@"
        + rng.choice(["example.com", "mail.co.kr", "company.kr"]),
        "account": f"{rng.randint(100, 999)}-{rng.randint(100, 999)}-{rng.randint(100000, 999999)}",
        "rrn": f"{year:02d}{month:02d}{day:02d}-{rng.choice('12')}{rng.randint(100000, 999999)}",
        "card": "-".join(card[i : i + 4] for i in range(0, 16, 4)),
        "driver": f"{rng.randint(11, 28)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-{rng.randint(10, 99)}",
    }


_SLOT_PARTICLE_RE = re.compile(r"\{(\w+)\}(은|는|이(?![가-힣])|가|을|를|과|와)")
_PAIRS = {
    "은": "은는",
    "는": "은는",
    "이": "이가",
    "가": "이가",
    "을": "을를",
    "를": "을를",
    "과": "과와",
    "와": "과와",
}


def has_final_consonant(word: str) -> bool:
    """Whether `word` ends in a consonant as read aloud (`원` yes, `서` no, `3` yes)."""
    last = word.rstrip()[-1:] or "가"
    if "가" <= last <= "힣":
        return (ord(last) - 0xAC00) % 28 != 0
    return last in _FINAL_CONSONANT_DIGITS or (last.isalpha() and last.lower() in "lmnr")


def fill_slots(template: str, slots: dict[str, str]) -> str:
    """Fill `{slot}`s; a particle right after a slot takes the form its value needs."""

    def attach(m: re.Match[str]) -> str:
        value = slots[m.group(1)]
        pair = _PAIRS[m.group(2)]
        return value + pair[0 if has_final_consonant(value) else 1]

    return _SLOT_PARTICLE_RE.sub(attach, template).format(**slots)


def _summary(template: str, slots: dict[str, str]) -> str:
    text = _SUMMARY_SLOT_RE.sub(lambda m: with_josa(int(m.group(1)), m.group(2) or ""), template)
    return fill_slots(text, slots)


def _insert_reply(
    rng: random.Random, turns: list[tuple[int, str]], who: int | None, line: str
) -> None:
    """Insert `line` after a random turn, said by `who` or by someone other than that turn's speaker."""
    pos = rng.randint(1, len(turns))
    previous = turns[pos - 1][0]
    if who is None:
        who = 1 - previous if previous < 2 else rng.randint(0, 1)
    turns.insert(pos, (who, line))


def _turn_plan(rng: random.Random, spec: dict, n_speakers: int) -> list[tuple[int, str]]:
    """Core turns in order, extras and chit-chat spliced in, further speakers given lines."""
    turns = [(role, rng.choice(options)) for role, options in spec["core"]]
    extras = [(role, rng.choice(options)) for role, options in spec["extra"]]
    k = rng.randint(0, len(extras))
    start = rng.randint(1, len(turns) - 1)
    turns[start:start] = extras[:k]
    if rng.random() < 0.3:
        turns.insert(0, (rng.randint(0, 1), rng.choice(SMALL_TALK)))
    for extra_speaker in range(2, n_speakers):
        for line in rng.sample(spec["others"] + CHIME, rng.randint(1, 3)):
            _insert_reply(rng, turns, extra_speaker, line)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 4, 6, 10, 14])):
        _insert_reply(rng, turns, None, rng.choice(FILLERS))
    return [_vary(rng, who, text) for who, text in turns[:30]]


def _vary(rng: random.Random, who: int, text: str) -> tuple[int, str]:
    """An opener or an aside with its own numbers, as people add them."""
    if rng.random() < 0.3:
        text = rng.choice(OPENERS) + text
    if rng.random() < 0.25:
        aside = rng.choice(ASIDES).format(n=rng.randint(2, 59), m=rng.randint(1, 12), name="{name}")
        text = f"{text} {aside}"
    return who, text


def make_dialogue(rng: random.Random, record_id: str) -> dict[str, Any]:
    """One dialogue-summary record: 2 to 7 speakers, 2 to 30 turns."""
    topic = rng.choice(sorted(TOPICS))
    spec = TOPICS[topic]
    slots = {name: rng.choice(values) for name, values in spec["slots"].items()}
    slots.update(pii_values(rng), name=rng.choice(NAMES), surname=rng.choice(SURNAMES))
    n_speakers = rng.choices([2, 3, 4, 5, 6, 7], weights=[70, 14, 7, 4, 3, 2])[0]
    if rng.random() < 0.05:  # a short exchange: the opening question and its answer
        turns = [(role, rng.choice(options)) for role, options in spec["core"][:2]]
        summary = f"{with_josa(0, '은')} {with_josa(1, '에게')} {topic}에 관해 묻는다."
    else:
        turns = _turn_plan(rng, spec, n_speakers)
        summary = _summary(rng.choice(spec["summary"]), slots)
        if n_speakers > 2:
            others = ", ".join(speaker(i) for i in range(2, n_speakers))
            summary += f" {others}도 대화에 참여해 의견을 보탠다."
    dialogue = "\n".join(f"{speaker(who)}: {fill_slots(text, slots)}" for who, text in turns)
    return {"id": record_id, "topic": topic, "dialogue": dialogue, "summary": summary}


def add_noise(rng: random.Random, record: dict[str, Any]) -> dict[str, Any]:
    """Plant the character-level noise a web or call-centre export carries."""
    lines = record["dialogue"].split("\n")
    i = rng.randrange(len(lines))
    roll = rng.random()
    if roll < 0.25:
        pos = rng.randint(len(lines[i]) // 2, len(lines[i]))
        lines[i] = (
            lines[i][:pos]
            + rng.choice(["\u200b", "\x07", "\ufeff", "\u3164", "\x1b"])
            + lines[i][pos:]
        )
    elif roll < 0.45:
        lines[i] = lines[i].replace(" ", "\u00a0", 2)
    elif roll < 0.6:
        lines[i] = unicodedata.normalize("NFD", lines[i])
    elif roll < 0.8:
        lines[i] += " " + rng.choice(["ㅋㅋㅋㅋㅋㅋ", "ㅠㅠㅠㅠ", "ㅎㅎㅎㅎㅎ", "!!!!!"])
    else:
        lines[i] = lines[i].translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    return {**record, "dialogue": "\n".join(lines)}


def make_near_duplicate(
    rng: random.Random, record: dict[str, Any], record_id: str
) -> dict[str, Any]:
    """A copy with one turn dropped and a few particles changed: what near-dup dedup must catch."""
    lines = record["dialogue"].split("\n")
    if len(lines) > 3:
        del lines[rng.randrange(1, len(lines))]
    text = "\n".join(lines)
    for old, new in rng.sample(_PARTICLE_SWAPS, 3):
        text = text.replace(old, new, 1)
    return {**record, "id": record_id, "dialogue": text}


_ENGLISH = [
    "#Person1#: Hello, could I book a table for two tonight?\n#Person2#: Sure, what time works for you?",
    "#Person1#: The server is down again.\n#Person2#: I'll restart it right now.",
]


def generate_dialogues(
    n: int, seed: int, prefix: str, noise: bool = True
) -> Iterator[dict[str, Any]]:
    """`n` base dialogues, plus planted duplicates and junk when `noise` is on."""
    rng = random.Random(seed)
    made: list[dict[str, Any]] = []
    for i in range(n):
        record = make_dialogue(rng, f"{prefix}_{i:05d}")
        made.append(record)
        if noise and rng.random() < 0.3:
            record = add_noise(rng, record)
        yield record
        if not noise:
            continue
        roll = rng.random()
        if roll < 0.03:
            yield {**rng.choice(made), "id": f"{prefix}_{i:05d}_dup"}
        elif roll < 0.06:
            yield make_near_duplicate(rng, rng.choice(made), f"{prefix}_{i:05d}_near")
        elif roll < 0.07:
            yield {
                "id": f"{prefix}_{i:05d}_en",
                "topic": "기타",
                "dialogue": rng.choice(_ENGLISH),
                "summary": "#Person1# talks with #Person2#.",
            }
        elif roll < 0.075:
            yield {
                **made[-1],
                "id": f"{prefix}_{i:05d}_empty",
                "summary": rng.choice(["", "#Person1#"]),
            }
