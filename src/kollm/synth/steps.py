"""Synthesis steps: each takes records and an endpoint client and returns new records,
counting what it kept and dropped (datatrove's way). Placeholders (`#Person1#`) and code are
masked as ⟦n⟧ before a text goes to the endpoint and put back after; a text that comes back
without one of them is dropped, not repaired."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar

from kollm.data.steps.base import StepStats
from kollm.endpoint import EndpointClient

_PROTECTED = re.compile(r"```.*?```|`[^`\n]+`|#[A-Za-z]+\d*#", re.S)
_SLOT = "⟦{}⟧"
ASSISTANT = "당신은 친절하고 정확한 한국어 AI 비서입니다. 질문에 한국어로 답하세요."


def protect(text: str) -> tuple[str, list[str]]:
    """`text` with placeholders and code replaced by ⟦0⟧, ⟦1⟧ ...; and what they stood for."""
    kept: list[str] = []

    def slot(m: re.Match[str]) -> str:
        kept.append(m.group(0))
        return _SLOT.format(len(kept) - 1)

    return _PROTECTED.sub(slot, text), kept


def restore(text: str, kept: list[str]) -> str | None:
    """The protected pieces put back; None when the endpoint lost or repeated one."""
    for i, piece in enumerate(kept):
        if text.count(_SLOT.format(i)) != 1:
            return None
        text = text.replace(_SLOT.format(i), piece)
    return text


class SynthStep:
    name: ClassVar[str] = "synth"
    template: ClassVar[str] = ""  # the prompt; its hash goes into the lineage

    def __init__(self, client: EndpointClient, seed: int = 0) -> None:
        self.client, self.seed = client, seed
        self.stats = StepStats(self.name)  # the data steps' counters: seen, kept, dropped, why
        self.advance = None  # called with 1 after each record (a progress bar)

    @classmethod
    def template_sha(cls) -> str:
        return hashlib.sha256(cls.template.encode()).hexdigest()[:16]

    def ask(self, system: str, user: str, seed: int | None = None, **params: Any) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.client.complete(
            messages, self.seed if seed is None else seed, step=self.name, **params
        )

    def drop(self, reason: str) -> None:
        self.stats.dropped += 1
        self.stats.reasons[reason] += 1

    def run(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.stats.seen += len(records)
        out = [r for r in self.client.map(self.one, records, self.advance) if r is not None]
        results = [row for r in out for row in (r if isinstance(r, list) else [r])]
        self.stats.kept += len(results)
        return results

    def one(self, record: dict[str, Any]):
        raise NotImplementedError


class Translator(SynthStep):
    """English instruction data (Alpaca's instruction/input/output) into Korean."""

    name = "translate"
    template = (
        "You are a professional English-to-Korean translator. Translate the user's text into "
        "natural Korean. Keep every token like ⟦0⟧ exactly as it is, once each. Reply with the "
        "translation only."
    )
    fields = ("instruction", "input", "output")

    def translate(self, text: str) -> str | None:
        if not text.strip():
            return text
        masked, kept = protect(text)
        return restore(self.ask(self.template, masked).strip(), kept)

    def one(self, record):
        out = dict(record)
        for name in self.fields:
            if isinstance(record.get(name), str):
                translated = self.translate(record[name])
                if translated is None:
                    self.drop("placeholder_lost")
                    return None
                out[name] = translated
        out["translated_from"] = {k: record[k] for k in self.fields if k in record}
        return out


class Answerer(SynthStep):
    """An `output` for each instruction that has none (KoAlpaca's answering)."""

    name = "answer"
    template = ASSISTANT

    def __init__(self, client, seed: int = 0, field: str = "instruction") -> None:
        super().__init__(client, seed)
        self.field = field

    def one(self, record):
        if str(record.get("output") or "").strip():
            return dict(record)
        question = str(record.get(self.field) or "").strip()
        if not question:
            self.drop(f"no_{self.field}")
            return None
        if str(record.get("input") or "").strip():
            question = f"{question}\n\n{record['input']}"
        answer = self.ask(self.template, question).strip()
        if not answer:
            self.drop("empty_answer")
            return None
        return {**record, "output": answer}


class BackTranslator(SynthStep):
    """ko -> en -> ko paraphrases of `fields` (dialogues, summaries), placeholders kept."""

    name = "back_translate"
    template = (
        "Translate the user's text into {target}. Keep every token like ⟦0⟧ exactly as it is, "
        "once each, and keep the line breaks. Reply with the translation only."
    )

    def __init__(self, client, seed: int = 0, fields: tuple[str, ...] = ("dialogue",)) -> None:
        super().__init__(client, seed)
        self.fields = fields

    def paraphrase(self, text: str) -> str | None:
        masked, kept = protect(text)
        english = self.ask(self.template.format(target="English"), masked).strip()
        if restore(english, kept) is None:
            return None
        korean = self.ask(self.template.format(target="Korean"), english).strip()
        return restore(korean, kept)

    def one(self, record):
        out = {**record, "augmented_from": record.get("id")}
        if "id" in record:
            out["id"] = f"{record['id']}-bt"
        for name in self.fields:
            if isinstance(record.get(name), str):
                text = self.paraphrase(record[name])
                if text is None:
                    self.drop("placeholder_lost")
                    return None
                out[name] = text
        return out


def _numbered(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        m = re.match(r"\s*(?:\d+[.)]|[-*•])\s*(.+)", line)
        if m and m.group(1).strip():
            lines.append(m.group(1).strip())
    return lines


class SelfInstructor(SynthStep):
    """New instructions from seed tasks (Self-Instruct): one is kept only when its morpheme
    ROUGE-L F1 against every kept one (the seeds included) is below `max_rouge_l`."""

    name = "self_instruct"
    template = (
        "다음은 한국어 과제 지시문의 예시입니다.\n{examples}\n\n"
        "이 예시들과 다른 새 과제 지시문을 {n}개 한국어로 쓰세요. 한 줄에 하나씩, 번호를 붙여 "
        "쓰고 다른 말은 쓰지 마세요."
    )

    def __init__(self, client, seed=0, rounds=1, per_round=5, max_rouge_l=0.7) -> None:
        super().__init__(client, seed)
        self.rounds, self.per_round, self.max_rouge_l = rounds, per_round, max_rouge_l

    def run(self, records):
        from kollm.eval.rouge import rouge_l
        from kollm.text.morphemes import get_tokenizer

        tokenize = get_tokenizer("mecab").tokenize
        pool = [str(r["instruction"]) for r in records if r.get("instruction")]
        kept_tokens = [tokenize(t) for t in pool]
        new: list[dict[str, Any]] = []
        for round_ in range(self.rounds):
            examples = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(pool[-8:]))
            prompt = self.template.format(examples=examples, n=self.per_round)
            for text in _numbered(self.ask(ASSISTANT, prompt, seed=self.seed + round_)):
                self.stats.seen += 1
                tokens = tokenize(text)
                best = max((rouge_l(tokens, k).fmeasure for k in kept_tokens), default=0.0)
                if best >= self.max_rouge_l:
                    self.drop("too_similar")
                    continue
                pool.append(text)
                kept_tokens.append(tokens)
                new.append({"instruction": text, "input": "", "output": "", "rouge_l_max": best})
                self.stats.kept += 1
        return new


class Evolver(SynthStep):
    """Evol-Instruct: each instruction made deeper (constraints, reasoning steps) or broader
    (a new topic of the same kind), alternating by record."""

    name = "evolve"
    template = (
        "다음 지시문을 {how} 새 지시문 하나로 바꾸세요. 새 지시문만 쓰세요.\n\n[지시문]\n{text}"
    )
    ways = (
        "제약 조건을 하나 더하거나 추론 단계를 요구하여 더 어렵게 만든",
        "같은 분야의 다른 주제로 넓힌",
    )

    def one(self, record):
        text = str(record.get("instruction") or "").strip()
        if not text:
            self.drop("no_instruction")
            return None
        index = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 2
        evolved = self.ask(ASSISTANT, self.template.format(how=self.ways[index], text=text))
        evolved = evolved.strip()
        if not evolved or evolved == text:
            self.drop("unchanged")
            return None
        return {
            "instruction": evolved,
            "input": "",
            "output": "",
            "evolved_from": text,
            "evolution": ("deepen", "broaden")[index],
        }


def _json_object(text: str) -> dict[str, Any] | None:
    m = re.search(r"\{.*\}", text, re.S)
    if not m:
        return None
    try:
        value = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class DocQaGenerator(SynthStep):
    """A question and its answer grounded in each chunk (records of a RAG collection: `text`,
    `chunk_id`, `doc_id`), each keeping its source chunk ids."""

    name = "doc_qa"
    template = (
        "다음 [자료]만 읽고 답할 수 있는 질문 하나와 그 답을 만드세요. 답은 자료의 내용만 "
        '쓰세요. {{"question": "...", "answer": "..."}} 형식의 JSON으로만 답하세요.\n\n'
        "[자료]\n{text}"
    )

    def one(self, record):
        found = _json_object(self.ask(ASSISTANT, self.template.format(text=record["text"])))
        if not found or not all(isinstance(found.get(k), str) for k in ("question", "answer")):
            self.drop("unparseable")
            return None
        return {
            "instruction": found["question"].strip(),
            "input": "",
            "output": found["answer"].strip(),
            "sources": [record["chunk_id"]],
            "doc_id": record.get("doc_id"),
        }


class PreferenceBuilder(SynthStep):
    """`n` answers per prompt, taken in turn from `sources` (several endpoints or served
    model versions; default the step's own endpoint) under seeds 0, 1 ..., ranked by the
    judge pairwise in both orders: the answer with most wins is chosen, the one with fewest
    rejected, each with the model that gave it. A prompt whose ranking the judge could not
    settle (ties, flips) waits for a person's pick (`review: pending`)."""

    name = "preference"
    template = ASSISTANT

    def __init__(
        self, client, judge: EndpointClient, seed=0, n=2, temperature=0.8, sources=None
    ) -> None:
        super().__init__(client, seed)
        self.judge, self.n, self.temperature = judge, max(2, n), temperature
        self.sources = list(sources or [client])

    def _answer(self, prompt: str, k: int) -> tuple[str, str]:
        source = self.sources[k % len(self.sources)]
        messages = [
            {"role": "system", "content": self.template},
            {"role": "user", "content": prompt},
        ]
        seed = self.seed + k // len(self.sources)
        text = source.complete(messages, seed, step=self.name, temperature=self.temperature)
        return text, source.endpoint.model

    def one(self, record):
        from kollm.eval.judge import compare

        prompt = str(record.get("instruction") or record.get("prompt") or "").strip()
        if not prompt:
            self.drop("no_prompt")
            return None
        answered = [self._answer(prompt, k) for k in range(self.n)]
        answers, models = [a for a, _ in answered], [m for _, m in answered]
        if len(set(answers)) < 2:
            self.drop("identical_answers")
            return None
        wins = [0.0] * self.n
        beats: dict[tuple[int, int], bool] = {}  # (i, j): the judge said i beats j
        pairs = [(i, j) for i in range(self.n) for j in range(i + 1, self.n)]
        rows = [
            {"question": prompt, "answer_a": answers[i], "answer_b": answers[j]} for i, j in pairs
        ]
        for (i, j), verdict in zip(pairs, compare(self.judge, rows), strict=True):
            if verdict.winner in ("a", "b"):
                won, lost = (i, j) if verdict.winner == "a" else (j, i)
                wins[won] += 1
                beats[(won, lost)] = True
            else:  # a tie, a flip or no verdict
                wins[i] += 0.5
                wins[j] += 0.5
        best = max(range(self.n), key=lambda k: (wins[k], -k))
        worst = min(range(self.n), key=lambda k: (wins[k], k))
        # settled: one answer has the most wins and the judge preferred it to the rejected one
        unique_best = all(wins[best] > wins[k] for k in range(self.n) if k != best)
        settled = unique_best and beats.get((best, worst), False)
        return {
            "prompt": prompt,
            "chosen": answers[best],
            "rejected": answers[worst],
            "chosen_model": models[best],
            "rejected_model": models[worst],
            "answers": answers,
            "models": models,
            "wins": wins,
            "review": "judged" if settled else "pending",
        }
