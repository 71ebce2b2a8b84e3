"""Serving benchmark: kollm serve (CTranslate2 int8) against raw CTranslate2 and a naive server.

    .venv/bin/python bench/serve_bench.py [--layers 24] [--requests 2] [--max-tokens 32]
        [--profile] [--llamacpp] [--vllm]

A random-weight Qwen2-shaped model (about 0.5B parameters at the defaults; the vocabulary is a BPE
learnt from the bundled data) is built locally and served on 127.0.0.1. Closed-loop streaming
clients at concurrency 1, 4, 8, 16 send Korean dialogue prompts; per request we time TTFT, e2e and
the gaps between chunks, as `vllm bench serve` defines them: TPOT = (e2e - ttft) / (tokens - 1), ITL
= mean gap, output tokens/s = all output tokens / wall time. In the same run: CTranslate2's
`generate_batch` on the very batches the clients make (round k of requests is one batch), and a
naive transformers server (one `generate` per request). Shared-prompt caching: the same clients at
concurrency 8 with a ~300-token system prompt before every prompt, with CTranslate2's static-prompt
cache on and off (off everywhere else). Memory: the resident set of a `kollm serve` process serving
the model on CTranslate2. `--profile` prints the batches the server formed and the engine's busy
share of the wall time; `--llamacpp` adds llama.cpp's `llama-server --parallel 8` (built once, see
llama_server.py), `kollm serve --engine llamacpp` (a process of its own, as llama-server is) over
the same GGUF Q8_0 export, and llama-cpp-python's server. The last line reads `serve/engine R1
serve/naive R2 prefix/off R3 rss_gb M` (R1 and R2 at concurrency 8; R3 the throughput with the cache
on over off), with, when asked, `kollm/llamacpp` and `kollm/llamacpp_16` (kollm on llamacpp over raw
llama-server, output tokens/s at 8 and 16), `kollm/llamacpp_ttft` (TTFT p50 at 8, kollm over raw)
and `ct2/llamacpp` (CTranslate2 under kollm over raw llama-server); `--vllm` adds vLLM's CPU build
(`make vllm-venv`) hit directly and under kollm's vllm engine, with `kollm/vllm` and
`kollm/vllm_ttft` (output tokens/s and TTFT p50 at 16, kollm over raw) and `vllm/ct2`,
`vllm/llamacpp` (raw vLLM's throughput at 16 over the other engines').
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
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


def run_in_thread(app, manager=None) -> tuple[uvicorn.Server, str]:
    """The app on a free port once /health says ready (or SystemExit with why its models did
    not load)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while True:
        if manager is not None and manager.failure:
            server.should_exit = True
            raise SystemExit(f"the server's models did not load: {manager.failure}")
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
    tokens = tokens or len(stamps)  # a server without usage in its stream: a chunk a token
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


def client_rounds(texts: list[str], concurrency: int, requests: int) -> list[list[str]]:
    """The batches the closed-loop clients make: round k holds each client's k-th prompt."""
    return [
        [texts[(i * requests + k) % len(texts)] for i in range(concurrency)]
        for k in range(requests)
    ]


def raw_engine_rate(engine, texts, concurrency: int, requests: int, max_tokens: int, decode=False):
    """CTranslate2 alone on the very batches the server gets from the clients (same prompts,
    same grouping), output tokens/s. decode=True adds the server's per-token work in the
    engine thread (an incremental decoder per sequence) without any HTTP."""
    from kollm.engines.base import GenerationParams, IncrementalDecoder

    params = GenerationParams(max_new_tokens=max_tokens)
    rounds = client_rounds(texts, concurrency, requests)
    engine.generate(rounds[0], params)  # warm-up
    start, tokens = time.perf_counter(), 0
    for batch in rounds:
        decoders = [IncrementalDecoder(engine.decode) for _ in batch]
        on_token = (lambda i, t, d=decoders: d[i].push(t)) if decode else None
        tokens += sum(g.completion_tokens for g in engine.generate(batch, params, on_token))
    return tokens / (time.perf_counter() - start)


