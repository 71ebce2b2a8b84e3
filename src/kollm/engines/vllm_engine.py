"""The vLLM engine (GPU, optional extra `kollm[gpu]`): vLLM's own OpenAI server as a subprocess.

kollm launches `vllm serve` on a loopback port, waits for its /health, and routes generation
to its /v1/completions; vLLM does its own continuous batching, so one kollm batch becomes one
request per prompt, sent together.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kollm.engines.base import Generation, GenerationParams, TokenCallback


def vllm_command(
    model_dir: Path,
    port: int,
    served_name: str = "model",
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    dtype: str = "auto",
) -> list[str]:
    """The command line that starts vLLM's OpenAI-compatible server for `model_dir`."""
    exe = shutil.which("vllm")
    cmd = (
        [exe, "serve"]
        if exe
        else [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    )
    cmd += [
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--gpu-memory-utilization",
        str(gpu_memory_utilization),
    ]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd


class VllmEngine:
    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        port: int = 8100,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        startup_timeout_s: float = 600,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.port, self.startup_timeout_s = port, startup_timeout_s
        self.command = vllm_command(
            self.model_dir, port, "model", gpu_memory_utilization, max_model_len
        )
        self.context_length = max_model_len or 4096
        self.process: subprocess.Popen | None = None
        self.tokenizer = None

    def load(self) -> None:
        import httpx
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.process = subprocess.Popen(self.command)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with code {self.process.returncode}: {' '.join(self.command)}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"vLLM did not report healthy within {self.startup_timeout_s}s")

    def _one(self, prompt: str, params: GenerationParams) -> Generation:
        import httpx

        body = {
            "model": "model",
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            "seed": params.seed,
        }
        reply = httpx.post(
            f"http://127.0.0.1:{self.port}/v1/completions", json=body, timeout=600
        ).json()
        choice, use = reply["choices"][0], reply["usage"]
        return Generation(
            choice["text"], use["prompt_tokens"], use["completion_tokens"], choice["finish_reason"]
        )

    def generate(
        self, prompts: list[str], params: GenerationParams, on_token: TokenCallback | None = None
    ) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            results = list(pool.map(lambda text: self._one(text, params), prompts))
        if on_token is not None:  # vLLM streams text, not ids: replay the answer's tokens
            for i, result in enumerate(results):
                for token in self.tokenize(result.text):
                    on_token(i, token)
        return results

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError("serve embeddings with the transformers engine")

    def unload(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None
