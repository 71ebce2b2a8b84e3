import pytest

from kollm.engines import open_engine
from kollm.engines.base import GenerationParams, IncrementalDecoder, apply_stop


def byte_decoder(ids: list[int]) -> str:
    """Each id is one UTF-8 byte, as byte-level BPE can split a Hangul syllable."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_decoder_never_splits_a_syllable():
    text = "안녕하세요, 반갑습니다."
    decoder = IncrementalDecoder(byte_decoder)
    pieces = [decoder.push(b) for b in text.encode()] + [decoder.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert [p for p in pieces if p][:3] == ["안", "녕", "하"]


def test_incremental_decoder_holds_back_a_possible_stop_string():
    decoder = IncrementalDecoder(byte_decoder, stop=("###",))
    pieces = [decoder.push(b) for b in "요약입니다.## 끝### 다음".encode()] + [decoder.finish()]
    assert "".join(pieces) == "요약입니다.## 끝"
    assert decoder.stopped
    assert apply_stop("가나다###라", ("###",)) == ("가나다", True)


def test_ctranslate2_serves_a_lora_adapter_merged_and_caches_the_conversion(local_base, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kollm.artifacts import weights_sha256
    from kollm.engines.ctranslate2_engine import CTranslate2Engine, converted_dir

    adapter = tmp_path / "adapter"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(local_base)),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )
    model.save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(str(local_base)).save_pretrained(str(adapter))
    engine = CTranslate2Engine(adapter)
    engine.load()
    (answer,) = engine.generate(["#Person1#: 안녕하세요"], GenerationParams(max_new_tokens=5))
    assert answer.prompt_tokens > 0 and answer.completion_tokens >= 1
    cache = converted_dir(adapter, "int8", weights_sha256(adapter))
    assert (cache / "model.bin").exists()
    stamp = (cache / "model.bin").stat().st_mtime_ns
    CTranslate2Engine(adapter).load()  # a restart converts nothing
    assert (cache / "model.bin").stat().st_mtime_ns == stamp


def test_open_engine_rejects_unknown_engines_and_misplaced_adapters(tmp_path):
    with pytest.raises(ValueError, match="unknown engine 'onnx'"):
        open_engine("onnx", tmp_path)
    with pytest.raises(ValueError, match="served by the transformers, vllm or llamacpp engine"):
        open_engine("ctranslate2", tmp_path, adapters={"a": str(tmp_path)})


class _CountingTokenizer:
    """A tokenizer that counts the texts it tokenises, and is otherwise the one it wraps."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("kind", ["ctranslate2", "transformers"])
@pytest.mark.parametrize("base", ["local_base", "kobart_base"])
def test_a_prompt_given_as_its_token_ids_gets_its_texts_answer_untokenised(kind, base, request):
    """The server tokenises a prompt once and hands the engine those ids: the answer is the
    one the text gets, and the engine tokenises nothing more (a batch may mix both)."""
    engine = open_engine(kind, request.getfixturevalue(base))
    engine.load()
    texts = ["#Person1#: 안녕하세요", "#Person2#: 네, 어디가 불편하신가요? 치과 예약이요."]
    params = GenerationParams(max_new_tokens=6)
    expected = [(a.text, a.prompt_tokens) for a in engine.generate(texts, params)]
    ids = [engine.tokenize(t) for t in texts]
    engine.tokenizer = counting = _CountingTokenizer(engine.tokenizer)
    assert [(a.text, a.prompt_tokens) for a in engine.generate(ids, params)] == expected
    assert counting.calls == 0
    mixed = engine.generate([ids[0], texts[1]], params)
    assert [(a.text, a.prompt_tokens) for a in mixed] == expected and counting.calls == 1
