"""Weighted corpus mixing (`data.mix`): the realised mix follows the weights by records or by
tokens, every record keeps its source, dev keeps every source, stats.json reports the mix per
split, a source that does not exist is named, and eval reports perplexity per source."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from kollm.config import DataConfig
from kollm.data.io import DataError
from kollm.data.pipeline import prepare
from kollm.data.records import KINDS
from kollm.data.steps.mix import CorpusMixer, record_tokens
from tests.conftest import read_jsonl, write_jsonl


def _texts(prefix: str, n: int, words: int) -> list[dict]:
    return [
        {"text": " ".join(f"{prefix}{i}단어{j}" for j in range(words)), "source": prefix}
        for i in range(n)
    ]


def test_ten_thousand_sampled_records_follow_the_weights():
    sources = {"domain": _texts("d", 3000, 5), "general": _texts("g", 500, 5)}
    mixer = CorpusMixer({"domain": 0.7, "general": 0.3}, KINDS["text"], "examples", seed=1)
    mixed = mixer.mix(sources, 10_000)
    assert len(mixed) == 10_000
    share = sum(r["source"] == "general" for r in mixed) / len(mixed)
    assert abs(share - 0.3) <= 0.02
    repeated = [r["id"] for r in mixed if "~" in str(r.get("id", ""))]
    assert not repeated  # these records had no id; ids are only marked when present


def test_by_tokens_the_long_source_gets_fewer_records():
    sources = {"long": _texts("l", 2000, 40), "short": _texts("s", 2000, 5)}
    mixer = CorpusMixer({"long": 0.5, "short": 0.5}, KINDS["text"], "tokens", seed=0)
    mixed = mixer.mix(sources, 100_000)
    tokens = {
        n: sum(record_tokens(r, KINDS["text"]) for r in mixed if r["source"] == n) for n in sources
    }
    assert abs(tokens["long"] / sum(tokens.values()) - 0.5) <= 0.02
    assert sum(r["source"] == "short" for r in mixed) > 5 * sum(
        r["source"] == "long" for r in mixed
    )


def _rows(prefix, n):
    return [
        {"text": f"{prefix} 문서 {i}번: 민원 처리 절차와 필요한 서류를 안내합니다 {i * 7}."}
        for i in range(n)
    ]


def test_prepare_mixes_sources_and_reports_the_realised_mix(tmp_path):
    write_jsonl(tmp_path / "domain.jsonl", _rows("구청", 200))
    write_jsonl(tmp_path / "general.jsonl", _rows("일반", 60))
    cfg = DataConfig.model_validate(
        {
            "kind": "text",
            "mix": [
                {"input": str(tmp_path / "domain.jsonl"), "weight": 0.7, "name": "domain"},
                {"input": str(tmp_path / "general.jsonl"), "weight": 0.3, "name": "general"},
            ],
            "mix_size": 1000,
            "dedup": {"near": False},
            "report": {"tokenizer": "whitespace"},
        }
    )
    result = prepare(cfg, tmp_path / "out")
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    dev = read_jsonl(tmp_path / "out" / "dev.jsonl")
    assert len(train) == 1000 and {r["source"] for r in dev} == {"domain", "general"}
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    realised = stats["mix"]["train"]
    assert abs(realised["general"]["share"] - 0.3) <= 0.02
    assert stats["mix"]["weights"] == {"domain": 0.7, "general": 0.3}
    assert result.stats["mix"]["dev"]["general"]["records"] == 6


def test_a_missing_source_is_named(tmp_path):
    write_jsonl(tmp_path / "domain.jsonl", _rows("구청", 10))
    cfg = DataConfig.model_validate(
        {
            "kind": "text",
            "mix": [
                {"input": str(tmp_path / "domain.jsonl"), "weight": 1, "name": "domain"},
                {"input": str(tmp_path / "nope.jsonl"), "weight": 1, "name": "general"},
            ],
        }
    )
    with pytest.raises(DataError, match=r"data\.mix\[1\] \(general\): .*nope\.jsonl"):
        prepare(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_input_or_mix_and_unique_names():
    with pytest.raises(ValidationError, match="not both"):
        DataConfig.model_validate(
            {"kind": "text", "input": "a.jsonl", "mix": [{"input": "b", "weight": 1, "name": "b"}]}
        )
    with pytest.raises(ValidationError, match="its own name"):
        DataConfig.model_validate(
            {
                "kind": "text",
                "mix": [
                    {"input": "a", "weight": 1, "name": "x"},
                    {"input": "b", "weight": 1, "name": "x"},
                ],
            }
        )
    with pytest.raises(ValidationError, match="weight"):
        DataConfig.model_validate(
            {"kind": "text", "mix": [{"input": "a", "weight": 0, "name": "x"}]}
        )


def test_eval_reports_perplexity_per_source(local_base):
    from kollm.engines.transformers_engine import TransformersEngine
    from kollm.eval.evaluate import _by_source

    engine = TransformersEngine(local_base)
    engine.load()
    records = [{"source": "domain"}, {"source": "general"}, {"source": "domain"}]
    prompts = ["민원 안내:", "오늘 날씨:", "서류 안내:"]
    answers = ["등본은 구청에서 발급합니다.", "맑습니다.", "신분증이 필요합니다."]
    scores = _by_source(engine, records, prompts, answers)["perplexity_by_source"]
    assert set(scores) == {"domain", "general"} and all(v > 1 for v in scores.values())
    assert _by_source(engine, records[:1], prompts[:1], answers[:1]) == {}
