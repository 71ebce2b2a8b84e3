"""GPU memory planner: which model fits which card at which precision, by arithmetic alone.

Reads a model's config (never its weights). Inference follows vLLM's accounting: the card's
memory x gpu_memory_utilization, minus the weights and the activation peak, is the KV cache;
it is cut into 16-token blocks of `kv_bytes_per_token` x 16 bytes, and the blocks bound the
concurrency at a context length.

Training adds gradients and optimizer states (16 bytes per trainable parameter for
mixed-precision AdamW: bf16 weight and gradient, fp32 master and two moments), LoRA's
r x (d_in + d_out) per adapted matrix, or QLoRA's 0.516 bytes per quantised parameter (NF4 with
double-quantised scales) with the other parameters in fp32, as PEFT's
`prepare_model_for_kbit_training` (which TRL calls) leaves them. Activations per token:
- the logits: vocab x 16 bytes (bf16 logits, their fp32 copy for the loss, the fp32
  log-softmax, and the gradients), the largest term for a 128k vocabulary;
- with gradient checkpointing (TRL's default): each layer's bf16 input, plus one layer's
  tensors while it is recomputed; without it, every layer's tensors;
- eager attention keeps each layer's score matrix (heads x seq^2, bf16 and its fp32 softmax);
  SDPA and FlashAttention do not.
Training also counts `TRAIN_OVERHEAD_GIB` for the CUDA context and cuBLAS workspace, and fits
against the whole card (vLLM's utilisation share is for inference).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
NF4_BYTES = 0.516  # 4 bits + an 8-bit scale per 64 weights + a 32-bit scale per 256 scales
LOGIT_BYTES = 16  # per vocabulary entry and token in training (see the module docstring)
TRAIN_OVERHEAD_GIB = 1.0
ATTENTION = ("sdpa", "flash", "eager")
BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5, "nf4": 0.5}
# Memory the driver reports for each card (GiB), as vLLM's start-up log prints it.
CARDS = {
    "T4": 14.58,
    "RTX3080-10GB": 9.77,
    "RTX3080-12GB": 11.77,
    "A10": 22.06,
    "L4": 22.03,
    "A30": 23.50,
    "RTX4090": 23.55,
    "A100-40GB": 39.38,
    "A100-80GB": 79.15,
    "A6000": 47.43,
    "L40S": 44.39,
    "H100-80GB": 79.11,
    "H200": 139.81,
}


# Names other model families give the fields the planner reads (GPT-2, BLOOM, Falcon, MPT).
ALIASES = {
    "n_embd": "hidden_size",
    "d_model": "hidden_size",
    "n_layer": "num_hidden_layers",
    "num_layers": "num_hidden_layers",
    "n_layers": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "ffn_dim": "intermediate_size",
    "n_inner": "intermediate_size",
}
# Families whose MLP is two matrices with GeLU between (no gate).
UNGATED_MODEL_TYPES = {"gpt2", "gpt_neox", "gptj", "bloom", "falcon", "mpt", "opt", "gpt_bigcode"}
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


class PlanInputError(ValueError):
    """A model description the planner cannot use; the message names what is missing."""


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config with the planner's field names: the text model's config of a multimodal model,
    other families' names mapped to Llama's."""
    if "text_config" in config and "hidden_size" not in config:
        config = {**config, **config["text_config"]}
    out = dict(config)
    for alias, name in ALIASES.items():
        if alias in config and config[alias] is not None and name not in config:
            out[name] = config[alias]
    return out


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = False
    parameter_count: int | None = None  # when known; else counted from the shapes
    gated: bool = True  # a gated MLP (SwiGLU, GeGLU: Llama, Qwen, Gemma); GPT-2-style has two

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "config") -> ModelShape:
        config = normalise_config(config)
        missing = [name for name in REQUIRED if not config.get(name)]
        if missing:
            raise PlanInputError(
                f"{source}: lacks {', '.join(missing)}, which the planner needs "
                "(give them with --vocab-size, --hidden-size, --layers, --heads)"
            )
        heads = config["num_attention_heads"]
        hidden = config["hidden_size"]
        return cls(
            vocab=config["vocab_size"],
            hidden=hidden,
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate=config.get("intermediate_size") or 4 * hidden,
            tied=bool(config.get("tie_word_embeddings", False)),
            parameter_count=config.get("num_parameters"),
            gated=config.get("model_type") not in UNGATED_MODEL_TYPES,
        )

    @classmethod
    def load(cls, source: str | Path, overrides: dict[str, Any] | None = None) -> ModelShape:
        """From a model dir or a config.json, with `overrides` (config names) on top."""
        path = Path(source)
        file = path / "config.json" if path.is_dir() else path
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise PlanInputError(f"{file}: no such file") from err
        except json.JSONDecodeError as err:
            raise PlanInputError(f"{file}: not valid JSON: {err.msg} (line {err.lineno})") from err
        return cls.from_config({**config, **(overrides or {})}, str(file))

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of every linear layer in one decoder layer: q, k, v, o, then the MLP
        (gate, up, down; or up and down without a gate)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = [(self.hidden, q), (self.hidden, kv), (self.hidden, kv), (q, self.hidden)]
        mlp = [(self.hidden, self.intermediate)] * (2 if self.gated else 1)
        return [*attention, *mlp, (self.intermediate, self.hidden)]

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def parameters(self) -> int:
        if self.parameter_count:
            return self.parameter_count
        per_layer = sum(a * b for a, b in self.linear_shapes()) + 2 * self.hidden  # + two norms
        return self.embedding_params + self.layers * per_layer + self.hidden

    def kv_bytes_per_token(self, kv_bytes: float) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_bytes  # K and V, every layer


