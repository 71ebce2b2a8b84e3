"""Typed recipe models, YAML loading, `key=value` overrides, and readable errors.

Every field's docstring is its description: `kollm recipe schema` and
docs/reference/recipe.md show it.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kollm.text.pii import PLACEHOLDERS

RecordKind = Literal["dialogue_summary", "instruction", "chat", "preference", "thumbs", "text"]
InputFormat = Literal["auto", "jsonl", "csv", "parquet", "datasets"]
PiiType = Literal[
    "rrn",
    "alien",
    "email",
    "card",
    "phone",
    "business",
    "passport",
    "driver",
    "account",
    "ip",
    "address",
    "name",
]
Tokenizer = Literal["mecab", "kiwi", "whitespace"]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key path."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class NormalizeConfig(StrictModel):
    enabled: bool = True
    """Run the normaliser (NFC, invisible and control characters, whitespace)."""
    max_repeat: int = Field(2, ge=0)
    """Longest run of one repeated Hangul, jamo or !?~ character kept (`ㅋㅋㅋ` -> `ㅋㅋ`)."""
    fullwidth_to_ascii: bool = True
    """Fold full-width digits and Latin letters (`０１０` -> `010`); nothing else gets NFKC."""


class PiiConfig(StrictModel):
    enabled: bool = True
    """Mask personal information with typed placeholders (`#PhoneNumber#`)."""
    types: list[PiiType] = Field(default_factory=lambda: sorted(set(PLACEHOLDERS) - {"address"}))
    """PII types to mask; `address` (road name + building number) is opt-in."""


class DedupConfig(StrictModel):
    exact: bool = True
    """Drop records whose normalised key text was seen before."""
    near: bool = True
    """Drop near-duplicates found with MinHash LSH on character n-grams."""
    threshold: float = Field(0.6, ge=0, le=1)
    """Estimated Jaccard similarity at or above which a record is a near-duplicate."""
    ngram: int = Field(4, ge=1, le=32)
    """Character n-gram length of the shingles (Korean particles defeat word shingles)."""
    num_perm: int = Field(128, ge=16, le=1024)
    """Number of MinHash permutations; more is more accurate and slower."""
    fields: list[str] | None = None
    """Fields compared for duplicates; default: the record kind's input fields."""


class LengthBounds(StrictModel):
    min_chars: int = Field(1, ge=0)
    """Fewest characters a field may have."""
    max_chars: int | None = Field(None, ge=1)
    """Most characters a field may have; none means no bound."""
    min_tokens: int = Field(0, ge=0)
    """Fewest tokens (with `filters.tokenizer`)."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens; none means no bound."""


class FilterConfig(StrictModel):
    lengths: dict[str, LengthBounds] = Field(default_factory=dict)
    """Length bounds per field (`dialogue`, `summary`, `messages`, ...)."""
    tokenizer: Tokenizer = "whitespace"
    """Tokenizer that counts tokens for the length bounds."""
    min_hangul_ratio: float = Field(0.3, ge=0, le=1)
    """Least share of Hangul among letters and digits of the input fields."""
    drop_placeholder_only: bool = True
    """Drop records with an empty field or one that holds nothing but placeholders."""


class SplitConfig(StrictModel):
    dev: float = Field(0.1, ge=0, lt=1)
    """Share of records for the dev split, when the input has no splits."""
    test: float = Field(0.0, ge=0, lt=1)
    """Share of records for the test split, when the input has no splits."""
    seed: int = 42
    """Seed of the shuffle before splitting."""

    @model_validator(mode="after")
    def _shares_leave_train(self) -> SplitConfig:
        if self.dev + self.test >= 1:
            raise ValueError("dev + test must be below 1")
        return self


class ReportConfig(StrictModel):
    tokenizer: str | None = "mecab"
    """`mecab`, `kiwi`, `whitespace`, or a path to a `tokenizer.json` for characters per token."""
    top_topics: int = Field(15, ge=1)
    """How many topics the report lists."""


class MixSource(StrictModel):
    input: str
    """JSONL, CSV or Parquet of this source's records (of the recipe's `kind`)."""
    weight: float = Field(gt=0)
    """Its share of the training split (weights are normalised to sum to 1)."""
    name: str = Field(min_length=1)
    """The name each of its records carries in `source`, and the report uses."""


