"""Shared fixtures: tests never touch the network and write only under tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n 2` (make test) each worker has a core: one intra-op thread per worker
    # and per process it starts, not two workers' torch pools fighting over two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    # GNU readline (imported in the controller) setenv()s the terminal's size, which workers
    # inherit (a serial run's os.environ never has it): rich would fix the CLI at 80 columns.
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

from tests.postgres import postgres_server, postgres_url, share_registry, store_backend  # noqa: F401
from tests.ray_cluster import (  # noqa: F401 - the session's local Ray cluster
    pytest_runtest_teardown,
    pytest_sessionfinish,
    ray_cluster,
)
from tests.xdist_files import pytest_xdist_make_scheduler  # noqa: F401 - make test's two workers

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    """Every test gets its own KOLLM_HOME (a test may point it elsewhere): nothing a test
    registers or logs lands in the user's store."""
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "kollm-home"))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture
def repo() -> Path:
    return REPO


TINY_MODEL = {
    "base": "scratch",
    "layers": 1,
    "hidden_size": 32,
    "heads": 2,
    "intermediate_size": 64,
    "vocab_size": 400,
    "max_positions": 512,
}


def tiny_recipe_text(root: Path, n_train: int = 16, n_dev: int = 6, **sections) -> str:
    """A recipe over a few generated dialogues and a 1-layer scratch model, all under `root`."""
    import yaml

    from kollm.samples.generate import generate_dialogues

    rows = [
        r
        for r in generate_dialogues(80, seed=5, prefix="t", noise=False)
        if r["dialogue"].count("\n") >= 5
    ]
    write_jsonl(root / "train_in.jsonl", rows[:n_train])
    write_jsonl(root / "dev_in.jsonl", rows[n_train : n_train + n_dev])
    recipe = {
        "name": "tiny",
        "output_dir": str(root / "run"),
        "data": {
            "input": {"train": str(root / "train_in.jsonl"), "dev": str(root / "dev_in.jsonl")},
            "kind": "dialogue_summary",
            "report": {"tokenizer": None},
        },
        "model": dict(TINY_MODEL),
        "train": {
            "max_steps": 30,
            "batch_size": 4,
            "learning_rate": 0.003,
            "save_steps": 10,
            "logging_steps": 2,
            "max_length": 256,
        },
        "eval": {"batch_size": 8, "decoding": {"max_new_tokens": 12}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return "# Run: kollm run tiny.yaml\n" + yaml.safe_dump(recipe, allow_unicode=True)


@pytest.fixture
def tiny_recipe(tmp_path):
    """(path, text) of a tiny recipe; its data stage has already run."""
    from kollm.config import load_recipe
    from kollm.data.pipeline import prepare

    text = tiny_recipe_text(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(text, encoding="utf-8")
    recipe = load_recipe(path)
    prepare(recipe.data, recipe.data_dir)
    return path


@pytest.fixture
def local_base(tmp_path, tiny_recipe):
    """A small causal model saved to a dir, standing in for a hub model."""
    from kollm.config import ModelConfig, load_recipe
    from kollm.train.scratch import build_model, train_tokenizer

    rows = [
        json.loads(x)
        for x in (load_recipe(tiny_recipe).data_dir / "train.jsonl").read_text().splitlines()
    ]
    base = tmp_path / "base"
    tok = train_tokenizer([r["dialogue"] + r["summary"] for r in rows], 400, base)
    build_model(ModelConfig(**TINY_MODEL), tok, seed=0).save_pretrained(str(base))
    return base


# --- a registered tiny model and a live server (serve and feedback tests) ----------------------

import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402
import uvicorn  # noqa: E402


@pytest.fixture(scope="session")
def served_home(tmp_path_factory) -> Path:
    """KOLLM_HOME with `tiny` version 1 (trained 40 steps) at production."""
    from kollm.config import load_recipe
    from kollm.data.pipeline import prepare
    from kollm.registry import Registry
    from kollm.train import run_training

    root = tmp_path_factory.mktemp("serve")
    path = root / "tiny.yaml"
    path.write_text(tiny_recipe_text(root), encoding="utf-8")
    recipe = load_recipe(path, ["train.max_steps=40", "model.max_positions=256"])
    prepare(recipe.data, recipe.data_dir)
    model_dir = run_training(recipe).model_dir
    registry = Registry(root / "home")
    version = registry.register(
        "tiny",
        model_dir,
        base_model="scratch",
        method="sft",
        recipe_text=path.read_text(encoding="utf-8"),
    )
    registry.promote("tiny", version.version)
    return root / "home"


class LiveServer:
    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.port}"

    from kollm.feedback.responses import RequestLog
    from kollm.registry import Registry
    from kollm.serve.app import ServeSettings, create_app
    from kollm.serve.metrics import ServerMetrics
    from kollm.serve.service import ModelManager

    def start(self, wait_ready: bool = True) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status = httpx.get(self.base_url + "/health", timeout=2).status_code
                if status == 200 or (status == 503 and not wait_ready):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def fake_api(app, monkeypatch, tmp_path):
    """A scripted OpenAI-compatible app (a judge, an endpoint) served on loopback with its
    call counter reset, and a KOLLM_HOME of the test's own: yields (base URL …/v1, app
    state), for a fixture to pass on."""
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    app.state.calls = 0
    server = LiveServer(app).start()
    yield server.base_url + "/v1", app.state
    server.stop()


@pytest.fixture
def served_store(store_backend, served_home) -> str:  # noqa: F811 - the fixture
    """`store_backend` for a test of a server over `served_home`: on PostgreSQL the session's
    tiny model is registered in the test's schema before anything reads it (its files stay
    under the home, so no model is trained per backend)."""
    share_registry(served_home)
    return store_backend


@pytest.fixture
def start_server(served_home):
    """start_server(refs, engine=..., **options) -> a started LiveServer, stopped after the test."""
    servers = []

    from kollm.feedback.responses import RequestLog
    from kollm.registry import Registry
    from kollm.serve.app import ServeSettings, create_app
    from kollm.serve.metrics import ServerMetrics
    from kollm.serve.service import ModelManager

    def start(
        refs=("tiny@production",),
        engine="ctranslate2",
        api_keys=(),
        wait_ready=True,
        registry_home=served_home,
        alias_poll_s=2.0,
        log_requests=True,
        admin_keys=(),
        rag=None,
        runs_dir=None,
        key_names=None,
        tool_parser="auto",
        unconstrained_json=False,
        **manager_options,
    ):
        share_registry(served_home)  # a test on PostgreSQL sees the session's tiny model
        manager = ModelManager(
            list(refs), engine, ServerMetrics(), registry=Registry(registry_home), **manager_options
        )
        settings = ServeSettings(
            api_keys=list(api_keys),
            admin_keys=list(admin_keys),
            alias_poll_s=alias_poll_s,
            request_timeout_s=60,
            log_requests=log_requests,
            runs_dir=runs_dir,
            key_names=dict(key_names or {}),
            tool_parser=tool_parser,
            unconstrained_json=unconstrained_json,
        )
        server = LiveServer(create_app(manager, settings, RequestLog(registry_home), rag))
        servers.append(server)
        server.manager = manager
        return server.start(wait_ready)

    yield start
    for server in servers:
        server.stop()


# --- Hugging Face-format bases, as a user would point a recipe at them --------------------------

QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _bpe_tokenizer(texts: list[str], vocab: int, special: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="session")
def qwen2_chat_base(tmp_path_factory, repo=REPO) -> Path:
    """A Qwen2-shaped chat model: ChatML template with a default system turn, `<|im_end|>` as
    EOS, no BOS; random weights, saved as a hub model dir."""
    return qwen2_chat_model(tmp_path_factory.mktemp("qwen2-chat"))


def qwen2_chat_model(
    out: Path, heads: int = 4, kv_heads: int = 2, max_positions: int = 512, repo: Path = REPO
) -> Path:
    """`qwen2_chat_base` saved to `out`; `heads` sets the head size (64 / heads): vLLM's CPU
    attention needs 32 or more."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    rows = read_jsonl(repo / "data" / "sample" / "chats.jsonl")
    texts = [m["content"] for r in rows for m in r["messages"]]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(texts, 600, special),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = QWEN2_CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    import torch

    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def kobart_base(tmp_path_factory, repo=REPO) -> Path:
    """A KoBART-shaped seq2seq model: BART with `<s>`/`</s>`/`<pad>`/`<unk>`/`<mask>` and the
    decoder starting from `</s>`; random weights, saved as a hub model dir."""
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    rows = read_jsonl(repo / "data" / "sample" / "dialogsum_train.jsonl")[:300]
    texts = [r["dialogue"] + "\n" + r["summary"] for r in rows]
    special = ["<s>", "</s>", "<pad>", "<unk>", "<mask>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(texts, 800, special),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    out = tmp_path_factory.mktemp("kobart")
    tok.save_pretrained(str(out))
    config = BartConfig(
        vocab_size=len(tok),
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
        forced_eos_token_id=tok.eos_token_id,
    )
    import torch

    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(str(out))
    return out
