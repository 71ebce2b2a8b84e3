"""`train.eval_generation` and `train.early_stopping`: score real answers while training.

Every N steps the model (causal for sft, encoder-decoder for seq2seq) answers a fixed dev
sample (greedy) and the answers are scored with the metric `kollm eval` reports (morpheme
ROUGE, from `kollm.text.rouge`, or exact match) or graded 1-10 by an LLM judge against the
reference (`kollm.grading`, over an OpenAI-compatible endpoint); the score is appended to
loss.jsonl as `eval_<metric>`. An evaluation the judge cannot grade is a warning and a
missing score (`null`, with `error`), never a stopped run nor a zero. With early stopping,
each new best writes the trainable weights to `train_dir/best_eval/`; after `patience`
evaluations without a gain of more than `min_delta` training stops, and at the end of
training the best weights are loaded back into the model, so the model `train_and_save`
writes is the best-scoring one. The step and score of the best (and the count of missing
evaluations) are kept in `train_dir/eval_generation.json`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kollm.config import EvalConfig, JudgeEndpointConfig, Recipe
from kollm.data.io import write_json
from kollm.endpoint import EndpointError
from kollm.prompts import PromptFormat, recipe_format, record_prompt, references
from kollm.text.rouge import corpus_rouge

log = logging.getLogger("kollm.train")
# (predictions, references, questions) -> the score, or None when it could not be had
Scorer = Callable[[list[str], list[list[str]], list[str]], float | None]


class ScoreMissing(RuntimeError):
    """An evaluation that could not be scored (the judge failed or gave no verdict)."""


def make_scorer(metric: str, cfg: EvalConfig, judge: JudgeEndpointConfig | None = None) -> Scorer:
    """The recipe's metric over (predictions, references, questions): ROUGE as `kollm eval`
    computes it, the share of answers equal (after stripping) to one of their references, or
    the judge's mean grade."""
    if metric == "judge":
        if judge is None:
            raise ValueError("metric judge needs train.eval_generation.judge")
        return judge_scorer(judge)
    if metric == "exact_match":
        return lambda preds, refs, _questions: (
            sum(p.strip() in {r.strip() for r in rs} for p, rs in zip(preds, refs, strict=True))
            / max(len(preds), 1)
        )
    key = "score" if metric == "rouge" else metric
    args = {
        "tokenize": cfg.tokenize,
        "multi_ref": cfg.multi_ref,
        "morpheme_tokenizer": cfg.morpheme_tokenizer,
    }
    return lambda preds, refs, _questions: corpus_rouge(preds, refs, **args)[0][key]


