"""Synthesis throughput, one run: 1,000 answers from a fake OpenAI-compatible endpoint with a
fixed latency, through kollm's endpoint client at a concurrency limit; calls/s against the
ideal (limit / latency), then the same run again, which must come wholly from the cache.

    .venv/bin/python bench/synth_bench.py [--records 1000] [--concurrency 8] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import threading
import time

from fastapi import FastAPI, Request

from kollm.endpoint import Endpoint, EndpointCache, EndpointClient
from kollm.synth.steps import Answerer


def fake_endpoint(latency: float) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        await asyncio.sleep(latency)
        text = "답변: " + body["messages"][-1]["content"][:20]
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12},
        }

    return app


def start(app: FastAPI) -> str:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    url = start(fake_endpoint(args.latency))
    rows = [{"instruction": f"질문 {i}: 한국어로 답해 주세요."} for i in range(args.records)]
    with tempfile.TemporaryDirectory() as home:
        runs = []
        for attempt in ("first run", "rerun"):
            cache = EndpointCache(home)
            client = EndpointClient(Endpoint(url, "fake"), cache, args.concurrency)
            started = time.perf_counter()
            made = Answerer(client).run(rows)
            seconds = time.perf_counter() - started
            runs.append((attempt, seconds, client.usage.calls, cache.hits, len(made)))
    ideal = args.concurrency / args.latency
    (_, seconds, calls, _, made), (_, again, recalls, hits, _) = runs
    rate = calls / seconds
    latency_ms = args.latency * 1000
    print(f"{made} answers, concurrency {args.concurrency}, endpoint latency {latency_ms:.0f} ms")
    print(f"  first run: {seconds:.1f} s, {rate:.1f} calls/s (ideal {ideal:.0f}/s)")
    print(f"  rerun:     {again:.1f} s, {recalls} calls, cache hits {hits / args.records:.0%}")
    print(f"ratio calls/ideal {rate / ideal:.2f}  cache_hits_on_rerun {hits / args.records:.2f}")
    return 0 if hits == args.records and recalls == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