class DataConfig(StrictModel):
    input: str | dict[str, str] | None = None
    """Path to JSONL, CSV, Parquet or a saved `datasets` dir, or a mapping split -> path; or
    give `mix` instead."""
    mix: list[MixSource] | None = None
    """Weighted sources instead of `input` (domain text with general text, so the model does
    not forget): each is cleaned and split alone (dev and test keep every source), and the
    training split samples them by weight with `split.seed`."""
    mix_by: Literal["examples", "tokens"] = "examples"
    """What the weights share out: records, or tokens (whitespace words of the text fields)."""
    mix_size: int | None = Field(None, ge=1)
    """Size of the mixed training split in `mix_by` units; default: all sources' training
    records (or tokens) together. A source smaller than its share is repeated."""
    kind: RecordKind
    """Record kind: dialogue_summary, instruction, chat, preference, thumbs or text."""
    format: InputFormat = "auto"
    """Input format; `auto` goes by the file suffix (a directory is a `datasets` dir)."""
    output_dir: str | None = None
    """Where cleaned data, stats and the report go; default `<output_dir>/data`."""
    skip_bad_lines: bool = False
    """Skip malformed lines and records (written to bad_lines.jsonl) instead of stopping."""
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    """Korean normalisation."""
    pii: PiiConfig = Field(default_factory=PiiConfig)
    """PII de-identification."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    """Exact and near-duplicate removal."""
    filters: FilterConfig = Field(default_factory=FilterConfig)
    """Quality filters."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """Train/dev/test split."""
    report: ReportConfig = Field(default_factory=ReportConfig)
    """EDA report."""
    executor: Literal["local", "ray"] = "local"
    """Where the stage runs: `local` (this process) or `ray` (Ray Data on a cluster: the same
    steps, mix and kept records, sharded output `<split>/part-NNNNN.jsonl` with manifest.json,
    stats.json and the EDA report; no `datasets` dir)."""
    ray_address: str | None = None
    """For `executor: ray`: the cluster (`host:6379`, `ray://host:10001`, or `auto` for the one
    `ray start` runs on this machine); default the `RAY_ADDRESS` environment variable, else a
    Ray started for this run alone."""
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    """For `executor: ray`: the format of the output shards (dropped records stay JSONL)."""

    @property
    def input_files(self) -> dict[str, str]:
        """Every input file by its split (`all` when unsplit), or `mix:NAME` for a source."""
        if self.mix:
            return {f"mix:{m.name}": m.input for m in self.mix}
        return self.input if isinstance(self.input, dict) else {"all": str(self.input)}

    @model_validator(mode="after")
    def _input_or_mix(self) -> DataConfig:
        if self.input is None and self.mix is None:
            raise ValueError("data.input is missing: give the input file, or data.mix")
        if self.input is not None and self.mix is not None:
            raise ValueError("give data.input or data.mix (weighted sources), not both")
        if self.executor == "local" and self.output_format != "jsonl":
            raise ValueError("data.output_format: parquet shards need data.executor: ray")
        if self.executor == "ray" and self.format == "datasets":
            raise ValueError("data.executor ray reads JSONL, CSV or Parquet files or shard dirs")
        names = [m.name for m in self.mix or []]
        if len(set(names)) != len(names):
            raise ValueError(f"data.mix: each source needs its own name, got {names}")
        return self


class ModelConfig(StrictModel):
    base: str = "scratch"
    """A Hugging Face model id, a local model dir, or `scratch` (a small model built here)."""
    architecture: Literal["llama", "bart"] = "llama"
    """For `scratch`: a Llama-style decoder or a BART-style encoder-decoder."""
    layers: int = Field(2, ge=1)
    """For `scratch`: transformer layers (each side, for BART)."""
    hidden_size: int = Field(256, ge=8)
    """For `scratch`: hidden size."""
    heads: int = Field(4, ge=1)
    """For `scratch`: attention heads."""
    intermediate_size: int = Field(512, ge=8)
    """For `scratch`: feed-forward size."""
    vocab_size: int = Field(4000, ge=300)
    """For `scratch`: size of the byte-level BPE vocabulary trained on the recipe's data."""
    max_positions: int = Field(1024, ge=64)
    """For `scratch`: longest sequence the model accepts."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: `auto` is float32 on the CPU and bfloat16 on a GPU that supports it."""
    trust_remote_code: bool = False
    """Run the modeling code a base ships beside its weights (EXAONE 3.x): off by default;
    recorded beside the trained weights, so serve and export ask for --trust-remote-code."""
    revision: str | None = None
    """The hub commit or tag of `base`; required for a hub id with `trust_remote_code`, so
    the code that runs is the code you read."""

    @model_validator(mode="after")
    def _pinned_remote_code(self) -> ModelConfig:
        from kollm.remote import is_hub_id

        if self.trust_remote_code and not self.revision and is_hub_id(self.base):
            raise ValueError(
                f"model.trust_remote_code runs {self.base}'s own Python: pin it with"
                " model.revision (a hub commit or tag), or give a local dir"
            )
        return self


class LoraSettings(StrictModel):
    enabled: bool = False
    """Train a PEFT adapter (LoRA unless `method` says otherwise) instead of all weights."""
    method: Literal["lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"] = "lora"
    """The PEFT method: LoRA, IA3, prompt tuning, prefix tuning or P-tuning."""
    num_virtual_tokens: int = Field(20, ge=1)
    """For prompt, prefix and P-tuning: the number of learnt virtual tokens."""
    r: int = Field(8, ge=1)
    """LoRA rank."""
    alpha: int = Field(16, ge=1)
    """LoRA alpha (scaling = alpha / r)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA path."""
    target_modules: list[str] | str = "all-linear"
    """Modules to adapt, e.g. [q_proj, v_proj], or `all-linear`."""
    quantize_4bit: bool = False
    """QLoRA: load the base in 4-bit (bitsandbytes; GPU only)."""


class DistributedConfig(StrictModel):
    launcher: Literal["none", "accelerate", "torchrun", "ray"] = "none"
    """How a train job starts: one process, `num_processes` through accelerate or torchrun
    (one per GPU; gloo on the CPU; used by `kollm jobs submit train|run`), or `ray`: Ray
    Train's TorchTrainer with `num_workers` workers on one node or many (`kollm train` and
    `kollm run` start it themselves)."""
    num_processes: int = Field(1, ge=1)
    """Processes on the node, usually one per GPU (accelerate, torchrun)."""
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """Plain data parallel, FSDP, or DeepSpeed (`deepspeed_config`); with accelerate through
    its flags, with ray through the Trainer's `fsdp` / `deepspeed` arguments."""
    deepspeed_config: str | None = None
    """DeepSpeed JSON config file (ZeRO stage, offload), for `strategy: deepspeed`."""
    accelerate_config: str | None = None
    """An accelerate config file; when given, it replaces the flags above for accelerate."""
    num_workers: int = Field(1, ge=1)
    """For ray: training workers (processes), usually one per GPU, across the cluster."""
    use_gpu: bool = False
    """For ray: give each worker `gpus_per_worker` GPUs (NCCL); off: CPU workers (gloo)."""
    gpus_per_worker: int = Field(1, ge=1)
    """For ray with `use_gpu`: GPUs each worker holds (more than 1 for a model one card
    cannot hold even sharded)."""
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """For ray: other resources each worker asks for (`{CPU: 4, memory: 32e9}`); Ray's
    default is 1 CPU."""
    storage_path: str | None = None
    """For ray: where checkpoints go, a path every node sees (NFS) or an `s3://` URI; a
    restarted worker group resumes from the newest one. Unset: `<run dir>/ray`."""
    max_failures: int = Field(0, ge=-1)
    """For ray: times a failed worker group (a lost node, a killed worker) is restarted from
    its newest checkpoint in `storage_path`; -1 without limit."""
    address: str | None = None
    """For ray: the cluster (`HOST:6379` or `ray://HOST:10001`); unset: RAY_ADDRESS, else
    the cluster this machine belongs to (`ray start`), else a local one."""

    @model_validator(mode="after")
    def _consistent(self) -> DistributedConfig:
        ray_only = ("num_workers", "use_gpu", "gpus_per_worker", "resources_per_worker")
        ray_only += ("storage_path", "max_failures", "address")
        if self.launcher != "ray":
            given = [name for name in ray_only if name in self.model_fields_set]
            if given:
                raise ValueError(f"train.distributed.{given[0]} is for launcher: ray")
            return self
        if "num_processes" in self.model_fields_set:
            raise ValueError("launcher ray takes train.distributed.num_workers, not num_processes")
        if self.accelerate_config:
            raise ValueError("train.distributed.accelerate_config is for launcher: accelerate")
        if "gpus_per_worker" in self.model_fields_set and not self.use_gpu:
            raise ValueError("train.distributed.gpus_per_worker needs use_gpu: true")
        if "GPU" in self.resources_per_worker:
            raise ValueError("train.distributed.resources_per_worker: give GPUs as gpus_per_worker")
        return self


