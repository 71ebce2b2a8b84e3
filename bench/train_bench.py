"""Training benchmark: tokens/s and peak memory of kollm's LoRA SFT against a plain PyTorch
loop (the ceiling) and TRL's SFTTrainer set up as a careful user would on this device.

    .venv/bin/python bench/train_bench.py [--steps 20] [--batch-size 8] [--max-length 384]
                                          [--profile]

All runs use the same ~50M-parameter random Llama (built here, saved to a temp dir), the
bundled dialogue data (prompt: the dialogue; loss on the summary only), LoRA r=8 on q/v, batch
size and sequence length. Each run is a separate process, so its peak RSS is its own. tokens/s
counts the tokens fed (padding excluded, TRL's `num_tokens`) over the training time (TRL's
`train_runtime`; the plain loop's steps). TRL runs in float32 with its other defaults (its
config turns bf16 on when left unset, several times slower on a CPU without bf16 hardware).
`--profile` prints torch.profiler's top operators of one kollm step. The last line reads:
`kollm/plain R1  kollm/trl R2`.
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
        bf16=False,  # what a careful user sets on this CPU
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


def _examples(tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels with the prompt masked) of each record, cut at `max_length`."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    out = []
    for r in rows:
        prompt = tokenizer(PROMPT.format(**r))["input_ids"]
        answer = tokenizer(RESPONSE.format(**r), add_special_tokens=False)["input_ids"]
        ids = (prompt + answer + [tokenizer.eos_token_id])[:max_length]
        labels = ([-100] * len(prompt) + answer + [tokenizer.eos_token_id])[:max_length]
        out.append((ids, labels))
    return out


def run_plain(base: Path, args) -> dict:
    """The ceiling: a plain PyTorch loop, the model's own loss, same model, data and batch."""
    import random
    import time

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base)),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    examples = _examples(tokenizer, args.max_length)
    random.Random(0).shuffle(examples)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    tokens, started = 0, time.perf_counter()
    for step in range(args.steps):
        batch = [
            examples[(step * args.batch_size + i) % len(examples)] for i in range(args.batch_size)
        ]
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(mask.sum())
    return {"tokens": tokens, "seconds": time.perf_counter() - started}


def child(variant: str, base: Path, work: Path, args) -> None:
    if args.profile:
        import torch

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            _run_variant(variant, base, work, args)
        print(f"\nPROFILE {variant}: the operators that took the most self time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return
    _run_variant(variant, base, work, args)


def _run_variant(variant: str, base: Path, work: Path, args) -> None:
    if variant == "plain":
        result = run_plain(base, args)
    elif variant == "trl":
        result = run_trl(base, work, args)
    else:
        result = run_ours(base, work, args, variant == "packed")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\nRESULT " + json.dumps(result))  # the rich panel may leave the line open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--variant", choices=["plain", "trl", "ours", "packed"])
    parser.add_argument("--variants", default="plain,trl,ours")
    parser.add_argument("--profile", action="store_true", help="profile trl and kollm (slow)")
    parser.add_argument("--base", type=Path)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.base, Path(tempfile.mkdtemp()), args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        build_base(base)
        results = {}
        for variant in args.variants.split(","):
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
            if args.profile:
                cmd.append("--profile")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            if args.profile:
                print(out[out.index("PROFILE") :] if "PROFILE" in out else out[-3000:])
                continue
            results[variant] = json.loads(
                next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]
            )
            r = results[variant]
            rate = r["tokens"] / r["seconds"]
            print(f"{variant:7s}: {rate:8.0f} tokens/s  peak RSS {r['peak_rss_mib']:.0f} MiB")
    if args.profile:
        return
    rate = {k: v["tokens"] / v["seconds"] for k, v in results.items()}
    if "packed" in rate:
        print(f"packed/trl {rate['packed'] / rate['trl']:.2f}")
    plain, trl = rate["ours"] / rate["plain"], rate["ours"] / rate["trl"]
    print(f"kollm/plain {plain:.2f}  kollm/trl {trl:.2f}")


if __name__ == "__main__":
    main()
