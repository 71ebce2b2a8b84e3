"""What lm-eval and token-counting clients need from the server: prompt log-probabilities
through `/v1/completions` (`echo`, `logprobs`, `max_tokens` 0 or 1, prompts as token ids),
equal to the model's own forward pass, and vLLM's `/tokenize` and `/detokenize`."""

from __future__ import annotations

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kollm.registry import Registry

TEXT = "#Person1#: 내일 회의는 몇 시에 시작하나요?\n#Person2#: 오전 열 시에 시작합니다."


@pytest.fixture(scope="module")
def reference(served_home):
    """The served version's weights in float32, in process: the log-probabilities to match."""
    path = Registry(served_home).get("tiny@production").artifact_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()

    def logprobs(ids: list[int]) -> list[float]:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        return [float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]

    return tokenizer, logprobs


def _complete(server, **body):
    r = httpx.post(server.base_url + "/v1/completions", json={"model": "tiny", **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("engine,tolerance", [("transformers", 1e-3), ("ctranslate2", 0.25)])
def test_echoed_prompt_logprobs_are_the_models_own(start_server, reference, engine, tolerance):
    tokenizer, logprobs = reference
    server = start_server(engine=engine)
    body = _complete(server, prompt=TEXT, echo=True, logprobs=2, max_tokens=0, temperature=0)
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    ids = tokenizer(TEXT)["input_ids"]
    assert (
        choice["text"] == TEXT and len(lp["tokens"]) == len(ids) == body["usage"]["prompt_tokens"]
    )
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(logprobs(ids), abs=tolerance)
    assert all(len(top) <= 2 for top in lp["top_logprobs"][1:])
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])


def test_token_id_prompts_score_continuations_as_lm_eval_does(start_server, reference):
    """lm-eval sends context + continuation as ids with max_tokens 1 and sums
    token_logprobs[len(context):-1]; the choice it makes equals the in-process model's."""
    tokenizer, logprobs = reference
    server = start_server(engine="transformers")
    context = tokenizer("#Person1#: 회의는 언제 시작하나요?\n#Person2#:")["input_ids"]
    options = [" 오전 열 시에 시작합니다.", " 고양이가 바다를 건넌다.", " 네."]
    prompts = [context + tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    body = _complete(server, prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    served, local = [], []
    for choice, ids in zip(body["choices"], prompts, strict=True):
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(ids) + 1  # the one generated token at the end
        served.append(sum(lp["token_logprobs"][len(context) : -1]))
        local.append(sum(logprobs(ids)[len(context) - 1 :]))
        generated, top = lp["token_logprobs"][-1], lp["top_logprobs"][-1]
        assert generated == pytest.approx(max(top.values()), abs=1e-4)  # greedy: the top one
    assert served == pytest.approx(local, abs=1e-3)
    assert served.index(max(served)) == local.index(max(local))


def test_logprobs_of_the_answer_alone(start_server):
    body = _complete(start_server(), prompt="안녕하세요", max_tokens=4, logprobs=0, temperature=0)
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    assert choice["text"] and len(lp["tokens"]) >= 1 and None not in lp["token_logprobs"]
    assert lp["top_logprobs"] is None and lp["text_offset"][0] == len("안녕하세요")


def test_scoring_requests_that_make_no_sense_are_400(start_server):
    server = start_server()
    for body, field in (
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"prompt": "a", "stream": True, "logprobs": 1}, "logprobs"),
        ({"prompt": [], "max_tokens": 1}, "prompt"),
    ):
        r = httpx.post(server.base_url + "/v1/completions", json={"model": "tiny", **body})
        assert r.status_code == 400 and field in r.text, (body, r.text)


def test_tokenize_and_detokenize_use_the_served_tokenizer(start_server, reference):
    tokenizer, _ = reference
    server = start_server()
    r = httpx.post(server.base_url + "/tokenize", json={"model": "tiny", "prompt": TEXT}).json()
    assert r["tokens"] == tokenizer(TEXT)["input_ids"] and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == 256
    back = httpx.post(
        server.base_url + "/detokenize", json={"model": "tiny", "tokens": r["tokens"]}
    ).json()
    assert back["prompt"] == tokenizer.decode(r["tokens"], skip_special_tokens=True)
    chat = httpx.post(
        server.base_url + "/tokenize",
        json={"model": "tiny", "messages": [{"role": "user", "content": TEXT}]},
    ).json()
    assert chat["count"] > r["count"]  # the version's prompt format around the text
    bad = httpx.post(server.base_url + "/tokenize", json={"model": "tiny"})
    assert bad.status_code == 400 and "prompt" in bad.text