@dataclass
class Plan:
    task: str
    precision: str
    parameters_b: float
    weights_gib: float
    kv_bytes_per_token: float
    activation_gib: float
    training_gib: float
    total_gib: float
    rule_of_thumb_gib: float
    kv_cache_gib: float | None = None
    kv_blocks: int | None = None
    max_concurrency: float | None = None
    fits: list[str] | None = None
    cards_needed: dict[str, int] | None = None
    assumes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def activation_gib(
    shape: ModelShape,
    tokens: int,
    task: str,
    checkpointing: bool = True,
    attention: str = "sdpa",
    batch: int = 1,
) -> float:
    """The activation peak over `tokens` (all sequences of a step): for inference, fp32 logits
    and a few buffers; for training, see the module docstring."""
    if task == "inference":
        per_layer = tokens * (4 * shape.hidden + 2 * shape.intermediate) * 2
        return (tokens * shape.vocab * 4 + per_layer * 2) / GIB
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    # bf16 tensors a layer keeps for its backward: two norms' inputs, the attention and MLP
    # inputs, q/k/v, the attention output; the MLP's gate, up, activation and product (two
    # without a gate). For GPT shapes this is Korthikanti et al.'s 34 x s x b x h.
    mlp = (8 if shape.gated else 4) * shape.intermediate
    layer = tokens * (2 * (6 * shape.hidden + q + 2 * kv) + mlp)
    if attention == "eager":  # bf16 scores and the fp32 softmax of every head
        seq = tokens / max(batch, 1)
        layer += batch * shape.heads * seq * seq * 6
    stored = (
        tokens * shape.hidden * 2 * shape.layers + layer
        if checkpointing
        else (layer * shape.layers)
    )
    return (tokens * shape.vocab * LOGIT_BYTES + stored) / GIB


def plan(
    shape: ModelShape,
    task: str = "inference",
    precision: str = "bf16",
    context: int = 8192,
    concurrency: int = 1,
    lora_rank: int = 16,
    gpu_memory_utilization: float = 0.9,
    activation: float | None = None,
    batch_tokens: int | None = None,
    cards: dict[str, float] | None = None,
    checkpointing: bool = True,
    attention: str = "sdpa",
    batch: int = 1,
) -> Plan:
    """Memory for `task`. Inference holds `context` x `concurrency` tokens of KV cache; a
    training step holds `batch` sequences of `context` tokens (or `batch_tokens` in all)."""
    cards = cards or CARDS
    params = shape.parameters
    weights = _weight_bytes(shape, task, precision)
    kv_token = shape.kv_bytes_per_token(
        2.0 if precision in ("int8", "int4", "nf4") else BYTES[precision]
    )
    tokens = batch_tokens or (batch * context if task != "inference" else 8192)
    act = (
        activation
        if activation is not None
        else activation_gib(shape, tokens, task, checkpointing, attention, batch)
    )
    train = _training_bytes(shape, task, weights, lora_rank)
    if task == "inference":
        total = (weights + kv_token * context * concurrency) / GIB + act
        share = gpu_memory_utilization
    else:
        total = (weights + train) / GIB + act + TRAIN_OVERHEAD_GIB
        share = 1.0  # the overhead is counted; the whole card is the budget
    rule = params * 2 / GIB  # operators' rule: "2 GB per billion parameters in FP16"
    result = Plan(
        task, precision, params / 1e9, weights / GIB, kv_token, act, train / GIB, total, rule
    )
    result.assumes = _assumptions(task, checkpointing, attention, batch, tokens)
    result.fits = [name for name, gib in cards.items() if gib * share >= total]
    result.cards_needed = {name: math.ceil(total / (gib * share)) for name, gib in cards.items()}
    return result


