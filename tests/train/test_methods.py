import json

import pytest

from kollm.config import EvalConfig, load_recipe
from kollm.engines.base import GenerationParams
from kollm.engines.lora import merge_lora
from kollm.engines.transformers_engine import TransformersEngine
from kollm.eval.evaluate import evaluate_model, read_records
from kollm.prompts import resolve_format
from kollm.train import run_training
from tests.test_config import recipe_file


def test_seq2seq_bart_from_scratch_trains_and_generates(tiny_recipe, tmp_path):
    recipe = load_recipe(
        tiny_recipe,
        [
            "train.method=seq2seq",
            "model.architecture=bart",
            "train.max_steps=40",
            "train.max_train_samples=8",
        ],
    )
    result = run_training(recipe)
    losses = [e["loss"] for e in result.losses if "loss" in e]
    assert result.method == "seq2seq" and losses[-1] < losses[0]
    records = read_records(recipe.data_dir / "dev.jsonl")
    ev = evaluate_model(
        result.model_dir, records, resolve_format("dialogue_summary"), EvalConfig(), tmp_path / "ev"
    )
    assert ev.metrics["examples"] == len(records) and "perplexity" not in ev.metrics
    assert all(isinstance(row["prediction"], str) for row in ev.predictions)
    # The CPU serving engine takes the same BART (CTranslate2 Translator, int8).
    from kollm.engines.ctranslate2_engine import CTranslate2Engine

    engine = CTranslate2Engine(result.model_dir)
    engine.load()
    (answer,) = engine.generate([records[0]["dialogue"]], GenerationParams(max_new_tokens=8))
    assert engine.is_encoder_decoder and answer.completion_tokens >= 1


def test_seq2seq_from_scratch_needs_bart(tiny_recipe):
    with pytest.raises(ValueError, match=r"needs model\.architecture: bart"):
        run_training(load_recipe(tiny_recipe, ["train.method=seq2seq"]))


def test_continued_pretraining_on_plain_text(tmp_path):
    from kollm.data.pipeline import prepare
    from kollm.samples.generate import generate_dialogues
    from tests.conftest import TINY_MODEL, write_jsonl

    rows = [
        {"text": r["dialogue"]} for r in generate_dialogues(30, seed=2, prefix="p", noise=False)
    ]
    write_jsonl(tmp_path / "corpus.jsonl", rows)
    model = ", ".join(f"{k}: {v}" for k, v in TINY_MODEL.items())
    path = recipe_file(
        tmp_path,
        f"""name: cpt
output_dir: {tmp_path}/run
data:
  input: {tmp_path}/corpus.jsonl
  kind: text
  report: {{tokenizer: null}}
  split: {{dev: 0.2}}
model: {{{model}}}
train: {{method: pretrain, max_steps: 20, batch_size: 4, learning_rate: 0.003, logging_steps: 2}}
""",
    )
    recipe = load_recipe(path)
    prepare(recipe.data, recipe.data_dir)
    result = run_training(recipe)
    losses = [e["loss"] for e in result.losses if "loss" in e]
    assert result.method == "pretrain" and losses[-1] < losses[0]
    records = read_records(recipe.data_dir / "dev.jsonl")
    ev = evaluate_model(
        result.model_dir, records, resolve_format("text"), EvalConfig(), tmp_path / "ev"
    )
    assert (
        set(ev.metrics) == {"perplexity", "examples", "model_dir"} and ev.metrics["perplexity"] > 1
    )