class EndpointConfig(StrictModel):
    url: str
    """An OpenAI-compatible base URL (…/v1): kollm's server, vLLM, a site gateway; its key:
    $KOLLM_ENDPOINT_API_KEY (then $OPENAI_API_KEY)."""
    model: str
    """The model's id at that URL."""
    temperature: float = Field(0.7, ge=0, le=2)
    """Sampling temperature of the calls."""
    max_tokens: int = Field(512, ge=1)
    """Longest answer a call asks for."""
    timeout_s: float = Field(120.0, gt=0)
    """Seconds before a call is retried."""
    concurrency: int = Field(4, ge=1)
    """Calls in flight at once."""
    retries: int = Field(3, ge=1)
    """Tries per call (429, 5xx and connection errors, with exponential backoff)."""


class JudgeEndpointConfig(EndpointConfig):
    url: str
    """The judge's OpenAI-compatible base URL (…/v1): vLLM, kollm's server, a site gateway; its
    key: $KOLLM_JUDGE_API_KEY (then $OPENAI_API_KEY)."""
    temperature: float = Field(0.0, ge=0, le=2)
    """Sampling temperature of the judge's calls: 0, so a score moves only when the answers do."""


class EvalGenerationConfig(StrictModel):
    every_steps: int | None = Field(None, ge=1)
    """Every N optimizer steps, generate answers for a fixed sample of the dev split and score
    them; the score goes into loss.jsonl (`eval_<metric>`) and loss.png. Unset: off. For
    `train.method` sft and seq2seq."""
    samples: int = Field(16, ge=1)
    """Dev records generated each time (the first N, the same ones every time)."""
    max_new_tokens: int = Field(64, ge=1)
    """Most tokens generated per answer (greedy decoding)."""
    metric: Literal["rougeL", "rouge1", "rouge2", "rouge", "exact_match", "judge"] = "rougeL"
    """Morpheme ROUGE F1 as `kollm eval` computes it (`eval.tokenize`, `eval.morpheme_tokenizer`),
    `rouge` (the mean of the three times 100), the share of answers equal to a reference, or
    `judge`: the mean 1-10 grade of the LLM judge at `judge` against the reference answer."""
    judge: JudgeEndpointConfig | None = None
    """For `metric: judge`: the judge's endpoint. An evaluation it cannot grade (the endpoint
    failing after its retries, no verdict parsed) is logged as a warning and recorded as
    missing (`eval_judge: null` and `error` in loss.jsonl); training goes on, and early
    stopping counts only the evaluations that were graded."""

    @model_validator(mode="after")
    def _judge_needs_endpoint(self) -> EvalGenerationConfig:
        if self.metric == "judge" and self.judge is None:
            raise ValueError(
                "metric judge needs train.eval_generation.judge (url, model of the judge)"
            )
        return self


class EarlyStoppingConfig(StrictModel):
    patience: int | None = Field(None, ge=1)
    """Stop after this many generation evaluations (`eval_generation`) in a row without a gain
    of more than `min_delta`; the saved model is then the best-scoring one. Unset: off."""
    min_delta: float = Field(0.0, ge=0)
    """Smallest rise of the metric that counts as a gain."""


class TrainConfig(StrictModel):
    method: Literal["sft", "seq2seq", "pretrain", "dpo", "kto", "rm", "grpo"] = "sft"
    """`sft` (causal LM, loss on the answer), `seq2seq` (BART/T5), `pretrain` (plain text),
    `dpo` or `rm` (a reward model) on preference records (prompt, chosen, rejected), `kto` on
    thumbs records (prompt, completion, label) or preference records, or `grpo` (online RL
    against `reward_model`; TRL 1.x has no PPO)."""
    beta: float = Field(0.1, ge=0)
    """For dpo, kto and grpo: how far the model may move from the starting model (KL weight)."""
    reward_model: str | None = None
    """For grpo: the reward model dir (trained with `method: rm`) that scores sampled answers."""
    num_generations: int = Field(4, ge=2)
    """For grpo: answers sampled per prompt and compared with each other."""
    max_completion_length: int = Field(64, ge=1)
    """For grpo: longest sampled answer in tokens."""
    prompt_template: str | None = None
    """Prompt built from record fields (`{dialogue}`); default by record kind."""
    response_template: str | None = None
    """Answer built from record fields (`{summary}`); the loss is computed on it alone."""
    chat_template: str | None = None
    """For `chat` records on a base without a chat template: `chatml` or a Jinja template.
    A base with its own chat template keeps it unless this is set."""
    max_length: int = Field(512, ge=16)
    """Longest tokenized example (prompt + answer); longer ones are truncated."""
    max_target_length: int = Field(128, ge=4)
    """For seq2seq: longest tokenized answer."""
    packing: bool = False
    """Pack several examples into each sequence (TRL packing)."""
    packing_strategy: Literal["auto", "bfd", "wrapped"] = "auto"
    """`bfd` keeps examples whole but needs FlashAttention to stay cheap; `wrapped` cuts fixed
    blocks; `auto` takes bfd with FlashAttention on a GPU, else wrapped."""
    group_by_length: bool = True
    """Batch examples of similar length together, so less of each batch is padding."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the training data."""
    max_steps: int = Field(-1, ge=-1)
    """Stop after this many optimizer steps; -1 goes by epochs."""
    batch_size: int = Field(8, ge=1)
    """Examples per device per step."""
    grad_accum: int = Field(1, ge=1)
    """Gradient accumulation steps."""
    learning_rate: float = Field(5e-4, gt=0)
    """Peak learning rate."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Share of steps spent warming up the learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    seed: int = 42
    """Seed for initialisation, shuffling and dropout."""
    save_steps: int = Field(100, ge=1)
    """Write a checkpoint every N steps."""
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept; older ones are deleted."""
    eval_steps: int | None = Field(None, ge=1)
    """Evaluate loss on the dev split every N steps; default: once per epoch."""
    logging_steps: int = Field(10, ge=1)
    """Log the training loss every N steps."""
    max_train_samples: int | None = Field(None, ge=1)
    """Use at most this many training records (quick runs)."""
    gradient_checkpointing: bool | None = None
    """Recompute each layer's activations in the backward pass instead of storing them: much
    less memory for long sequences, about a third more compute (TRL turns it on always). Unset:
    off on the CPU (host memory holds the activations of any model a CPU trains in reasonable
    time), on a GPU. `kollm plan` and job placement count it on unless it is set off."""
    attention: Literal["sdpa", "flash", "eager"] = "sdpa"
    """Attention kernel: SDPA (PyTorch's default), FlashAttention-2 (`flash_attention_2`, needs
    the flash-attn package and a GPU) or eager (keeps every score matrix)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision: `auto` is bf16 on a GPU or CPU with bf16 hardware (AMX, AVX-512 BF16),
    float32 elsewhere; fp16 needs a CUDA GPU."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """LoRA / QLoRA settings."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Multi-GPU and multi-node training through accelerate, torchrun or Ray Train."""
    eval_generation: EvalGenerationConfig = Field(default_factory=EvalGenerationConfig)
    """Generate on a dev sample every N steps and score it (sft, seq2seq)."""
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    """Stop when the `eval_generation` score stops rising, keeping the best weights."""

    @model_validator(mode="after")
    def _early_stopping_needs_scores(self) -> TrainConfig:
        if self.early_stopping.patience is not None and self.eval_generation.every_steps is None:
            raise ValueError("train.early_stopping needs train.eval_generation.every_steps")
        return self

    @model_validator(mode="after")
    def _generation_needs_a_generating_method(self) -> TrainConfig:
        # rm scores and grpo samples; pretrain has no answers; dpo and kto train on the whole
        # data with no dev split reaching them
        if self.eval_generation.every_steps is not None and self.method not in ("sft", "seq2seq"):
            raise ValueError(
                f"train.eval_generation works with train.method sft or seq2seq, not {self.method}"
            )
        return self


