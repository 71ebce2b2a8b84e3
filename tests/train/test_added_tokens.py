"""A base without a chat template (GPT-NeoX / Polyglot-ko) trained on chat records with
`train.chat_template: chatml`: the two turn tokens it adds have rows in the input embedding
and the untied head that the base never trained. A LoRA adapter trains those rows, saves
them (and only them: not the whole resized vocabulary), and every engine path reloads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kollm.prompts import CHATML_TOKENS
from tests.families import build_polyglot
from tests.train.test_families import FAMILIES, _recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(base dir, adapter dir, added ids) of a LoRA adapter trained with ChatML added."""
    from transformers import AutoTokenizer

    from kollm.train import run_training

    root = tmp_path_factory.mktemp("added")
    base = build_polyglot(root / "base")
    recipe = _recipe(root, base, FAMILIES["polyglot-ko"], "train.learning_rate=0.01")
    result = run_training(recipe)
    tokenizer = AutoTokenizer.from_pretrained(str(result.model_dir))
    ids = tokenizer.convert_tokens_to_ids(list(CHATML_TOKENS))
    assert min(ids) >= len(AutoTokenizer.from_pretrained(str(base)))  # both were added
    return base, result.model_dir, ids


def _saved(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _base_mean_rows(base: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the added rows start: the mean of the base's rows (input and head)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    return (
        model.get_input_embeddings().weight.mean(dim=0),
        model.get_output_embeddings().weight.mean(dim=0),
    )


def _token_rows(saved: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
    (key,) = [k for k in saved if "trainable_tokens_delta" in k and f".{layer}." in k]
    return saved[key]


def test_the_added_rows_are_trained_and_saved_alone(trained):
    base, adapter, ids = trained
    saved = _saved(adapter)
    # no full embedding or head in the adapter: only the rows of the added tokens
    assert all(t.shape[0] != 602 for t in saved.values()), sorted(saved)
    embed_mean, head_mean = _base_mean_rows(base)
    for layer, start in (("embed_in", embed_mean), ("lm_head", head_mean)):
        rows = _token_rows(saved, layer)
        assert rows.shape == (len(ids), start.shape[0])
        for row in rows:  # each row moved away from where it started
            assert not torch.allclose(row, start, atol=1e-3)


def test_the_adapter_reloads_with_its_rows_for_every_engine(trained, tmp_path):
    """The transformers engine (base + adapter) and a merge (what CTranslate2 and GGUF
    take) both carry the trained rows."""
    from transformers import AutoModelForCausalLM

    from kollm.engines.lora import merge_lora
    from kollm.engines.transformers_engine import TransformersEngine

    _base, adapter, ids = trained
    saved = _saved(adapter)
    engine = TransformersEngine(adapter)
    engine.load()
    index = torch.tensor(ids)
    with torch.no_grad():
        served = engine.model.get_input_embeddings()(index)
    assert torch.allclose(served, _token_rows(saved, "embed_in"))

    merged = AutoModelForCausalLM.from_pretrained(str(merge_lora(adapter, tmp_path / "m")))
    assert torch.allclose(
        merged.get_input_embeddings().weight[index], _token_rows(saved, "embed_in")
    )
    assert torch.allclose(
        merged.get_output_embeddings().weight[index], _token_rows(saved, "lm_head")
    )
