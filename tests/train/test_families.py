"""Each model family a Korean site picks, from its base to what it serves: LoRA chat SFT on
multi-turn records, registered, served on CTranslate2 and transformers (the answer stops at
the family's end of turn), and exported to GGUF, read back. The fixture bases
(`tests/families.py`) answer "A" and their end of turn, again and again if nothing stops
them; the records teach the same, so the adapter keeps that answer."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from kollm.registry import Registry
from tests.cluster.test_export import _fields
from tests.conftest import REPO, read_jsonl, write_jsonl
from tests.engines.test_llamacpp import _missing as llamacpp_missing
from tests.families import ANSWER, FAMILIES

CHAT = [  # a multi-turn request: the answer comes after earlier turns of the same chat
    {"role": "user", "content": "마포구 주민입니다. 건강검진 예약 하려고 해요."},
    {"role": "assistant", "content": ANSWER},
    {"role": "user", "content": "어느 부서로 가야 하죠?"},
]


def _records() -> list[dict]:
    """The sample chats with every answer "A" (system turns dropped: Gemma 2 has none)."""
    rows = read_jsonl(REPO / "data" / "sample" / "chats.jsonl")[:24]
    return [
        {
            "id": r["id"],
            "messages": [
                {**m, "content": ANSWER if m["role"] == "assistant" else m["content"]}
                for m in r["messages"]
                if m["role"] != "system"
            ],
        }
        for r in rows
    ]


def _recipe(root, base, family, *extra: str):
    from kollm.config import load_recipe
    from kollm.data.pipeline import prepare

    write_jsonl(root / "chats.jsonl", _records())
    overrides = [
        f"model.base={base}",
        f"output_dir={root / 'run'}",
        f"data.input={root / 'chats.jsonl'}",
        "data.report.tokenizer=null",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.learning_rate=0.0005",
        "train.save_steps=100",
    ]
    if not family.chat_template:
        overrides.append("train.chat_template=chatml")
    recipe = load_recipe(REPO / "recipes" / "chat_lora.yaml", [*overrides, *extra])
    prepare(recipe.data, recipe.data_dir)
    return recipe


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    """(family, base dir, registry home): the family's base, a LoRA adapter trained on it
    and registered as `<family>:1`."""
    from kollm.train import run_training

    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(family.name)
    try:
        base = family.build(root / "base")
    except ImportError as err:  # EXAONE 4's classes came with transformers 4.54
        pytest.skip(f"{family.name}: {err}")
    recipe = _recipe(root, base, family)
    result = run_training(recipe)
    assert result.is_adapter
    home = root / "home"
    Registry(home).register(
        family.name.replace(".", "-"), result.model_dir, base_model=str(base), method="sft"
    )
    return family, base, home


def _ask(server, name: str, messages=CHAT) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": name, "messages": messages, "max_tokens": 12, "temperature": 0},
        timeout=120,
    )


@pytest.mark.parametrize("engine", ["ctranslate2", "transformers"])
def test_a_family_serves_its_adapter_and_stops_at_its_end_of_turn(trained, engine, start_server):
    family, _base, home = trained
    name = family.name.replace(".", "-")
    if engine == "ctranslate2" and not family.ct2:
        _assert_serve_refuses(home, f"{name}:1", engine)
        return
    server = start_server([f"{name}:1"], engine=engine, registry_home=home)
    _assert_answers_and_stops(server, name, home)


def _assert_answers_and_stops(server, name: str, home) -> None:
    from transformers import AutoTokenizer

    reply = _ask(server, name)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    choice = body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (ANSWER, "stop")
    # the answer and its end of turn: an engine blind to the family's end would run to 12
    assert body["usage"]["completion_tokens"] == 2
    # every earlier turn went through the family's template, as trained
    tokenizer = AutoTokenizer.from_pretrained(Registry(home).get(f"{name}:1").artifact_path)
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert body["usage"]["prompt_tokens"] == len(tokenizer(prompt)["input_ids"])


def _assert_serve_refuses(home, ref: str, engine: str) -> None:
    """`kollm serve` stops at once, naming the engine that serves the family."""
    from typer.testing import CliRunner

    from kollm.cli import app

    result = CliRunner().invoke(
        app, ["serve", ref, "--engine", engine, "--allow-no-keys"], env={"KOLLM_HOME": str(home)}
    )
    assert result.exit_code != 0
    assert "--engine transformers" in " ".join(result.output.split())


def test_a_family_exports_to_gguf_and_reads_back(trained, tmp_path, start_server):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from kollm.cluster.export import ExportError, export_model
    from kollm.engines.base import end_ids

    family, base, home = trained
    ref = f"{family.name.replace('.', '-')}:1"
    if family.gguf_arch is None:
        with pytest.raises(ExportError, match="--format"):
            export_model(ref, "gguf", tmp_path, "f16", registry=Registry(home))
        return
    exported = export_model(ref, "gguf", tmp_path, "f16", registry=Registry(home))
    meta = _fields(GGUFReader(str(exported.path)))
    assert meta["general.architecture"] == family.gguf_arch
    assert meta["tokenizer.ggml.model"] == (
        "llama" if family.tokenizer == "SentencePiece" else "gpt2"
    )
    # the base vocabulary, and every token that ends an answer (the adapter's added ones too)
    tokens = meta["tokenizer.ggml.tokens"]
    base_vocab = AutoTokenizer.from_pretrained(str(base)).vocab_size
    model_dir = Registry(home).get(ref).artifact_path
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokens[:base_vocab] == tokenizer.convert_ids_to_tokens(list(range(base_vocab)))
    ends = end_ids(Path(model_dir), tokenizer)
    assert [tokens[i] for i in ends] == tokenizer.convert_ids_to_tokens(list(ends))
    assert tokenizer.convert_tokens_to_ids(family.end) in ends
    recorded = [e["sha256"] for e in Registry(home).exports(ref) if e["format"] == "gguf"]
    assert recorded == [exported.sha256]
    if llamacpp_missing() is None:  # served from it by llama-server, stopping as the others
        from kollm.cluster.gguf_files import llamacpp_preparer

        prepare = llamacpp_preparer("f16", Registry(home))
        server = start_server([ref], engine="llamacpp", prepare=prepare, registry_home=home)
        _assert_answers_and_stops(server, ref.split(":")[0], home)
