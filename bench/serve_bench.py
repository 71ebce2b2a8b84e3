"""Serving benchmark: kollm serve (CTranslate2 int8) against raw CTranslate2 and a naive server.

    .venv/bin/python bench/serve_bench.py [--layers 24] [--requests 2] [--max-tokens 32]

A random-weight Qwen2-shaped model (about 0.5B parameters at the defaults; the vocabulary is a
BPE learnt from the bundled data) is built locally and served on 127.0.0.1. Closed-loop
streaming clients at concurrency 1, 4, 8, 16 send Korean dialogue prompts; per request we time
TTFT, e2e and the gaps between chunks, as `vllm bench serve` defines them: TPOT = (e2e - ttft) /
(tokens - 1), ITL = mean gap, output tokens/s = all output tokens / wall time. In the same run:
CTranslate2's `generate_batch` on batches of 8 of the same prompts, and a naive transformers
server (one `generate` per request). The last line reads `serve/engine R1  serve/naive R2`,
both at concurrency 8.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "data" / "sample" / "dialogsum_dev.jsonl"


def build_model(out: Path, layers: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kollm.train.scratch import train_tokenizer

    rows = [json.loads(line) for line in DEV.read_text(encoding="utf-8").splitlines()]
    tok = train_tokenizer((r["dialogue"] + r["summary"] for r in rows), 8000, out)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(out))
    print(
        f"model: Qwen2-shaped, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters"
    )


def prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in DEV.read_text(encoding="utf-8").splitlines()][:n]
    return [f"다음 대화를 요약하세요.\n{r['dialogue'][:300]}\n요약:" for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_thread(app) -> tuple[uvicorn.Server, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


async def one_stream(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    stamps, tokens = [], 0
    async with http.stream("POST", "/v1/completions", json=body) as reply:
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    ttft = (stamps[0] if stamps else end) - start
    return {
        "ttft": ttft,
        "e2e": end - start,
        "tokens": tokens,
        "tpot": (end - start - ttft) / max(tokens - 1, 1),
        "itl": statistics.fmean(gaps) if gaps else 0.0,
    }


async def closed_loop(url: str, concurrency: int, requests: int, texts: list[str], max_tokens: int):
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:

        async def client(i: int) -> list[dict]:
            return [
                await one_stream(http, texts[(i * requests + k) % len(texts)], max_tokens)
                for k in range(requests)
            ]

        start = time.perf_counter()
        results = [
            r for rs in await asyncio.gather(*(client(i) for i in range(concurrency))) for r in rs
        ]
        wall = time.perf_counter() - start
    return results, sum(r["tokens"] for r in results) / wall


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def raw_engine_rate(engine, texts: list[str], max_tokens: int) -> float:
    from kollm.engines.base import GenerationParams

    params = GenerationParams(max_new_tokens=max_tokens)
    engine.generate(texts[:8], params)  # warm-up
    start = time.perf_counter()
    tokens = sum(
        g.completion_tokens
        for i in range(0, 32, 8)
        for g in engine.generate(texts[i : i + 8], params)
    )
    return tokens / (time.perf_counter() - start)


def naive_app(model_dir: Path):
    """One transformers `generate` per request, no batching: what a quick FastAPI wrapper does."""
    import torch
    from fastapi import FastAPI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    def complete(body: dict):
        ids = tok(body["prompt"], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **ids,
                max_new_tokens=body["max_tokens"],
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, ids["input_ids"].shape[1] :]
        return {
            "choices": [{"text": tok.decode(new, skip_special_tokens=True)}],
            "usage": {"completion_tokens": len(new)},
        }

    return app


async def naive_rate(
    url: str, concurrency: int, texts: list[str], max_tokens: int, requests: int
) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=1200) as http:

        async def client(i: int) -> int:
            total = 0
            for k in range(requests):
                body = {"prompt": texts[(i * requests + k) % len(texts)], "max_tokens": max_tokens}
                total += (await http.post("/v1/completions", json=body)).json()["usage"][
                    "completion_tokens"
                ]
            return total

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(client(i) for i in range(concurrency))))
        return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from kollm.serve.app import ServeSettings, create_app
    from kollm.serve.metrics import ServerMetrics
    from kollm.serve.service import ModelManager

    texts = prompts(64)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "bench"
        build_model(model_dir, args.layers)
        manager = ModelManager(
            [str(model_dir)], "ctranslate2", ServerMetrics(), max_batch=16, max_queue=256
        )
        server, url = run_in_thread(create_app(manager, ServeSettings(log_requests=False), None))
        engine_rate = raw_engine_rate(manager.models["bench"].engine, texts, args.max_tokens)
        print(f"raw CTranslate2 generate_batch(8): {engine_rate:.1f} output tokens/s")
        print("conc  TTFT p50  TTFT p99  TPOT p50  ITL mean  output tok/s")
        serve_rates = {}
        for concurrency in (1, 4, 8, 16):
            results, rate = asyncio.run(
                closed_loop(url, concurrency, args.requests, texts, args.max_tokens)
            )
            serve_rates[concurrency] = rate
            ttft = [r["ttft"] for r in results]
            tpot = pct([r["tpot"] for r in results], 50)
            itl = statistics.fmean(r["itl"] for r in results)
            p50, p99 = pct(ttft, 50), pct(ttft, 99)
            print(
                f"{concurrency:4d}  {p50:8.3f}  {p99:8.3f}  {tpot:8.4f}  {itl:8.4f}  {rate:12.1f}"
            )
        server.should_exit = True
        naive_server, naive_url = run_in_thread(naive_app(model_dir))
        naive = asyncio.run(naive_rate(naive_url, 8, texts, args.max_tokens, args.requests))
        naive_server.should_exit = True
        print(f"naive transformers server, concurrency 8: {naive:.1f} output tokens/s")
    print(
        f"serve/engine {serve_rates[8] / engine_rate:.2f}  serve/naive {serve_rates[8] / naive:.2f}"
    )


if __name__ == "__main__":
    main()