class BatchLog:
    """Wraps an engine's generate: when each batch ran and how many requests it held."""

    def __init__(self, engine) -> None:
        self.generate, self.batches = engine.generate, []
        engine.generate = self

    def __call__(self, prompts, params, on_token=None, **extra):
        start = time.perf_counter()
        try:
            return self.generate(prompts, params, on_token, **extra)
        finally:
            self.batches.append((start, time.perf_counter(), len(prompts)))

    def report(self, wall: float) -> str:
        busy = sum(end - start for start, end, _ in self.batches)
        sizes = [n for _, _, n in self.batches]
        self.batches = []
        return f"batches {sizes}, engine busy {busy:.1f} s of {wall:.1f} s ({busy / wall:.0%})"


def engine_first_token(engine, texts: list[str], max_tokens: int) -> float:
    """Median seconds from `generate` to the first text, one prompt at a time: token ids
    through the same incremental decoder the server streams with (a byte-level token that
    holds part of a Hangul syllable shows no text yet)."""
    from kollm.engines.base import GenerationParams, IncrementalDecoder

    params = GenerationParams(max_new_tokens=max_tokens)
    times = []
    for text in texts[:6]:
        first: list[float] = []
        decoder = IncrementalDecoder(engine.decode)

        def seen(index: int, token: int, first=first, decoder=decoder) -> None:
            if decoder.push(token) and not first:
                first.append(time.perf_counter())

        start = time.perf_counter()
        engine.generate([text], params, seen)
        times.append((first[0] if first else time.perf_counter()) - start)
    return statistics.median(times[1:])


SYSTEM = (
    "당신은 구청 민원 안내 도우미입니다. 주민등록, 전입신고, 여권, 복지 급여, 주차 허가 같은"
    " 민원을 정확하고 친절하게 안내하세요. 모르는 것은 모른다고 말하고, 개인정보는 묻지 마세요. "
)


def system_texts(tokenizer, texts: list[str], tokens: int = 300) -> list[str]:
    """A chat service's requests: the same system prompt of about `tokens` tokens, then a
    short question (a dialogue's first turn)."""
    system = SYSTEM
    while len(tokenizer(system)["input_ids"]) < tokens:
        system += SYSTEM
    questions = [t.split("\n")[1] if "\n" in t else t[:80] for t in texts]
    return [f"{system}\n질문: {q}\n답변:" for q in questions]


def server_first_text(url: str, texts: list[str], max_tokens: int) -> float:
    """Median TTFT of the same prompts as engine_first_token, one request at a time."""

    async def run() -> list[float]:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            return [(await one_stream(http, t, max_tokens))["ttft"] for t in texts[:6]]

    return statistics.median(asyncio.run(run())[1:])


def serve_rss_gb(model_dir: Path) -> float:
    """Resident memory of a `kollm serve` process serving the model on CTranslate2 (int8), once
    it answers."""
    import subprocess
    import sys

    port = free_port()
    kollm = Path(sys.executable).parent / "kollm"
    env = {**os.environ, "KOLLM_HOME": str(model_dir.parent / "home")}
    cmd = [str(kollm), "serve", str(model_dir), "--engine", "ctranslate2", "--port", str(port)]
    cmd += ["--no-log"]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss_kb = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
        return rss_kb / 2**20
    finally:
        process.terminate()
        process.wait(30)


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


def wait_ready(url: str, path: str, process) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def served_rate(
    command: list[str], port: int, ready: str, texts: list[str], args, concurrency=(8,)
) -> dict[int, tuple[float, float]]:
    """(output tokens/s, TTFT p50) of the same clients at each concurrency against a server
    started here."""
    import subprocess

    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, ready, server)
        return loop_rates(url, texts, args, concurrency)
    finally:
        server.terminate()
        server.wait(30)


