"""What the engines that run an inference server of their own as a subprocess share (vLLM,
llama.cpp's llama-server): a free loopback port, waiting for its /health, its tokenizer for
the server's side of the protocol, and stopping it."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

_CLIENT_LOCK = threading.Lock()


def free_port() -> int:
    """A free TCP port on the loopback address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse_events(reply) -> Iterator[dict]:
    """The JSON objects of a streamed reply's SSE `data:` lines, up to `data: [DONE]`. Lines
    are cut at LF only: httpx's iter_lines also cuts at U+2028, U+0085 and the like, which
    JSON leaves unescaped inside a string (a model's answer may hold them)."""
    pending = b""
    for block in reply.iter_bytes():
        pending += block
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            yield json.loads(data)


class UpstreamServer:
    """A mixin: `process`, `url`, `tokenizer` and `startup_timeout_s` are the engine's."""

    label = "the server"  # how messages name the upstream
    process: subprocess.Popen | None = None
    tokenizer = None
    startup_timeout_s: float = 300
    _http = None

    def wait_healthy(self, exited: Callable[[int], Exception], poll_s: float = 0.2) -> None:
        """Return once /health answers 200; `exited(code)` is raised if the process ends
        first, TimeoutError (the process stopped) past `startup_timeout_s`."""
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise exited(self.process.returncode)
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(poll_s)
        self.unload()
        raise TimeoutError(f"{self.label} did not report healthy within {self.startup_timeout_s}s")

    @property
    def http(self):
        """The one HTTP client every request to the upstream goes through, from any thread.
        A client per request costs a TLS context (tens of ms of CPU, taken from the engine on
        a CPU machine) and a new connection; this one keeps its connections open. It ignores
        the proxy variables: the upstream is on the loopback address."""
        import httpx

        with _CLIENT_LOCK:
            if self._http is None:
                # idle connections are dropped before the upstream's own keep-alive timeout
                # (5 s in llama-server and uvicorn), so a request never lands on one the
                # upstream is closing ("Server disconnected without sending a response")
                limits = httpx.Limits(
                    max_connections=None, max_keepalive_connections=256, keepalive_expiry=2.0
                )
                self._http = httpx.Client(limits=limits, trust_env=False, timeout=None)
            return self._http

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tokenize(self, text: str) -> list[int]:
        """The ids the upstream runs for the text prompt: with the tokenizer's special tokens,
        as vLLM's /v1/completions adds them to a text prompt, so the ids the server counts
        and hands on are the model's input whether it sends text or ids."""
        return self.tokenizer(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError(f"{self.label} gives no embeddings: use the transformers engine")

    def score(self, sequences: list[list[int]], top_n: int = 0, adapter: str | None = None):
        raise ValueError(
            f"prompt log-probabilities (echo with logprobs) are not passed through from "
            f"{self.label}: serve the model with the transformers or ctranslate2 engine to score"
            " prompts"
        )

    def unload(self) -> None:
        with _CLIENT_LOCK:
            if self._http is not None:
                self._http.close()
                self._http = None
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
