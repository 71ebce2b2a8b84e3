"""Vocabulary extension benchmark: characters per token and perplexity per character of a
Llama-shaped base whose byte-level BPE learnt little Korean (as most open bases did), before
and after `kollm tokenizer extend`, each after the same short continued pretraining.

    .venv/bin/python bench/vocab_bench.py [--add 300] [--steps 150]

Both models see the same texts in the same order for the same number of steps (batches of
whole dialogues, cut at 256 tokens); perplexity is exp(total NLL / total characters) on the
held-out dialogues, so the two tokenizers are comparable. Last line:
`chars/token R1  ppl/char extended/base R2`.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def texts(name: str) -> list[str]:
    path = REPO / "data" / "sample" / name
    return [json.loads(x)["dialogue"] for x in path.read_text(encoding="utf-8").splitlines()]


def build_base(out: Path, train: list[str]) -> None:
    import torch
    from transformers import LlamaForCausalLM

    from kollm.config import ModelConfig
    from kollm.data.tokenizer_report import reference_bpe
    from kollm.train.scratch import llama_config

    fast = reference_bpe(train[:30], 600, eos="<|endoftext|>")  # a base that saw little Korean
    fast.save_pretrained(str(out))
    shape = ModelConfig(
        layers=2, hidden_size=128, heads=4, intermediate_size=256, max_positions=512
    )
    ids = {"eos_token_id": fast.eos_token_id, "pad_token_id": fast.pad_token_id}
    config = llama_config(shape, fast, tie_word_embeddings=True, **ids)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))


def pretrain_and_score(model_dir: Path, train: list[str], held: list[str], steps: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = [train[(step * 8 + i) % len(train)] for i in range(8)]
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=256)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    nll, chars = 0.0, 0
    with torch.inference_mode():
        for text in held:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=512)["input_ids"]
            if ids.shape[1] < 2:
                continue
            covered = tok.decode(ids[0], skip_special_tokens=True)
            loss = model(input_ids=ids, labels=ids).loss
            nll += float(loss) * (ids.shape[1] - 1)
            chars += len(covered)
    return math.exp(nll / chars)


def main() -> None:
    from transformers import AutoTokenizer

    from kollm.train.vocab import chars_per_token, extend

    parser = argparse.ArgumentParser()
    parser.add_argument("--add", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    train, held = texts("dialogsum_train.jsonl"), texts("dialogsum_dev.jsonl")[:200]
    with tempfile.TemporaryDirectory() as tmp:
        base, extended = Path(tmp) / "base", Path(tmp) / "extended"
        build_base(base, train)
        result = extend(str(base), train, args.add, extended, "bench")
        cpt = [
            chars_per_token(AutoTokenizer.from_pretrained(str(d)), held) for d in (base, extended)
        ]
        print(f"added {len(result.pieces)} pieces; chars/token {cpt[0]:.3f} -> {cpt[1]:.3f}")
        ppl = [pretrain_and_score(d, train, held, args.steps) for d in (base, extended)]
        print(f"after {args.steps} steps: perplexity per character {ppl[0]:.4f} -> {ppl[1]:.4f}")
    print(f"chars/token {cpt[1] / cpt[0]:.2f}  ppl/char extended/base {ppl[1] / ppl[0]:.3f}")


if __name__ == "__main__":
    main()
