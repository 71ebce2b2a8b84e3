"""`kollm tokenizer report|extend` on a tiny Llama-shaped base whose byte-level BPE learnt
little Korean (as most open bases did): the report's figures on a fixed text, pieces added
without changing the old ids, new rows set by the mean rule (tied) and the first-piece rule
(untied lm_head), a model that still trains and generates, fewer tokens on held-out text, and
the extension's lineage on the versions trained from it."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from kollm.cli import app
from kollm.data.tokenizer_report import reference_bpe, token_stats
from kollm.train.vocab import LINEAGE_FILE, chars_per_token, extend
from tests.conftest import REPO, read_jsonl


def _byte_tokenizer(texts, vocab):
    return reference_bpe(texts, vocab, eos="<|endoftext|>")


def _dialogues(name):
    return [r["dialogue"] for r in read_jsonl(REPO / "data" / "sample" / name)]


def _base(tmp_path, tied=True, vocab=320):
    """A Llama-shaped model whose BPE saw 20 dialogues: Korean costs it many tokens."""
    from transformers import LlamaForCausalLM

    from kollm.config import ModelConfig
    from kollm.train.scratch import llama_config

    tok = _byte_tokenizer(_dialogues("dialogsum_train.jsonl")[:20], vocab)
    out = tmp_path / ("tied" if tied else "untied")
    tok.save_pretrained(str(out))
    shape = ModelConfig(layers=1, hidden_size=32, heads=2, intermediate_size=64, max_positions=256)
    config = llama_config(shape, tok, tie_word_embeddings=tied, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


def test_report_figures_on_a_fixed_text():
    tok = _byte_tokenizer(["ab"], 257)  # bytes only: a Hangul syllable is three pieces
    stats = token_stats(tok, ["안녕 하세요."], "bytes")
    assert (stats.characters, stats.tokens, stats.words, stats.sentences) == (7, 17, 2, 1)
    assert stats.figures["chars_per_token"] == pytest.approx(7 / 17)
    assert stats.figures["tokens_per_word"] == 8.5
    assert stats.fallback_tokens == 15  # every Hangul piece holds part of a character
    assert stats.longest[0] == ("하세요.", 11) and stats.tokens_per_word_counts == {6: 1, 11: 1}


def test_the_report_command_writes_json_and_a_histogram(tmp_path):
    base = _base(tmp_path)
    out = tmp_path / "report"
    data = REPO / "data" / "sample" / "dialogsum_dev.jsonl"
    done = CliRunner().invoke(
        app,
        [
            "tokenizer",
            "report",
            str(base),
            "--data",
            str(data),
            "--field",
            "dialogue",
            "--out",
            str(out),
        ],
    )
    assert done.exit_code == 0, done.output
    report = json.loads((out / "report.json").read_text())
    assert report["base"]["tokens_per_word"] > report["reference"]["tokens_per_word"]
    assert (out / "tokens_per_word.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["tokenizer", "report", str(base), "--data", str(data)])
    assert bad.exit_code != 0 and "no field 'text'" in bad.output


def test_extension_keeps_old_ids_and_sets_rows_by_the_mean_rule(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = _base(tmp_path)
    old_tok = AutoTokenizer.from_pretrained(str(base))
    old = AutoModelForCausalLM.from_pretrained(str(base)).get_input_embeddings().weight
    result = extend(str(base), _dialogues("dialogsum_train.jsonl"), 60, tmp_path / "ext", "sha")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ext"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ext"))
    assert 0 < len(result.pieces) <= 60 and len(tok) == len(old_tok) + len(result.pieces)
    assert all(re.search("[가-힣]", p) for p in result.pieces)
    assert [tok.decode([i]) for i in range(len(old_tok))] == [
        old_tok.decode([i]) for i in range(len(old_tok))
    ]
    assert tok.eos_token == old_tok.eos_token
    new = model.get_input_embeddings().weight
    assert torch.equal(new[: len(old_tok)], old)
    for offset, piece in enumerate(result.pieces):
        ids = old_tok(piece, add_special_tokens=False)["input_ids"]
        assert torch.allclose(new[result.first_id + offset], old[ids].mean(0), atol=1e-6)
    lineage = json.loads((tmp_path / "ext" / LINEAGE_FILE).read_text())
    assert lineage["added"] == len(result.pieces) and lineage["data_sha256"] == "sha"


def test_an_untied_lm_head_takes_the_first_piece_s_row(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = _base(tmp_path, tied=False)
    old_tok = AutoTokenizer.from_pretrained(str(base))
    head = AutoModelForCausalLM.from_pretrained(str(base)).lm_head.weight
    result = extend(str(base), _dialogues("dialogsum_train.jsonl"), 20, tmp_path / "ext", "s")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ext"))
    for offset, piece in enumerate(result.pieces):
        first = old_tok(piece, add_special_tokens=False)["input_ids"][0]
        assert torch.equal(model.lm_head.weight[result.first_id + offset], head[first])


def test_the_extended_model_trains_generates_and_costs_fewer_tokens(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = _base(tmp_path)
    held_out = _dialogues("dialogsum_dev.jsonl")[:100]
    extend(str(base), _dialogues("dialogsum_train.jsonl"), 200, tmp_path / "ext", "s")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ext"))
    before = chars_per_token(AutoTokenizer.from_pretrained(str(base)), held_out)
    after = chars_per_token(tok, held_out)
    assert after > before * 1.15, (before, after)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ext"))
    batch = tok(held_out[0][:120], return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    generated = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 5


def test_the_extend_command_and_the_lineage_of_a_version(tmp_path):
    from kollm.pipeline.run import base_lineage
    from kollm.registry import Registry

    base = _base(tmp_path)
    data = REPO / "data" / "sample" / "dialogsum_train.jsonl"
    out = tmp_path / "ext"

    def extend(add: int):
        args = ["tokenizer", "extend", str(base), "--data", str(data), "--field", "dialogue"]
        return CliRunner().invoke(app, [*args, "--add", str(add), "-o", str(out)])

    done = extend(50)
    assert done.exit_code == 0, done.output
    assert re.search(r"chars per token on \d+ held-out texts: [\d.]+ -> [\d.]+", done.output)
    version = Registry().register("ext", out, base_model=str(out), lineage=base_lineage(str(out)))
    assert version.lineage["vocabulary"]["added"] <= 50
    assert version.lineage["vocabulary"]["base"] == str(base)
    refused = extend(0)
    assert refused.exit_code != 0 and "--add 0" in refused.output