def test_export_merges_lora_into_a_model_that_answers_the_same(tiny_recipe, local_base, tmp_path):
    recipe = load_recipe(
        tiny_recipe,
        [
            f"model.base={local_base}",
            "train.lora.enabled=true",
            "train.max_steps=10",
            "train.learning_rate=0.05",
        ],
    )
    adapter = run_training(recipe).model_dir
    merged = merge_lora(adapter, tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists()
    prompts = [
        json.loads(x)["dialogue"][:80]
        for x in (recipe.data_dir / "dev.jsonl").read_text().splitlines()
    ]
    params = GenerationParams(max_new_tokens=8)
    assert TransformersEngine(adapter).generate(prompts, params) == TransformersEngine(
        merged
    ).generate(prompts, params)


PEFT_TYPES = {
    "lora": "LORA",
    "ia3": "IA3",
    "prompt_tuning": "PROMPT_TUNING",
    "p_tuning": "P_TUNING",
}


@pytest.fixture
def peft_base(tmp_path, tiny_recipe):
    """A random model whose layers decide its answers: in `local_base` (initialised at 0.02)
    the last token's tied embedding alone picks the next token, which no adapter reaches."""
    import torch
    from transformers import LlamaForCausalLM

    from kollm.config import ModelConfig
    from kollm.train.scratch import llama_config, train_tokenizer
    from tests.conftest import TINY_MODEL

    rows = read_records(load_recipe(tiny_recipe).split_path("train"))
    base = tmp_path / "peft_base"
    tok = train_tokenizer([r["dialogue"] + r["summary"] for r in rows], 400, base)
    ids = {k: getattr(tok, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    config = llama_config(
        ModelConfig(**TINY_MODEL), tok, tie_word_embeddings=True, initializer_range=0.3, **ids
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(base))
    return base


# Prompt tuning moves a handful of embeddings alone and takes a larger step to move them.
PEFT_LEARNING_RATES = {"lora": 0.1, "ia3": 0.1, "prompt_tuning": 1.0, "p_tuning": 0.1}


@pytest.mark.parametrize("method", list(PEFT_TYPES))
def test_each_peft_method_learns_and_changes_the_answer(tiny_recipe, peft_base, method):
    recipe = load_recipe(
        tiny_recipe,
        [
            f"model.base={peft_base}",
            "train.lora.enabled=true",
            f"train.lora.method={method}",
            "train.max_steps=8",
            f"train.learning_rate={PEFT_LEARNING_RATES[method]}",
            "train.lora.num_virtual_tokens=8",
            "train.max_train_samples=4",  # one batch: each step's loss is on the same examples
            "train.logging_steps=1",
        ],
    )
    result = run_training(recipe)
    config = json.loads((result.model_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == PEFT_TYPES[method]
    losses = [e["loss"] for e in result.losses if "loss" in e]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1  # the adapter learned
    prompts = [r["dialogue"][:16] for r in read_records(recipe.data_dir / "dev.jsonl")]
    params = GenerationParams(max_new_tokens=8)
    base = TransformersEngine(peft_base).generate(prompts, params)
    tuned = TransformersEngine(result.model_dir).generate(prompts, params)
    assert any(b.text != t.text for b, t in zip(base, tuned, strict=True))


def test_prefix_tuning_is_for_seq2seq(tiny_recipe, local_base):
    causal = load_recipe(
        tiny_recipe,
        [f"model.base={local_base}", "train.lora.enabled=true", "train.lora.method=prefix_tuning"],
    )
    with pytest.raises(ValueError, match=r"prefix_tuning works with train\.method seq2seq only"):
        run_training(causal)
    seq2seq = load_recipe(
        tiny_recipe,
        [
            "train.method=seq2seq",
            "model.architecture=bart",
            "train.lora.enabled=true",
            "train.lora.method=prefix_tuning",
            "train.max_steps=3",
            "train.lora.num_virtual_tokens=4",
        ],
    )
    result = run_training(seq2seq)
    assert (
        json.loads((result.model_dir / "adapter_config.json").read_text())["peft_type"]
        == "PREFIX_TUNING"
    )


def test_reward_model_learns_to_prefer_the_chosen_answer(tiny_recipe):
    from kollm.train.rm import score, train_reward_model

    rows = [
        json.loads(x)
        for x in (load_recipe(tiny_recipe).data_dir / "train.jsonl").read_text().splitlines()
    ]
    pairs = [
        {"prompt": r["dialogue"][:60], "chosen": r["summary"], "rejected": "모르겠습니다."}
        for r in rows[:8]
    ]
    recipe = load_recipe(tiny_recipe, ["train.max_steps=30", "train.learning_rate=0.003"])
    result = train_reward_model(recipe, pairs)
    assert result.method == "rm"
    chosen = score(result.model_dir, [f"{p['prompt']}\n{p['chosen']}" for p in pairs])
    rejected = score(result.model_dir, [f"{p['prompt']}\n{p['rejected']}" for p in pairs])
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) == len(pairs)


def preference_recipe(tmp_path, local_base, kind: str = "preference", n: int = 12):
    """A recipe over `n` pairs (a dialogue's start; its summary over a shrug) from
    `local_base`, its data stage run; `thumbs` splits each pair into a good and a bad answer."""
    from kollm.data.pipeline import prepare
    from kollm.samples.generate import generate_dialogues
    from tests.conftest import write_jsonl

    pairs = [
        {"prompt": r["dialogue"][:80], "chosen": r["summary"], "rejected": "잘 모르겠어요."}
        for r in generate_dialogues(n, seed=9, prefix="p", noise=False)
    ]
    rows = pairs
    if kind == "thumbs":
        rows = [
            {"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in pairs
            for side in ("chosen", "rejected")
        ]
    write_jsonl(tmp_path / "prefs.jsonl", rows)
    path = recipe_file(
        tmp_path,
        f"""name: prefs
output_dir: {tmp_path}/run
data:
  input: {tmp_path}/prefs.jsonl
  kind: {kind}
  report: {{tokenizer: null}}
  split: {{dev: 0.0}}
  dedup: {{near: false}}
model: {{base: {local_base}}}
train: {{method: dpo, max_steps: 3, batch_size: 2}}
""",
    )
    prepare(load_recipe(path).data, load_recipe(path).data_dir)
    return path, pairs


def margins(model_dir, pairs) -> list[float]:
    """log p(chosen | prompt) - log p(rejected | prompt) of each pair under the model, the
    answers rendered as the preference kind's default template renders them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    logp = answer_logprob
    return [
        logp(model, tokenizer, p["prompt"], " " + p["chosen"])
        - logp(model, tokenizer, p["prompt"], " " + p["rejected"])
        for p in pairs
    ]


def answer_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    import torch

    asked = tokenizer(prompt)["input_ids"]
    ids = asked + tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        # A prompt-tuning adapter's virtual tokens come first in its logits.
        logits = model(input_ids=torch.tensor([ids])).logits[0, -len(ids) : -1].log_softmax(-1)
    picked = logits[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return picked[len(asked) - 1 :].sum().item()


@pytest.mark.parametrize("method,kind", [("dpo", "preference"), ("kto", "thumbs")])
def test_preference_training_prefers_the_chosen_answer_more(tmp_path, local_base, method, kind):
    path, pairs = preference_recipe(tmp_path, local_base, kind)
    recipe = load_recipe(
        path, [f"train.method={method}", "train.max_steps=8", "train.learning_rate=0.003"]
    )
    result = run_training(recipe)
    assert result.method == method and result.global_step == 8
    before, after = margins(local_base, pairs), margins(result.model_dir, pairs)
    gained = [a - b for a, b in zip(after, before, strict=True)]
    assert all(g > 0 for g in gained)
    assert sum(gained) / len(gained) > 1.0


def test_kto_needs_a_trained_model_and_both_kinds_of_answer(tmp_path, local_base):
    path, _ = preference_recipe(tmp_path, local_base, "thumbs")
    with pytest.raises(ValueError, match=r"kto starts from a trained model: set model\.base"):
        run_training(load_recipe(path, ["train.method=kto", "model.base=scratch"]))
    good = [json.loads(x) for x in (load_recipe(path).data_dir / "train.jsonl").open()]
    good = [r for r in good if r["label"]]
    from kollm.train.dpo import train_kto

    with pytest.raises(ValueError, match="both good and bad"):
        train_kto(load_recipe(path, ["train.method=kto"]), good, local_base)
    with pytest.raises(ValueError, match=r"thumbs records \(prompt, completion, label\)"):
        train_kto(load_recipe(path), [{"id": "x", "prompt": "안녕"}], local_base)


def test_thumbs_records_need_a_true_or_false_label(tmp_path):
    from kollm.data.records import KINDS, RecordError, validate_record

    with pytest.raises(RecordError, match="label: expected true"):
        validate_record({"prompt": "안녕", "completion": "네", "label": "yes"}, KINDS["thumbs"])
    with pytest.raises(RecordError, match="missing field 'label'"):
        validate_record({"prompt": "안녕", "completion": "네"}, KINDS["thumbs"])


def test_reward_model_from_a_preference_recipe(tmp_path, local_base):
    path, _ = preference_recipe(tmp_path, local_base)
    rm = run_training(
        load_recipe(
            path,
            [
                "train.method=rm",
                "model.base=scratch",
                "model.vocab_size=300",
                "model.hidden_size=32",
                "model.layers=1",
                "model.heads=2",
                "model.intermediate_size=64",
            ],
        )
    )
    assert rm.method == "rm" and rm.global_step == 3


def sampled_reward(model_dir, prompts: list[str], scores, n: int = 16) -> float:
    """Mean reward of `n` answers sampled (seeded) from the model for each prompt, scored as
    GRPO scores them: prompt and answer joined by a newline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(0)
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(
            ids,
            do_sample=True,
            top_k=0,
            max_new_tokens=6,
            num_return_sequences=n,
            pad_token_id=tokenizer.eos_token_id,
        )
        answers = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        texts += [f"{prompt}\n{a}".strip() for a in answers]
    rewards = scores(texts)
    return sum(rewards) / len(rewards)


def hangul_in_answers(prompts: list[str]):
    """A reward that is quick to learn: the Hangul syllables in each answer."""

    def scores(texts: list[str]) -> list[float]:
        answers = [next((t[len(p) :] for p in prompts if t.startswith(p)), t) for t in texts]
        return [float(sum("가" <= c <= "힣" for c in a)) for a in answers]

    return scores


def test_grpo_raises_the_reward_of_the_answers_it_samples(tiny_recipe, local_base, monkeypatch):
    import kollm.train.rm as rm
    from kollm.prompts import recipe_format, record_prompt

    recipe = load_recipe(
        tiny_recipe,
        [
            f"model.base={local_base}",
            "train.method=grpo",
            f"train.reward_model={local_base}",  # stands in: the scorer below is the reward
            "train.max_steps=10",
            "train.num_generations=8",
            "train.max_completion_length=6",
            "train.max_train_samples=4",
            "train.learning_rate=0.05",
            "train.beta=0",
        ],
    )
    rows = [json.loads(x) for x in (recipe.data_dir / "train.jsonl").open()][:4]
    prompts = [record_prompt(recipe_format(recipe), r) for r in rows]
    scores = hangul_in_answers(prompts)
    monkeypatch.setattr(rm, "load_scorer", lambda model_dir: scores)
    result = run_training(recipe)
    assert result.method == "grpo" and result.global_step == 10
    before = sampled_reward(local_base, prompts, scores)
    after = sampled_reward(result.model_dir, prompts, scores)
    assert after > before + 1.0  # from 1.3 syllables an answer before to 3.3 after here


def test_online_rl_against_a_reward_model_loads_it_once(tiny_recipe, local_base, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from kollm.train.rm import train_reward_model

    rows = [
        json.loads(x)
        for x in (load_recipe(tiny_recipe).data_dir / "train.jsonl").read_text().splitlines()
    ]
    pairs = [{"prompt": "", "chosen": r["summary"], "rejected": "모르겠습니다."} for r in rows[:6]]
    rm = train_reward_model(load_recipe(tiny_recipe, ["train.max_steps=5"]), pairs).model_dir
    loads = []
    load = AutoModelForSequenceClassification.from_pretrained.__func__

    def counted(cls, path, *args, **kwargs):
        loads.append(str(path))
        return load(cls, path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", classmethod(counted))
    recipe = load_recipe(
        tiny_recipe,
        [
            f"model.base={local_base}",
            "train.method=grpo",
            f"train.reward_model={rm}",
            "train.max_steps=3",
            "train.num_generations=2",
            "train.max_completion_length=6",
            "train.max_train_samples=4",
            "output_dir=" + str(load_recipe(tiny_recipe).run_dir / "rl"),
            f"data.output_dir={load_recipe(tiny_recipe).data_dir}",
            "train.logging_steps=1",
        ],
    )
    result = run_training(recipe)
    assert result.method == "grpo" and result.global_step == 3
    assert (result.model_dir / "model.safetensors").exists()
    assert loads == [str(rm)]  # once for the run, though each of the 3 steps scored answers
