"""Training benchmark: tokens/s and peak memory of kollm's LoRA SFT against TRL driven directly.

    .venv/bin/python bench/train_bench.py [--steps 20] [--batch-size 8] [--max-length 384]

All runs use the same ~50M-parameter random Llama (built here, saved to a temp dir), the
bundled dialogue data, batch size and sequence length. Each run is a separate process, so its
peak RSS is its own. tokens/s counts the tokens the trainer fed (TRL's `num_tokens`, padding
excluded) over TRL's `train_runtime`. The last line reads: `ours/trl R1  packed/trl R2`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "sample" / "dialogsum_train.jsonl"
PROMPT, RESPONSE = "다음 대화를 요약하세요.\n{dialogue}\n요약:", " {summary}"


def build_base(out: Path) -> None:
    """A random Llama of about 50M parameters with a BPE tokenizer trained on the data."""
    from kollm.config import ModelConfig
    from kollm.train.scratch import build_model, train_tokenizer

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    tok = train_tokenizer((r["dialogue"] + r["summary"] for r in rows), 8000, out)
    cfg = ModelConfig(
        layers=6, hidden_size=768, heads=12, intermediate_size=2048, max_positions=1024
    )
    model = build_model(cfg, tok, seed=0)
    model.save_pretrained(str(out))
    print(f"base model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


def run_ours(base: Path, work: Path, args, packing: bool) -> dict:
    from kollm.config import Recipe
    from kollm.train import run_training

    recipe = Recipe.model_validate(
        {
            "name": "bench",
            "output_dir": str(work),
            "data": {
                "input": str(DATA),
                "kind": "dialogue_summary",
                "output_dir": str(work / "data"),
            },
            "model": {"base": str(base)},
            "train": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "max_length": args.max_length,
                "packing": packing,
                "logging_steps": args.steps,
                "save_steps": 10_000,
                "prompt_template": PROMPT,
                "response_template": RESPONSE,
                "lora": {"enabled": True, "r": 8, "target_modules": ["q_proj", "v_proj"]},
            },
        }
    )
    (work / "data").mkdir(parents=True, exist_ok=True)
    rows = DATA.read_text(encoding="utf-8").splitlines()
    (work / "data" / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = run_training(recipe)
    logged = {k: v for e in result.losses for k, v in e.items()}
    return {"tokens": logged["num_tokens"], "seconds": logged["train_runtime"]}


def run_trl(base: Path, work: Path, args) -> dict:
    """Plain TRL: SFTTrainer + LoraConfig on the same model, data and settings."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    data = Dataset.from_list(
        [{"prompt": PROMPT.format(**r), "completion": RESPONSE.format(**r)} for r in rows]
    )
    config = SFTConfig(
        output_dir=str(work),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        logging_steps=args.steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        learning_rate=5e-4,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(base)),
        args=config,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(str(base)),
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    trainer.train()
    logged = {k: v for e in trainer.state.log_history for k, v in e.items()}
    return {"tokens": logged["num_tokens"], "seconds": logged["train_runtime"]}


def child(variant: str, base: Path, work: Path, args) -> None:
    result = (
        run_trl(base, work, args)
        if variant == "trl"
        else run_ours(base, work, args, variant == "packed")
    )
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\nRESULT " + json.dumps(result))  # the rich panel may leave the line open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--variant", choices=["trl", "ours", "packed"])
    parser.add_argument("--base", type=Path)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.base, Path(tempfile.mkdtemp()), args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        build_base(base)
        results = {}
        for variant in ("trl", "ours", "packed"):
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--base",
                str(base),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[variant] = json.loads(
                next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]
            )
            r = results[variant]
            rate = r["tokens"] / r["seconds"]
            print(f"{variant:7s}: {rate:8.0f} tokens/s  peak RSS {r['peak_rss_mib']:.0f} MiB")
    rate = {k: v["tokens"] / v["seconds"] for k, v in results.items()}
    print(
        f"ours/trl {rate['ours'] / rate['trl']:.2f}  packed/trl {rate['packed'] / rate['trl']:.2f}"
    )


if __name__ == "__main__":
    main()