def _weight_bytes(shape: ModelShape, task: str, precision: str) -> float:
    if task == "qlora":  # NF4 linear layers; embeddings, lm_head and norms kept in fp32
        linear = shape.layers * sum(a * b for a, b in shape.linear_shapes())
        return linear * NF4_BYTES + (shape.parameters - linear) * 4
    return shape.parameters * BYTES[precision]


def _training_bytes(shape: ModelShape, task: str, weights: float, lora_rank: int) -> float:
    """Gradients and AdamW states: of every parameter (full), or of the adapters."""
    if task == "full":
        return shape.parameters * 16 - weights
    if task in ("lora", "qlora"):
        adapters = shape.layers * sum(lora_rank * (a + b) for a, b in shape.linear_shapes())
        return adapters * 16
    return 0.0


def _assumptions(task: str, checkpointing: bool, attention: str, batch: int, tokens: int) -> str:
    if task == "inference":
        return "vLLM's accounting: weights, the activation peak, then the KV cache"
    ckpt = "gradient checkpointing" if checkpointing else "no gradient checkpointing"
    return f"{ckpt}, {attention} attention, batch {batch}, {tokens} tokens a step, AdamW"


def max_context(
    shape: ModelShape, task: str, card_gib: float, lora_rank: int = 16, **options: Any
) -> int:
    """The longest sequence (batch 1 unless `batch` is given) whose training step fits
    `card_gib`; 0 when not even one token does."""
    low, high = 0, 1 << 22
    while low < high:
        mid = (low + high + 1) // 2
        if (
            plan(
                shape,
                task,
                "nf4" if task == "qlora" else "bf16",
                mid,
                lora_rank=lora_rank,
                **options,
            ).total_gib
            <= card_gib
        ):
            low = mid
        else:
            high = mid - 1
    return low


def kv_budget(
    result: Plan, card_gib: float, gpu_memory_utilization: float, context: int, block_size: int = 16
) -> Plan:
    """vLLM's block arithmetic for inference on one card of `card_gib`."""
    kv_gib = card_gib * gpu_memory_utilization - result.weights_gib - result.activation_gib
    blocks = max(int(kv_gib * GIB // (block_size * result.kv_bytes_per_token)), 0)
    result.kv_cache_gib = kv_gib
    result.kv_blocks = blocks
    result.max_concurrency = blocks * block_size / context
    return result


@dataclass
class PlanRequest:
    """What `kollm plan` is asked: the task and its settings, and optionally the card."""

    task: str = "inference"
    precision: str = "bf16"
    context: int = 8192
    concurrency: int = 1
    lora_rank: int = 16
    batch: int = 1
    checkpointing: bool = True
    attention: str = "sdpa"
    gpu_memory_utilization: float = 0.9
    activation: float | None = None
    gpu: str | None = None

    def check(self, cards: dict[str, float]) -> None:
        """Refuse an unknown task, precision, attention kernel or card, naming the option."""
        if self.task not in ("inference", "full", "lora", "qlora") or self.precision not in BYTES:
            raise PlanInputError(
                "--task is inference, full, lora or qlora; --precision one of " + ", ".join(BYTES)
            )
        if self.attention not in ATTENTION:
            raise PlanInputError(
                f"--attention: one of {', '.join(ATTENTION)}, got {self.attention!r}"
            )
        if self.gpu is not None and self.gpu not in cards:
            raise PlanInputError(f"--gpu: unknown card {self.gpu!r}; known: {', '.join(cards)}")


def plan_on_cards(
    shape: ModelShape, req: PlanRequest, cards: dict[str, float] | None = None
) -> tuple[Plan, str | None, int | None]:
    """The plan; the card it is sized for (the one asked, else the first that holds it); and on
    that card the KV budget (inference, filled into the plan) or the longest sequence that
    trains."""
    cards = {**CARDS, **(cards or {})}
    req.check(cards)
    training = {"checkpointing": req.checkpointing, "attention": req.attention, "batch": req.batch}
    result = plan(
        shape,
        req.task,
        req.precision,
        req.context,
        req.concurrency,
        req.lora_rank,
        req.gpu_memory_utilization,
        req.activation,
        cards=cards,
        **training,
    )
    card = req.gpu or next(iter(result.fits or []), None)
    if card is None:
        return result, None, None
    if req.task == "inference":
        return kv_budget(result, cards[card], req.gpu_memory_utilization, req.context), card, None
    return result, card, max_context(shape, req.task, cards[card], req.lora_rank, **training)
