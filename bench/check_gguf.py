"""A slow, optional check of the GGUF export (`make check-gguf`, not in `make test`): llama.cpp
itself runs the exported file and its greedy answers are compared with transformers'.

    .venv/bin/python bench/check_gguf.py [--model DIR] [--prompts 20] [--tokens 16]

llama-cpp-python 0.3.36 (the same llama.cpp the converter comes from) is built once from its
sdist into .cache/llamacpp (minutes on 2 cores: it compiles llama.cpp), outside the project's
venv. The model is the demo's trained model when `make demo` has run, else a small random
llama-shaped model with a BPE learnt from the bundled data. For 20 Korean chat prompts: the
prompt's token ids from llama.cpp's tokenizer against the HF tokenizer's, and 16 greedy tokens
from the f16 GGUF against transformers in float32. Last line: `tokens R1  greedy R2` (shares
of prompts that match).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "llamacpp"
DEMO = REPO / "runs" / "kollm-demo" / "train" / "model"

RUNNER = """
import json, sys
from llama_cpp import Llama
job = json.load(sys.stdin)
llm = Llama(model_path=job["gguf"], n_ctx=1024, verbose=False, seed=0)
out = []
for text in job["prompts"]:
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    new = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        if token == llm.token_eos() or len(new) == job["tokens"]:
            break
        new.append(token)
    llm.reset()
    out.append({"prompt_ids": ids, "greedy": new})
print(json.dumps(out))
"""


def llamacpp_python() -> Path:
    python = CACHE / "bin" / "python"
    if not python.exists():
        print(f"building llama-cpp-python into {CACHE} (compiles llama.cpp; minutes)")
        venv.create(CACHE, with_pip=True)
        pip = [str(python), "-m", "pip", "install", "-q", "llama-cpp-python==0.3.36"]
        subprocess.run(pip, check=True)
    return python


def model_dir(tmp: Path) -> Path:
    if (DEMO / "config.json").is_file():
        return DEMO
    from kollm.config import ModelConfig
    from kollm.train.scratch import build_model, train_tokenizer

    rows = [json.loads(x) for x in (REPO / "data/sample/dialogsum_dev.jsonl").open()]
    tok = train_tokenizer((r["dialogue"] + r["summary"] for r in rows), 4000, tmp / "m")
    shape = ModelConfig(
        layers=2, hidden_size=256, heads=4, intermediate_size=512, max_positions=1024
    )
    build_model(shape, tok, seed=0).save_pretrained(str(tmp / "m"))
    return tmp / "m"


def prompts(tokenizer, n: int) -> list[str]:
    rows = [json.loads(x) for x in (REPO / "data/sample/dialogsum_dev.jsonl").open()][:n]
    chats = [
        [{"role": "user", "content": f"다음 대화를 요약하세요.\n{r['dialogue'][:200]}"}]
        for r in rows
    ]
    return [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
    ]


def transformers_greedy(model_path: Path, texts: list[str], tokens: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    out = []
    for text in texts:
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        gen = model.generate(
            ids,
            max_new_tokens=tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
        new = gen[0, ids.shape[1] :].tolist()
        out.append(
            {"prompt_ids": ids[0].tolist(), "greedy": [t for t in new if t != tok.eos_token_id]}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from kollm.cluster.export import export_model

    python = llamacpp_python()
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or model_dir(Path(tmp))
        gguf = export_model(str(source), "gguf", Path(tmp) / "out", "f16").path
        texts = prompts(AutoTokenizer.from_pretrained(str(source)), args.prompts)
        job = json.dumps({"gguf": str(gguf), "prompts": texts, "tokens": args.tokens})
        done = subprocess.run(
            [str(python), "-c", RUNNER], input=job, capture_output=True, text=True, check=True
        )
        ours = json.loads(done.stdout)
        theirs = transformers_greedy(source, texts, args.tokens)
    same_ids = sum(a["prompt_ids"] == b["prompt_ids"] for a, b in zip(ours, theirs, strict=True))
    same_out = sum(a["greedy"] == b["greedy"] for a, b in zip(ours, theirs, strict=True))
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a["greedy"] != b["greedy"]:
            print(f"prompt {i}: llama.cpp {a['greedy']} transformers {b['greedy']}")
    n = len(texts)
    print(f"model {source}; {n} prompts, {args.tokens} greedy tokens, f16 GGUF vs float32")
    print(f"tokens {same_ids / n:.2f}  greedy {same_out / n:.2f}")


if __name__ == "__main__":
    sys.exit(main())