class DecodingConfig(StrictModel):
    max_new_tokens: int = Field(64, ge=1)
    """Most tokens generated per answer."""
    num_beams: int = Field(1, ge=1)
    """Beam search width; 1 is greedy or sampling."""
    do_sample: bool = False
    """Sample instead of greedy/beam decoding."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    no_repeat_ngram_size: int = Field(0, ge=0)
    """Forbid repeating n-grams of this size; 0 is off."""
    repetition_penalty: float = Field(1.0, gt=0)
    """Penalty for repeated tokens; 1.0 is off."""


class EvalConfig(StrictModel):
    split: str = "dev"
    """Split of the prepared data to evaluate on."""
    max_samples: int | None = Field(None, ge=1)
    """Evaluate at most this many records."""
    batch_size: int = Field(16, ge=1)
    """Prompts generated per batch."""
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    """Decoding settings."""
    tokenize: Literal["morpheme", "whitespace"] = "morpheme"
    """ROUGE tokens: morphemes (placeholders kept whole) or whitespace words."""
    morpheme_tokenizer: Tokenizer = "mecab"
    """Morpheme analyser for `tokenize: morpheme`."""
    multi_ref: Literal["max", "mean"] = "max"
    """Several references: best per metric (rouge-score's score_multi) or their mean."""
    baseline_lead: int = Field(3, ge=1)
    """The extractive baseline takes the first N turns (or sentences)."""
    worst_examples: int = Field(5, ge=0)
    """Examples with the lowest ROUGE-L shown in the report."""


class StoreConfig(StrictModel):
    url: str | None = Field(None, pattern=r"^(sqlite:///|postgres(ql)?://)")
    """The store: `sqlite:///PATH`, or `postgresql://USER@HOST/DB` for servers on several
    machines sharing one (`pip install 'kollm[postgres]'`; KOLLM_HOME stays the shared path of
    the artifacts); default: SQLite under KOLLM_HOME. `KOLLM_DATABASE_URL` wins when set."""


class RegistryConfig(StrictModel):
    enabled: bool = True
    """Register the trained model as a new version."""
    name: str | None = None
    """Registry name; default: the recipe name."""
    alias: str | None = None
    """Point this alias (e.g. `production`) at the new version."""


class SearchSpace(StrictModel):
    type: Literal["float", "log_float", "int", "categorical"] = "float"
    """How the value is drawn: uniform float, log-uniform float, integer, or one of `choices`."""
    low: float | None = None
    """Lowest value (float, log_float, int)."""
    high: float | None = None
    """Highest value (float, log_float, int)."""
    choices: list[Any] | None = None
    """The values to choose from (categorical)."""

    @model_validator(mode="after")
    def _complete(self) -> SearchSpace:
        if self.type == "categorical" and not self.choices:
            raise ValueError("a categorical search space needs choices")
        if self.type != "categorical" and (
            self.low is None or self.high is None or self.low > self.high
        ):
            raise ValueError("a numeric search space needs low <= high")
        return self


class TuneConfig(StrictModel):
    space: dict[str, SearchSpace] = Field(
        default_factory=lambda: {
            "train.learning_rate": SearchSpace(type="log_float", low=1e-4, high=3e-3)
        }
    )
    """Recipe fields (dotted paths) to search, each with its search space."""
    metric: str = "score"
    """The eval metric to maximise (`score`, `rouge1`, `rouge2`, `rougeL`)."""
    trials: int = Field(10, ge=1)
    """Trials the study should have in all: a resumed study runs only the missing ones
    (finished and pruned trials count; failed ones run again)."""
    prune: bool = True
    """Skip the evaluation of a trial whose final training loss is worse than the median."""


class TriggerConfig(StrictModel):
    """Both rules count only what the version in production earned: the feedback on answers it
    gave, since it was promoted or since the last loop decision, whichever is later."""

    min_corrections: int | None = Field(20, ge=1)
    """Fire when at least this many new corrections arrived since the last loop decision."""
    bad_rate: float | None = Field(None, ge=0, le=1)
    """Fire when the share of bad ratings among the last `window` rated answers exceeds this."""
    window: int = Field(100, ge=1)
    """How many of the latest ratings `bad_rate` looks at."""
    min_ratings: int = Field(20, ge=1)
    """`bad_rate` does not fire on fewer ratings than this in the window (a few early thumbs
    down are not a trend); the not-triggered decision says so."""


class WatchConfig(StrictModel):
    """After the loop promotes a version, its live bad rate is compared with the previous
    version's over that one's last `loop.trigger.window` ratings; a worse one is rolled back."""

    enabled: bool = True
    """Watch each version the loop promotes; off, a promotion stays until someone rolls back."""
    min_ratings: int = Field(20, ge=1)
    """The watch judges once the new version has this many ratings since its promotion."""
    min_hours: float | None = Field(None, gt=0)
    """And, when set, no earlier than this many hours after the promotion."""
    max_regression: float = Field(0.1, ge=0, le=1)
    """Roll back when new bad rate - previous bad rate exceeds this (absolute difference)."""


class JudgeGateConfig(StrictModel):
    url: str
    """The judge's OpenAI-compatible base URL (…/v1); its key: $KOLLM_JUDGE_API_KEY."""
    model: str
    """The judge model's id at that URL."""
    prompts: str | None = None
    """JSONL of `question` (and `reference`): candidate and production each answer, the judge
    compares them in both orders; the candidate's win rate must reach `min_win_rate`."""
    min_win_rate: float = Field(0.5, ge=0, le=1)
    """Least (wins + ties / 2) / judged of the candidate against production."""
    max_new_tokens: int = Field(128, ge=1)
    """Longest answer each model gives to a judged prompt."""
    concurrency: int = Field(4, ge=1)
    """Judge calls in flight at once."""


class GateConfig(StrictModel):
    metrics: list[str] = Field(default_factory=lambda: ["score"])
    """Eval metrics (`score`, `rouge1`, ...) on which the candidate must not fall behind."""
    epsilon: float = 0.5
    """The candidate passes when candidate >= production - epsilon on every gated metric."""
    safety_file: str | None = None
    """JSONL (`{"prompt": ...}`) or text lines of requests that must be refused; the candidate's
    refusal rate on them may not fall below production's."""
    refusal_markers: list[str] = Field(
        default_factory=lambda: ["죄송", "답변드릴 수 없", "도와드릴 수 없"]
    )
    """An answer holding one of these counts as a refusal (without a judge)."""
    judge: JudgeGateConfig | None = None
    """An LLM judge: the candidate must win against production on `judge.prompts`, and it
    classifies the safety set's answers (refusal, over-refusal) instead of the markers."""


class LoopConfig(StrictModel):
    method: Literal["dpo", "kto", "sft"] = "dpo"
    """Retrain from the production version on preference pairs (DPO), on thumbs up/down (KTO),
    or on corrections (SFT)."""
    alias: str = "production"
    """The alias the loop retrains from and promotes to."""
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    """When the loop fires."""
    gate: GateConfig = Field(default_factory=GateConfig)
    """When a candidate is promoted."""
    watch: WatchConfig = Field(default_factory=WatchConfig)
    """When a promoted version is rolled back on its live ratings."""
    beta: float = Field(0.1, gt=0)
    """DPO beta: how far the candidate may move from the production model."""
    max_steps: int = Field(30, ge=1)
    """Optimizer steps of the retraining."""
    learning_rate: float = Field(5e-5, gt=0)
    """Learning rate of the retraining."""
    gold_pairs: int = Field(0, ge=0)
    """Also pair this many gold answers of the train split (chosen) with production's (rejected)."""
    train_on: Literal["reviewed", "all"] = "reviewed"
    """Which feedback becomes training rows: `reviewed`, only ratings a reviewer confirmed in
    the console (with the reviewer's correction; a correction the reviewer cleared is not
    trained on), or `all` the feedback, as any API key posted it. Every rating still counts
    for the trigger's bad rate; `min_corrections` counts the corrections that would train."""


class DomainConfig(StrictModel):
    keywords: list[str] = Field(default_factory=list)
    """Requests whose user text holds none of these words are declined."""
    examples_file: str | None = None
    """JSONL/text file of in-domain requests; a request less similar to them than
    `min_similarity` (cosine of mean-pooled embeddings) is declined. Transformers engine."""
    min_similarity: float = Field(0.5, ge=-1, le=1)
    """Least cosine similarity to the centroid of the domain examples."""
    refusal: str = "죄송합니다. 이 서비스는 해당 업무에 관한 질문에만 답변드릴 수 있습니다."
    """What an off-domain request gets instead of a generation."""


TASK_NAME = r"^[a-z0-9][a-z0-9_-]*$"


class TaskConfig(StrictModel):
    """A task service: a named prompt with its decoding settings, served as `MODEL/TASK` (or a
    chat request's `task` field). A request's own settings override the task's."""

    description: str = ""
    """What the task does, shown in `/v1/models` and the console."""
    system: str = ""
    """The system prompt put before the conversation (a model trained on a prompt_template
    has no system turn: there only `template` reaches it)."""
    template: str = "{input}"
    """What the last user turn becomes; `{input}` is the user's text."""
    temperature: float | None = Field(None, ge=0, le=2)
    """Sampling temperature (0: greedy) unless the request sets one."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus sampling mass unless the request sets one."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens generated unless the request sets max_tokens."""
    repetition_penalty: float | None = Field(None, ge=0.01, le=10)
    """Penalty for repeated tokens unless the request sets one."""
    retrieval: bool = False
    """Answer from documents: the collection the request names (`rag`) or the server's
    (`serve.rag`); a request with neither is refused (400 naming `task`)."""
    domain: DomainConfig | None = None
    """The task's own domain guard, applied besides the model's (`serve.domains`)."""

    @model_validator(mode="after")
    def _template_takes_input(self) -> TaskConfig:
        if "{input}" not in self.template:
            raise ValueError("template must hold {input}, where the user's text goes")
        try:
            self.template.format(input="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"template: only {{input}} is filled ({{{{ and }}}} for braces): {err}"
            ) from None
        return self


class RagConfig(StrictModel):
    collection: str = "docs"
    """The collection `kollm rag index --recipe` fills and `serve.rag` names by default."""
    paths: list[str] = Field(default_factory=list)
    """Files or directories `kollm rag index --recipe RECIPE` indexes when no PATH is given."""
    max_chars: int = Field(300, ge=50)
    """Most characters in a chunk (whole sentences, one of overlap)."""
    mask_pii: bool = False
    """Mask personal information (the data stage's masker) before indexing."""
    top_k: int = Field(3, ge=1, le=50)
    """Chunks put in front of the model per question."""
    min_score: float = Field(0.0, ge=0)
    """Least BM25 score of a keyword hit; a question with no hit above it gets the no-source
    answer instead of a guess."""
    min_similarity: float = Field(0.0, ge=-1, le=1)
    """Least cosine similarity of a dense hit (with `embedder`)."""
    embedder: str | None = None
    """Local dir of an encoder (sentence-transformers or HF: bge-m3, multilingual-e5); with it,
    search is hybrid: keyword and dense lists fused by reciprocal rank."""
    query_prefix: str = ""
    """Text put before each question for the encoder (e5: `query: `)."""
    passage_prefix: str = ""
    """Text put before each chunk for the encoder (e5: `passage: `)."""
    reranker: str | None = None
    """Local dir of a cross-encoder that re-orders the fused candidates."""
    backend: Literal["sqlite", "qdrant"] = "sqlite"
    """Where chunks are searched: the shared SQLite store, or Qdrant (`pip install
    'kollm[qdrant]'`; the SQLite store still records which file holds which chunks)."""
    qdrant_url: str | None = None
    """URL of a Qdrant server or cluster; without one, Qdrant's local mode in `qdrant_path`."""
    qdrant_path: str | None = None
    """Dir of Qdrant's local mode [$KOLLM_HOME/qdrant]."""
    no_source: str = (
        "제공된 문서에서 근거를 찾지 못해 답변드릴 수 없습니다. 담당 부서에 문의해 주세요."
    )
    """What a question with no source above the thresholds gets instead of a generation."""
    max_document_mb: float = Field(64, gt=0)
    """Most megabytes one HWP, HWPX or DOCX file may inflate to, all the parts read together
    (a DOCX counts every part, images too, as python-docx loads them all); over it the file is
    refused, named in the index report, and the run goes on. 64 MB is thousands of pages of
    text with its markup; a document past it costs gigabytes of memory to index (an HWP of
    42 KB that inflated to 32 MB of text took 2.25 GB). Raise it for DOCX files heavy with
    images."""
    max_part_mb: float = Field(20, gt=0)
    """Most megabytes one part may inflate to (a zip member of HWPX or DOCX, a BodyText stream
    of HWP): the section XML of a 1,000-page document is well under it, and one part is parsed
    whole, at several times its size in memory."""
    max_ratio: float = Field(100, ge=1)
    """Most a part may have been compressed (uncompressed over compressed size), judged once
    it is past 1 MB: text and XML compress 3-20 times, a decompression bomb about 1,000 times
    (deflate's most)."""


class ServeConfig(StrictModel):
    models: list[str] = Field(default_factory=list)
    """References to serve; default: the recipe's model at `registry.alias` (or its latest)."""
    engine: Literal["auto", "ctranslate2", "transformers", "vllm", "llamacpp"] = "auto"
    """auto (the faster CPU engine here: llamacpp where llama-server is found and the model is
    decoder-only, else ctranslate2; `kollm serve` says which on its first line), ctranslate2
    (CPU, int8), transformers (any model, LoRA adapters), vllm (GPU) or llamacpp (CPU,
    llama.cpp's llama-server over the version's GGUF export)."""
    quant: str = "q8_0"
    """llamacpp: the GGUF quantisation exported and served (f16, bf16, q8_0; q4_k_m and other
    k-quants through llama.cpp's llama-quantize)."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = Field(8000, ge=0, le=65535)
    """Port to listen on (0: any free port)."""
    max_batch: int = Field(8, ge=1)
    """Most requests in one engine batch (engines that run static batches: ctranslate2,
    transformers)."""
    max_concurrency: int | None = Field(None, ge=1)
    """Most requests in flight per model on an engine that batches its own sequences as they
    come (vllm, llamacpp); more wait in the queue [the engine's own: vLLM's max_num_seqs,
    llama.cpp's --parallel]."""
    max_queue: int = Field(64, ge=1)
    """Most requests waiting per model; more get 429."""
    request_timeout_s: float = Field(120.0, gt=0)
    """Seconds before a request gets 504."""
    max_body_mb: float = Field(4.0, gt=0)
    """Largest request body in MB (2^20 bytes); a larger one gets 413 before it is read."""
    log_requests: bool = True
    """Log each request and answer (PII-masked) for feedback."""
    log_max_kb: int = Field(64, ge=1)
    """Most KiB the request log keeps of a request's JSON and, apart, of its answer; a longer
    request keeps its first message and the latest that fit, long strings cut, and records
    its original size (`"_truncated": {"bytes": ...}`)."""
    log_retention_days: int = Field(30, ge=0)
    """Days the request log keeps an answer nobody rated (checked at start and hourly); rated
    answers stay, as training data. 0 keeps every answer."""
    alias_poll_s: float = Field(2.0, gt=0)
    """Seconds between checks of a served alias."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters NAME: DIR served over the base (transformers engine)."""
    domains: dict[str, DomainConfig] = Field(default_factory=dict)
    """Per served model id: the domain guard."""
    rag: str | None = None
    """A collection every chat request is answered from, with citations (settings: `rag`)."""
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)
    """Task services NAME: {system, template, temperature, ...} added to (or replacing) the
    shipped ones (summarise, translate, qa, interview_questions, code); stored with each
    version registered from the recipe, and served as `MODEL/NAME`."""
    tool_parser: Literal["auto", "hermes", "llama3_json", "mistral"] = "auto"
    """How an answer's tool calls are read (vLLM's --tool-call-parser): auto (the format the
    model's chat template teaches), hermes (`<tool_call>{...}</tool_call>`: Qwen2.5/Qwen3 and
    many Korean fine-tunes), llama3_json (Llama-3.1's JSON) or mistral (`[TOOL_CALLS]`)."""
    trust_remote_code: bool = False
    """Run the modeling code a served model ships beside its weights (EXAONE 3.x); a version
    that needs it is refused without it."""
    unconstrained_json: bool = False
    """ctranslate2 (no constrained decoding): answer a response_format request anyway,
    unconstrained, each choice saying in `schema_valid` whether its answer is valid under
    the schema; off, such a request gets 400 naming the engines that constrain."""
    prefix_cache: bool = True
    """ctranslate2: compute a prompt prefix that requests share (a system prompt, a RAG
    context) once and reuse its model state (CTranslate2's static prompt); vllm caches
    prefixes itself."""
    max_quality_loss: float | None = Field(1.05, ge=1.0)
    """The most a served conversion may lose against the registered weights, as its perplexity
    ratio (the worse of a few conversations and one long multi-turn one): a CTranslate2
    conversion is measured once when first made, a GGUF by the figures `kollm export` stored;
    one past it is not served (`--allow-quality-loss` serves it). null: not measured."""
    min_token_agreement: float | None = Field(None, ge=0.0, le=1.0)
    """With max_quality_loss: the least share of positions where the conversion's greedy next
    token is the registered weights' [not checked]."""
    allow_quality_loss: bool = False
    """Serve a conversion past max_quality_loss anyway (its figures are still measured)."""
    api_key_file: str | None = None
    """The key file (`KEY [viewer|admin] [NAME]` a line, mode 600); also --api-key-file and
    KOLLM_API_KEY_FILE. A server on a non-loopback host refuses to start without keys."""
    secret_file: str | None = None
    """A file holding the secret that signs console logins and forms, the same on every
    replica (also KOLLM_SECRET, KOLLM_SECRET_FILE) [derived from the keys]."""
    session_hours: float = Field(12.0, gt=0)
    """How long a console login lasts."""
    feedback_per_key_per_hour: int = Field(300, ge=0)
    """Ratings one API key may post to `/v1/feedback` in an hour (counted in the store, across
    workers); more get 429 with Retry-After. Without API keys every caller shares one count.
    0: no limit."""

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        bad = [name for name in tasks if not re.match(TASK_NAME, name)]
        if bad:
            raise ValueError(f"task name {bad[0]!r}: use lower-case letters, digits, '_', '-'")
        return tasks


class DeployConfig(StrictModel):
    tier: Literal["always-on", "scale-to-zero", "batch"] = "always-on"
    """always-on: replicas stay up; scale-to-zero: none while idle, and the first request waits
    for a cold start; batch: a job generates over `input` into `output`, no server."""
    target: Literal["ray", "local", "docker", "k8s", "kserve"] = "ray"
    """Where it runs: a Ray cluster (Ray Serve, or a Ray job for batch) or this machine; or the
    files of a unit a site deploys itself (`--out DIR`): `docker` (a build context), `k8s`
    (Deployment, Service, PVC), `kserve` (an InferenceService)."""
    unit: Literal["baked", "volume"] = "baked"
    """k8s: run the image with the version baked in, or the server image with the model on a
    PersistentVolumeClaim mounted at /models."""
    image: str | None = None
    """Image repository of the units (`REPO:server`, `REPO:NAME-VERSION`) [kollm]."""
    base_image: str = "python:3.11-slim"
    """docker: the image the server image builds on (a build argument too)."""
    card: str | None = None
    """k8s, kserve: the GPU the planner sizes `nvidia.com/gpu` for (vllm engine)."""
    namespace: str = "default"
    """k8s, kserve: the namespace of the manifests."""
    storage_uri: str | None = None
    """kserve: where KServe's storage initializer fetches the model (pvc://, s3://, gs://)."""
    min_replicas: int | None = Field(None, ge=0)
    """Fewest replicas; default 1 for always-on, 0 for scale-to-zero."""
    max_replicas: int = Field(2, ge=1)
    """Most replicas the autoscaler starts."""
    target_ongoing_requests: float = Field(2.0, gt=0)
    """Requests in flight per replica the autoscaler aims for."""
    idle_s: float = Field(300.0, gt=0)
    """Seconds of low traffic before a replica is removed (down to `min_replicas`)."""
    replica_cpus: float = Field(1.0, gt=0)
    """CPUs each replica reserves."""
    replica_gpus: float = Field(0.0, ge=0)
    """GPUs each replica reserves (vllm engine)."""
    host: str = "127.0.0.1"
    """Address Ray Serve's HTTP proxy listens on."""
    port: int = Field(8000, ge=1, le=65535)
    """Port of Ray Serve's HTTP proxy."""
    route_prefix: str = "/"
    """URL prefix of the application."""
    app_name: str | None = None
    """Ray Serve application name; default: the model's name."""
    input: str | None = None
    """batch: JSONL of requests (`prompt` or `messages` per line)."""
    output: str | None = None
    """batch: where the JSONL of answers goes."""

    @model_validator(mode="after")
    def _tier_settings(self) -> DeployConfig:
        low = self.replicas_min
        if self.tier == "always-on" and low < 1:
            raise ValueError("tier always-on keeps a replica up: min_replicas must be >= 1")
        if self.tier == "scale-to-zero" and low != 0:
            raise ValueError("tier scale-to-zero: min_replicas must be 0")
        if low > self.max_replicas:
            raise ValueError(f"min_replicas {low} is more than max_replicas {self.max_replicas}")
        if self.tier == "batch" and not (self.input and self.output):
            raise ValueError("tier batch needs input and output files")
        return self

    @property
    def replicas_min(self) -> int:
        if self.min_replicas is not None:
            return self.min_replicas
        return 0 if self.tier == "scale-to-zero" else 1


SynthTask = Literal[
    "translate", "answer", "self_instruct", "evolve", "doc_qa", "back_translate", "preference"
]


class SynthTaskConfig(StrictModel):
    task: SynthTask
    """What the step does (see `kollm synth --help`)."""
    input: str | None = None
    """JSONL the step reads; default: the previous step's output."""
    collection: str | None = None
    """doc_qa: the RAG collection whose chunks ground the questions."""
    fields: list[str] = Field(default_factory=lambda: ["dialogue"])
    """back_translate: the fields paraphrased."""
    field: str = "instruction"
    """answer: the field holding the question."""
    n: int = Field(2, ge=2)
    """preference: answers per prompt."""
    sources: list[EndpointConfig] = Field(default_factory=list)
    """preference: endpoints (or served model versions) the answers come from, in turn;
    default: `synth.endpoint`."""
    rounds: int = Field(1, ge=1)
    """self_instruct: rounds of asking for new instructions."""
    per_round: int = Field(5, ge=1)
    """self_instruct: instructions asked for per round."""
    max_rouge_l: float = Field(0.7, gt=0, le=1)
    """self_instruct: a new instruction is kept only below this morpheme ROUGE-L F1 against
    every kept one."""
    limit: int | None = Field(None, ge=1)
    """At most this many input records."""


class SynthConfig(StrictModel):
    endpoint: EndpointConfig
    """Where the data is generated."""
    judge: EndpointConfig | None = None
    """preference: who ranks the answers; default: `endpoint`."""
    tasks: list[SynthTaskConfig] = Field(min_length=1)
    """The steps, in order; each reads the one before (or its `input`)."""
    seed: int = 0
    """Seed of the calls (part of each call's cache key)."""
    output: str = "{run_dir}/synth"
    """Dir of the step outputs, the cleaned dataset and the manifest."""
    clean: bool = True
    """Pass the result through the data stage's normaliser, PII masker and dedup."""


class Recipe(StrictModel):
    name: str = Field("kollm-run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Name of the run, and of the model in the registry."""
    output_dir: str = "runs/{name}"
    """Directory for everything the run writes; `{name}` is replaced by the recipe name."""
    data: DataConfig | None = None
    """The data stage."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Base model, or the architecture of a scratch model."""
    train: TrainConfig | None = None
    """The training stage."""
    eval: EvalConfig | None = None
    """The evaluation stage."""
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    """Registration of the trained model."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Where the registry, request log, feedback and jobs are kept."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """Serving settings (`kollm serve --recipe RECIPE`)."""
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    """Scale-out serving (`kollm deploy REF --recipe RECIPE`): cost tier and autoscaling."""
    loop: LoopConfig = Field(default_factory=LoopConfig)
    """The feedback loop (`kollm loop RECIPE`)."""
    tune: TuneConfig = Field(default_factory=TuneConfig)
    """Hyper-parameter search (`kollm tune RECIPE`)."""
    rag: RagConfig = Field(default_factory=RagConfig)
    """Retrieval over your documents (`kollm rag`, `serve.rag`)."""
    synth: SynthConfig | None = None
    """Training data built through an LLM endpoint (`kollm synth RECIPE`)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    @property
    def train_dir(self) -> Path:
        return self.run_dir / "train"

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / "eval"

    @property
    def model_name(self) -> str:
        return self.registry.name or self.name

    @property
    def data_dir(self) -> Path:
        if self.data is not None and self.data.output_dir:
            return Path(self.data.output_dir)
        return self.run_dir / "data"

    def split_path(self, split: str) -> Path:
        """The prepared JSONL of one split (`train`, `dev`, `test`), or the directory of its
        shards where the data stage ran on Ray (`train/part-*.jsonl|parquet`)."""
        single = self.data_dir / f"{split}.jsonl"
        sharded = self.data_dir / split
        return sharded if not single.exists() and sharded.is_dir() else single


# --- loading ---------------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["data.dedup.threshold=0.8"]` -> `{"data.dedup.threshold": 0.8}` (values read as YAML)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r}: expected key.path=value")
        parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each dotted key of `overrides` in the raw recipe mapping."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every problem raises RecipeError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise RecipeError(f"{path}: cannot read recipe: {err.strerror}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise RecipeError(f"{path}: {where}not valid YAML: {getattr(err, 'problem', err)}") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    apply_overrides(raw, parse_overrides(overrides or []))
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(format_validation_error(path, err, Recipe)) from err


def recipe_text(path: str | Path) -> str:
    """The recipe file's text, as the registry records it."""
    return Path(path).read_text(encoding="utf-8")


# --- error messages --------------------------------------------------------------------------


def _unwrap(annotation: Any, key: Any) -> Any:
    """The type found one step down `annotation` at `key` (a field, dict key or list index)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg, key)
            if found is not None:
                return found
        return None
    if origin is dict:
        return typing.get_args(annotation)[1]
    if origin is list:
        return typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        info = annotation.model_fields.get(key)
        return info if info is not None else None
    return None


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """FieldInfo of the field at `loc`, or None if the path leaves the schema."""
    current: Any = model
    info = None
    for key in loc:
        step = _unwrap(current, key)
        if step is None:
            return info if isinstance(key, str) and not key.isidentifier() else None
        if hasattr(step, "annotation") and hasattr(step, "metadata"):
            info, current = step, step.annotation
        else:
            current = step
    return info


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a section at `loc` takes (through maps and lists: `serve.tasks.NAME`)."""
    current: Any = model
    for key in loc:
        current = _unwrap(current, key)
        if hasattr(current, "metadata") and hasattr(current, "annotation"):
            current = current.annotation
    candidates = typing.get_args(current) or (current,)  # `X | None`: X's keys
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return list(candidate.model_fields)
    return []


def _bounds(info: Any) -> str:
    lo = hi = None
    lo_op = hi_op = ""
    for meta in getattr(info, "metadata", []):
        if isinstance(meta, annotated_types.Ge | annotated_types.Gt):
            lo, lo_op = (meta.ge, ">=") if isinstance(meta, annotated_types.Ge) else (meta.gt, ">")
        if isinstance(meta, annotated_types.Le | annotated_types.Lt):
            hi, hi_op = (meta.le, "<=") if isinstance(meta, annotated_types.Le) else (meta.lt, "<")
    if lo is not None and hi is not None:
        return f" between {lo} and {hi}"
    if lo is not None:
        return f" {lo_op} {lo}"
    if hi is not None:
        return f" {hi_op} {hi}"
    return ""


_NUMBER_ERRORS = {
    "float_parsing",
    "float_type",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "int_parsing",
    "int_type",
    "int_from_float",
}


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    kind, loc, got = error["type"], error["loc"], error.get("input")
    if kind == "extra_forbidden":
        known = _keys_at(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return "unknown key" + (f"; did you mean '{hint[0]}'?" if hint else "")
    if kind == "missing":
        return "required field is missing"
    if kind in _NUMBER_ERRORS:
        info = _field_at(model, loc)
        noun = (
            "an integer" if kind.startswith("int") or "int" in str(info.annotation) else "a number"
        )
        return f"expected {noun}{_bounds(info)}, got {got!r}"
    if kind == "bool_parsing":
        return f"expected true or false, got {got!r}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "literal_error":
        return f"expected one of {error['ctx']['expected']}, got {got!r}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {got!r}"


def format_validation_error(path: Path | str, err: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: `recipes/demo.yaml: data.dedup.threshold: expected ...`."""
    lines = []
    for error in err.errors():
        # Union members add their type name to the location; it means nothing to a user.
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"{path}: {dotted}: {_describe({**error, 'loc': loc}, model)}")
    return "\n".join(dict.fromkeys(lines))
