"""GPU memory planner: which model fits which card at which precision, by arithmetic alone.

Reads a model's config (never its weights). Inference follows vLLM's accounting: the card's
memory x gpu_memory_utilization, minus the weights and the activation peak, is the KV cache;
it is cut into 16-token blocks of `kv_bytes_per_token` x 16 bytes, and the blocks bound the
concurrency at a context length. Training adds gradients and optimizer states (about 16 bytes
per parameter for mixed-precision AdamW), LoRA's r x (d_in + d_out) per adapted matrix, or
QLoRA's ~0.52 bytes per quantised parameter with embeddings and lm_head in bf16.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
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
        """(d_in, d_out) of every linear layer in one decoder layer (Llama-style, gated MLP)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [
            (self.hidden, q),
            (self.hidden, kv),
            (self.hidden, kv),
            (q, self.hidden),
            (self.hidden, self.intermediate),
            (self.hidden, self.intermediate),
            (self.intermediate, self.hidden),
        ]

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def activation_gib(shape: ModelShape, tokens: int, task: str) -> float:
    """A rough activation peak: fp32 logits over `tokens` plus a few hidden-size buffers per layer
    (inference), or the whole stored forward (training, no checkpointing)."""
    logits = tokens * shape.vocab * 4
    per_layer = tokens * (4 * shape.hidden + 2 * shape.intermediate) * 2
    return (logits + per_layer * (shape.layers if task != "inference" else 2)) / GIB


def plan(
    shape: ModelShape,
    task: str = "inference",
    precision: str = "bf16",
    context: int = 8192,
    concurrency: int = 1,
    lora_rank: int = 16,
    gpu_memory_utilization: float = 0.9,
    activation: float | None = None,
    batch_tokens: int = 8192,
    cards: dict[str, float] | None = None,
) -> Plan:
    cards = cards or CARDS
    params = shape.parameters
    if task == "qlora":  # quantised linear layers at ~0.52 B/param; embeddings and lm_head in bf16
        weights = (params - shape.embedding_params) * 0.52 + shape.embedding_params * 2
    else:
        weights = params * BYTES[precision]
    kv_dtype_bytes = 2.0 if precision in ("int8", "int4", "nf4") else BYTES[precision]
    kv_token = shape.kv_bytes_per_token(kv_dtype_bytes)
    act = activation if activation is not None else activation_gib(shape, batch_tokens, task)
    train = 0.0
    if task == "full":
        train = (
            params * 16 - weights
        )  # mixed-precision AdamW: weights, grads, fp32 master and moments
    elif task in ("lora", "qlora"):
        lora_params = shape.layers * sum(lora_rank * (a + b) for a, b in shape.linear_shapes())
        train = lora_params * 16
    need_kv = kv_token * context * concurrency
    total = weights / GIB + act + train / GIB + need_kv / GIB
    # Operators' rule: "2 GB per billion parameters in FP16", weights alone.
    rule = params * 2 / GIB
    result = Plan(
        task, precision, params / 1e9, weights / GIB, kv_token, act, train / GIB, total, rule
    )
    result.fits = [name for name, gib in cards.items() if gib * gpu_memory_utilization >= total]
    result.cards_needed = {
        name: math.ceil(total / (gib * gpu_memory_utilization)) for name, gib in cards.items()
    }
    return result


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