def loop_rates(url: str, texts, args, concurrency) -> dict[int, tuple[float, float]]:
    asyncio.run(closed_loop(url, 2, 1, texts, args.max_tokens))  # warm-up
    out = {}
    for c in concurrency:
        results, rate = asyncio.run(closed_loop(url, c, args.requests, texts, args.max_tokens))
        out[c] = (rate, pct([r["ttft"] for r in results], 50))
    return out


def kollm_llamacpp_rates(model_dir: Path, texts, args) -> dict[int, tuple[float, float]]:
    """`kollm serve --engine llamacpp` as a user runs it, in a process of its own (as raw
    llama-server is: the clients here do not share its interpreter), over the same GGUF (the
    export gguf_for made under this run's KOLLM_HOME) with llama-server's defaults here: 8
    slots, the model's 2048-token context a slot, a thread per core; the same clients at 8
    and 16."""
    import subprocess
    import sys

    port = free_port()
    kollm = str(Path(sys.executable).parent / "kollm")
    command = [kollm, "serve", str(model_dir), "--engine", "llamacpp", "--port", str(port)]
    command += ["--no-log", "--max-queue", "256"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, "/health", server)
        return loop_rates(url, texts, args, (8, 16))
    finally:
        server.terminate()
        server.wait(60)


def llamacpp_rates(model_dir: Path, texts: list[str], args) -> dict[str, dict]:
    """The same model as GGUF Q8_0 behind llama.cpp's own `llama-server --parallel 8`
    (continuous batching over 8 slots; built once into .cache, see bench/llama_server.py) and
    behind llama-cpp-python's server (what `pip install llama-cpp-python[server]` gives: one
    request at a time), the same clients at concurrency 8, 2 threads each."""
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from check_gguf import llamacpp_python
    from kollm.cluster.gguf_files import gguf_for
    from kollm.engines.llamacpp_engine import LlamaServerMissing, find_llama_server
    from llama_server import llama_server

    gguf = str(gguf_for(str(model_dir), model_dir, "q8_0"))  # where kollm serve looks for it
    port = free_port()
    try:
        binary = find_llama_server()
    except LlamaServerMissing:
        binary = llama_server()
    native = [str(binary), "-m", gguf, "--host", "127.0.0.1", "--port", str(port)]
    native += ["--parallel", "8", "-c", str(8 * 2048), "-t", "2", "-tb", "2", "--no-webui"]
    native += ["--kv-unified", "--cont-batching"]
    rates = {"llama-server": served_rate(native, port, "/health", texts, args, (8, 16))}
    rates["kollm/llamacpp"] = kollm_llamacpp_rates(model_dir, texts, args)
    if args.no_llamacpp_python:
        return rates
    python = llamacpp_python()
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "llama-cpp-python[server]==0.3.36"], check=True
    )
    port = free_port()
    wrapped = [str(python), "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "bench"]
    wrapped += ["--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
    wrapped += ["--interrupt_requests", "False"]  # by default a new request cuts the last off
    rates["llama-cpp-python"] = served_rate(wrapped, port, "/v1/models", texts, args)
    return rates


VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache; vLLM's CPU default is a share of RAM
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
}


def vllm_rates(model_dir: Path, texts: list[str], args) -> dict[str, dict]:
    """The same model on vLLM's CPU build (`make vllm-venv`, in .venv-vllm) hit directly, and
    kollm serve on its vllm engine over a vLLM started with the same flags (16 sequences, the
    checkpoint's dtype as vLLM picks it); the same clients at 8 and 16."""
    import os

    from kollm.engines.vllm_engine import api_server_command, vllm_command
    from kollm.serve.app import ServeSettings, create_app
    from kollm.serve.metrics import ServerMetrics
    from kollm.serve.service import ModelManager

    python = REPO / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        raise SystemExit("--vllm needs vLLM's CPU build: run `make vllm-venv` first")
    executable = api_server_command(python)
    port = free_port()
    # the very command line the engine runs (vllm_command), on its own port
    raw = vllm_command(
        model_dir, port, "bench", max_model_len=2048, executable=executable, max_num_seqs=16
    )
    os.environ.update(VLLM_ENV)  # the raw server inherits it, as the engine's does
    rates = {"vllm": served_rate(raw, port, "/health", texts, args, (8, 16))}
    options = {
        "executable": executable,
        "max_model_len": 2048,
        "max_num_seqs": 16,
        "env": VLLM_ENV,
        "startup_timeout_s": 900,
    }
    manager = ModelManager(
        [str(model_dir)], "vllm", ServerMetrics(), max_queue=256, engine_options=options
    )
    app = create_app(manager, ServeSettings(log_requests=False), None)
    server, url = run_in_thread(app, manager)
    try:
        rates["kollm/vllm"] = loop_rates(url, texts, args, (8, 16))
    finally:
        server.should_exit = True
        for served in manager.models.values():
            served.engine.unload()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--llamacpp", action="store_true", help="add llama.cpp (builds it once)")
    parser.add_argument(
        "--vllm", action="store_true", help="add vLLM's CPU build (needs make vllm-venv)"
    )
    parser.add_argument(
        "--no-llamacpp-python", action="store_true", help="skip llama-cpp-python's server"
    )
    parser.add_argument(
        "--profile", action="store_true", help="where the server's time goes, per concurrency"
    )
    args = parser.parse_args()

    from kollm.serve.app import ServeSettings, create_app
    from kollm.serve.metrics import ServerMetrics
    from kollm.serve.service import ModelManager

    texts = prompts(64)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KOLLM_HOME"] = str(Path(tmp) / "kollm-home")  # the exports, not ~'s
        model_dir = Path(tmp) / "bench"
        build_model(model_dir, args.layers)
        manager = ModelManager(
            [str(model_dir)], "ctranslate2", ServerMetrics(), max_batch=16, max_queue=256
        )
        server, url = run_in_thread(create_app(manager, ServeSettings(log_requests=False), None))
        engine = manager.models["bench"].engine
        # Off until its own section: a repeated prompt would otherwise find its whole prefix
        # cached, and TTFT against the engine's first token would measure the cache.
        engine.prefixes = None
        engine_rate = {
            c: raw_engine_rate(engine, texts, c, args.requests, args.max_tokens) for c in (8, 16)
        }
        first = engine_first_token(engine, texts, args.max_tokens)
        print(
            f"raw CTranslate2 generate_batch on the clients' batches: {engine_rate[8]:.1f}"
            f" output tokens/s at 8, {engine_rate[16]:.1f} at 16; first token {first * 1000:.0f} ms"
        )
        if args.profile:
            for c in (8, 16):
                decoded = raw_engine_rate(engine, texts, c, args.requests, args.max_tokens, True)
                print(f"  at {c}, with the server's incremental decoders: {decoded:.1f} tokens/s")
        log = BatchLog(engine) if args.profile else None
        print("conc  TTFT p50  TTFT p99  TPOT p50  ITL mean  output tok/s")
        serve_rates, ttft50 = {}, {}
        for concurrency in (1, 4, 8, 16):
            started = time.perf_counter()
            results, rate = asyncio.run(
                closed_loop(url, concurrency, args.requests, texts, args.max_tokens)
            )
            if log is not None:
                print(f"  at {concurrency}: {log.report(time.perf_counter() - started)}")
            serve_rates[concurrency] = rate
            ttft = [r["ttft"] for r in results]
            tpot = pct([r["tpot"] for r in results], 50)
            itl = statistics.fmean(r["itl"] for r in results)
            ttft50[concurrency], p99 = pct(ttft, 50), pct(ttft, 99)
            print(
                f"{concurrency:4d}  {ttft50[concurrency]:8.3f}  {p99:8.3f}  {tpot:8.4f}"
                f"  {itl:8.4f}  {rate:12.1f}"
            )
        served_first = server_first_text(url, texts, args.max_tokens)
        long_texts = system_texts(engine.tokenizer, texts)
        prefix = {}
        for cache in (False, True):
            from kollm.engines.ctranslate2_engine import SharedPrefixes

            engine.prefixes = SharedPrefixes() if cache else None
            results, rate = asyncio.run(
                closed_loop(url, 8, args.requests + 1, long_texts, args.max_tokens)
            )
            prefix[cache] = (rate, pct([r["ttft"] for r in results], 50))
            print(
                f"300-token system prompt, cache {'on ' if cache else 'off'}: {rate:.1f}"
                f" output tokens/s, TTFT p50 {prefix[cache][1]:.3f} s"
            )
        server.should_exit = True
        naive_server, naive_url = run_in_thread(naive_app(model_dir))
        naive = asyncio.run(naive_rate(naive_url, 8, texts, args.max_tokens, args.requests))
        naive_server.should_exit = True
        print(f"naive transformers server, concurrency 8: {naive:.1f} output tokens/s")
        rss = serve_rss_gb(model_dir)
        llama = llamacpp_rates(model_dir, texts, args) if args.llamacpp else {}
        vllm = vllm_rates(model_dir, texts, args) if args.vllm else {}
        for name, by_concurrency in {**llama, **vllm}.items():
            what = "bf16" if name in vllm else "GGUF Q8_0"
            for c, (rate, ttft) in by_concurrency.items():
                print(
                    f"{name}, {what}, concurrency {c}: {rate:.1f} output tokens/s, "
                    f"TTFT p50 {ttft:.3f} s"
                )
        print(f"CTranslate2 int8 (kollm serve), concurrency 16: {serve_rates[16]:.1f} tokens/s")
    print(
        f"serve/engine at 16: {serve_rates[16] / engine_rate[16]:.2f};"
        f" TTFT at 1 / engine first text (same prompts): {served_first / first:.2f};"
        f" prefix on/off TTFT: {prefix[True][1] / prefix[False][1]:.2f}"
    )
    ratio, over_naive = serve_rates[8] / engine_rate[8], serve_rates[8] / naive
    print(
        f"serve/engine {ratio:.2f}  serve/naive {over_naive:.2f}"
        f"  prefix/off {prefix[True][0] / prefix[False][0]:.2f}  rss_gb {rss:.2f}"
        + (_llamacpp_ratios(serve_rates, llama) if llama else "")
        + (_vllm_ratios(serve_rates, vllm, llama) if vllm else "")
    )


def _vllm_ratios(serve_rates: dict, vllm: dict, llama: dict) -> str:
    """kollm on vllm over vLLM hit directly (throughput at 16, TTFT p50 at 16), and vLLM's CPU
    throughput at 16 over CTranslate2's (kollm serve) and llama-server's."""
    raw, ours = vllm["vllm"], vllm["kollm/vllm"]
    out = (
        f"  kollm/vllm {ours[16][0] / raw[16][0]:.2f}"
        f"  kollm/vllm_ttft {ours[16][1] / raw[16][1]:.2f}"
        f"  vllm/ct2 {raw[16][0] / serve_rates[16]:.2f}"
    )
    if llama:
        out += f"  vllm/llamacpp {raw[16][0] / llama['llama-server'][16][0]:.2f}"
    return out


def _llamacpp_ratios(serve_rates: dict, llama: dict) -> str:
    """kollm on llamacpp over raw llama-server (throughput at 8 and 16, TTFT p50 at 8), and
    kollm's default CPU engine (CTranslate2) over raw llama-server at 8."""
    raw, ours = llama["llama-server"], llama["kollm/llamacpp"]
    return (
        f"  kollm/llamacpp {ours[8][0] / raw[8][0]:.2f}"
        f"  kollm/llamacpp_16 {ours[16][0] / raw[16][0]:.2f}"
        f"  kollm/llamacpp_ttft {ours[8][1] / raw[8][1]:.2f}"
        f"  ct2/llamacpp {serve_rates[8] / raw[8][0]:.2f}"
    )


if __name__ == "__main__":
    main()