def judge_scorer(cfg: JudgeEndpointConfig) -> Scorer:
    """The mean 1-10 grade the judge gives the answers against their first reference. No
    cache: the answers change at every evaluation, and a training node need not reach the
    store. Raises ScoreMissing when the endpoint fails (after its retries) or no verdict
    parses."""
    from kollm.endpoint import EndpointClient
    from kollm.grading import JudgeEndpoint, grade

    endpoint = JudgeEndpoint(
        cfg.url,
        cfg.model,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        timeout_s=cfg.timeout_s,
    )
    client = EndpointClient(endpoint, None, cfg.concurrency, cfg.retries)

    def score(preds: list[str], refs: list[list[str]], questions: list[str]) -> float:
        rows = [
            {"id": i, "question": q, "answer": p, "reference": r[0] if r else None}
            for i, (q, p, r) in enumerate(zip(questions, preds, refs, strict=True))
        ]
        try:
            grades = [g.score for g in grade(client, rows) if g.score is not None]
        except EndpointError as err:
            raise ScoreMissing(f"the judge at {cfg.url} failed: {err}") from err
        if not grades:
            raise ScoreMissing(f"the judge at {cfg.url} gave no parseable verdict")
        return sum(grades) / len(grades)

    return score


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers, a batch of prompts at a time (left-padded for a causal model); the
    model's mode and the tokenizer's padding side are put back afterwards."""
    import torch

    was_training, side = model.training, tokenizer.padding_side
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    model.eval()
    if not seq2seq:
        tokenizer.padding_side = "left"  # a causal model continues from the prompt's last token
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), 8):
            batch = tokenizer(prompts[start : start + 8], return_tensors="pt", padding=True)
            batch = batch.to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            # an encoder-decoder's output is the answer alone; a causal one's repeats the prompt
            new = out if seq2seq else out[:, batch["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


class GenerationEval(TrainerCallback):
    """Generates on the dev sample every `every_steps`, logs the score, stops early."""

    def __init__(
        self, recipe: Recipe, records: list[dict[str, Any]], tokenizer, scorer: Scorer
    ) -> None:
        t = recipe.train
        self.cfg, self.patience, self.min_delta = t.eval_generation, *_early(recipe)
        fmt: PromptFormat = recipe_format(recipe)
        sample = records[: self.cfg.samples]
        self.prompts = [record_prompt(fmt, r, tokenizer) for r in sample]
        self.refs = [references(fmt, r) for r in sample]
        self.questions = [_question(fmt, r, p) for r, p in zip(sample, self.prompts, strict=True)]
        self.tokenizer, self.scorer = tokenizer, scorer
        self.train_dir = recipe.train_dir
        self.best: float | None = None
        self.best_step: int | None = None
        self.waited = 0
        self.missing = 0

    @property
    def key(self) -> str:
        return f"eval_{self.cfg.metric}"

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.cfg.every_steps or model is None:
            return control
        preds = generate_answers(model, self.tokenizer, self.prompts, self.cfg.max_new_tokens)
        try:
            score = float(self.scorer(preds, self.refs, self.questions))
        except ScoreMissing as err:
            # a judge that is down must not end hours of training, nor pass for a bad score
            self.missing += 1
            log.warning("train: step %d, %s missing: %s", state.global_step, self.key, err)
            self._log(state, {self.key: None, "error": str(err)})
            return control
        self._log(state, {self.key: score})
        log.info("train: step %d, %s %.4f", state.global_step, self.key, score)
        if self.patience is not None:
            self._track(score, state, model, args.process_index, control)
        return control

    def _log(self, state, entry: dict[str, Any]) -> None:
        if state.is_world_process_zero:
            with (self.train_dir / "loss.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **entry}) + "\n")

    def _track(self, score: float, state, model, rank: int, control) -> None:
        """A gain records the best (and its weights); `patience` evaluations without one stop."""
        if self.best is None or score > self.best + self.min_delta:
            self.best, self.best_step, self.waited = score, state.global_step, 0
            _save_trainable(model, self._weights(rank))
            return
        self.waited += 1
        if self.waited >= self.patience:
            log.info(
                "train: early stop at step %d; best step %d", state.global_step, self.best_step
            )
            control.should_training_stop = True

    def _weights(self, rank: int) -> Path:
        return self.train_dir / "best_eval" / f"weights-{rank}.pt"

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.best_step is None or model is None:
            return control
        if self.best_step != state.global_step:
            _load_trainable(model, self._weights(args.process_index))
        if state.is_world_process_zero:
            write_json(
                self.train_dir / "eval_generation.json",
                {
                    "metric": self.cfg.metric,
                    "best_step": self.best_step,
                    "best_score": self.best,
                    "last_step": state.global_step,
                    "missing": self.missing,
                },
            )
        return control


def _question(fmt: PromptFormat, record: dict[str, Any], prompt: str) -> str:
    """What the judge is told was asked: a chat's last user turn, else the rendered prompt
    (a chat prompt carries the template's special tokens)."""
    if fmt.style == "chat_template":
        users = [m["content"] for m in record["messages"][:-1] if m.get("role") == "user"]
        return users[-1] if users else prompt
    return prompt


def _early(recipe: Recipe) -> tuple[int | None, float]:
    e = recipe.train.early_stopping
    return e.patience, e.min_delta


def _save_trainable(model, path: Path) -> None:
    """The weights training changes (all of them, or an adapter's), on disk rather than in
    memory: a full model's copy would double its host memory."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {n: t.detach().cpu() for n, t in model.state_dict().items() if n in trainable}
    torch.save(state, path)


def _load_trainable(model, path: Path) -> None:
    import torch

    missing = model.load_state_dict(torch.load(path, weights_only=True), strict=False)
    log.info("train: restored the best eval_generation weights from %s", path)
    if missing.unexpected_keys:
        raise RuntimeError(f"best weights do not fit the model: {missing.unexpected_keys[:3]}")


def generation_eval(recipe: Recipe, dev: list[dict[str, Any]], tokenizer) -> list[TrainerCallback]:
    """The callback when `train.eval_generation` is on and there are dev records."""
    cfg = recipe.train.eval_generation
    if cfg.every_steps is None:
        return []
    if not dev:
        raise ValueError("train.eval_generation needs a dev split to generate on")
    scorer = make_scorer(cfg.metric, recipe.eval or EvalConfig(), cfg.judge)
    return [GenerationEval(recipe, dev, tokenizer, scorer)]
