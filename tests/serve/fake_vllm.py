"""A stand-in for `vllm serve MODEL ...` in tests: the same command-line flags, /health after a
short start-up, and /v1/completions that streams one token per SSE chunk with
`logprobs.tokens` as `token_id:N` (what vLLM does with --return-tokens-as-token-ids).

The answer is deterministic: `<served model> 답변: ` and the prompt's last five characters,
tokenized with the model dir's tokenizer; a prompt is a text or token ids, as vLLM takes; an
adapter name in `model` answers with its name. The answer ends at an id of `stop_token_ids`
(counted and streamed, its text left out as vLLM leaves out a special token's). A prompt
holding `FAIL` gets vLLM's 400 error body. Tokens are 30 ms apart, so a client can see that
the stream arrives while it is generated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import AutoTokenizer


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--served-model-name", default="model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dtype")
    parser.add_argument("--gpu-memory-utilization")
    parser.add_argument("--max-model-len")
    parser.add_argument("--return-tokens-as-token-ids", action="store_true")
    parser.add_argument("--structured-outputs-config")
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--lora-modules", nargs="*", default=[])
    return parser.parse_args()


def build(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    adapters = dict(m.split("=", 1) for m in args.lora_modules)
    started = time.monotonic()

    @app.get("/health")
    async def health():
        ready = time.monotonic() - started > 0.5  # not ready at once, as a real model load
        return JSONResponse({}, status_code=200 if ready else 503)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        if body["model"] not in (args.served_model_name, *adapters):
            return JSONResponse({"error": {"message": f"no model {body['model']}"}}, 404)
        # as vLLM: a prompt is a text, tokenised with the special tokens, or token ids as they are
        given = body["prompt"]
        prompt_ids = tokenizer(given)["input_ids"] if isinstance(given, str) else given
        prompt = given if isinstance(given, str) else tokenizer.decode(given)
        if "FAIL" in prompt:
            message = "This model's maximum context length is 16 tokens."
            return JSONResponse({"object": "error", "message": message, "code": 400}, 400)
        answer = f"{body['model']} 답변: {prompt[-5:]}"
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"][: body["max_tokens"]]
        # as vLLM: the answer ends at a stop token id, which is counted and streamed
        ends = [i for i, token in enumerate(ids) if token in (body.get("stop_token_ids") or ())]
        ids = ids[: ends[0] + 1] if ends else ids
        prompt_tokens = len(prompt_ids)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids)}
        finish = "stop" if ends or len(ids) < body["max_tokens"] else "length"
        if not body.get("stream"):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            choice = {"index": 0, "text": text, "finish_reason": finish}
            return {"choices": [choice], "usage": usage}
        return StreamingResponse(
            _stream(tokenizer, ids, finish, usage), media_type="text/event-stream"
        )

    return app


async def _stream(tokenizer, ids: list[int], finish: str, usage: dict):
    sent = ""
    for i, token in enumerate(ids):
        await asyncio.sleep(0.03)
        # As vLLM's detokenizer: a character split across tokens waits for its last byte.
        upto = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        if upto.endswith("\ufffd") and i < len(ids) - 1:
            upto = upto.rstrip("\ufffd")
        text, sent = upto[len(sent) :], upto
        choice = {
            "index": 0,
            "text": text,
            "logprobs": {"tokens": [f"token_id:{token}"]},
            "finish_reason": finish if i == len(ids) - 1 else None,
        }
        yield f"data: {json.dumps({'choices': [choice]}, ensure_ascii=False)}\n\n"
    yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


if __name__ == "__main__":
    options = parse()
    uvicorn.run(build(options), host=options.host, port=options.port, log_level="warning")
