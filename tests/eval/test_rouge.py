import pytest
from rouge_score import rouge_scorer

from kollm.eval.rouge import corpus_rouge, score_example, tokenizer_for

PAIRS = [
    (
        "#Person1#은 치과 예약을 하고 #Person2#는 화요일 오후 3시로 잡아 준다.",
        [
            "#Person1#은 치과 진료를 예약하고, #Person2#는 화요일 오후 3시 반으로 예약해 준다.",
            "#Person2#가 #Person1#의 치과 예약을 화요일로 잡는다.",
        ],
    ),
    (
        "두 사람은 제주도 여행 계획을 세운다.",
        ["#Person1#과 #Person2#는 제주도로 2박 3일 여행을 가기로 한다."],
    ),
    (
        "환불을 요청한다.",
        ["#Person1#은 청바지가 맞지 않아 환불을 요청하고 #Person2#는 일주일 안에 환불해 준다."],
    ),
    ("전혀 관계없는 문장", ["#Person1#은 도서관에서 책을 빌린다."]),
]


class _Tok:
    def __init__(self, fn):
        self.tokenize = fn


@pytest.mark.parametrize("tokenize", ["morpheme", "whitespace"])
def test_equals_rouge_score_with_the_same_tokens(tokenize):
    tok = tokenizer_for(tokenize)
    scorer = rouge_scorer.RougeScorer(
        ["rouge1", "rouge2", "rougeL"], use_stemmer=False, tokenizer=_Tok(tok)
    )
    for prediction, refs in PAIRS:
        ours = score_example(prediction, refs, tok, "max")
        theirs = scorer.score_multi(refs, prediction)
        for metric in ("rouge1", "rouge2", "rougeL"):
            assert ours[metric] == pytest.approx(theirs[metric].fmeasure, abs=1e-6)


def test_mean_over_references_averages_rouge_score_per_reference():
    tok = tokenizer_for("morpheme")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Tok(tok))
    prediction, refs = PAIRS[0]
    ours = score_example(prediction, refs, tok, "mean")
    for metric in ("rouge1", "rouge2", "rougeL"):
        expected = sum(scorer.score(r, prediction)[metric].fmeasure for r in refs) / len(refs)
        assert ours[metric] == pytest.approx(expected, abs=1e-6)


def test_corpus_score_is_mean_f1_times_100_and_hangul_is_counted():
    totals, per_example = corpus_rouge([p for p, _ in PAIRS], [r for _, r in PAIRS])
    assert len(per_example) == 4
    assert totals["score"] == pytest.approx(
        100 * (totals["rouge1"] + totals["rouge2"] + totals["rougeL"]) / 3
    )
    assert totals["rouge1"] > 0.2
    # rouge-score's default tokenizer drops Hangul: two different sentences look identical.
    a, b = "#Person1#은 책을 빌린다.", "#Person1#은 밥을 먹는다."
    assert rouge_scorer.RougeScorer(["rouge1"]).score(a, b)["rouge1"].fmeasure == 1.0
    assert corpus_rouge([b], [[a]])[0]["rouge1"] < 0.7


def test_identical_texts_score_100():
    totals, _ = corpus_rouge(["#Person1#은 책을 빌린다."], [["#Person1#은 책을 빌린다."]])
    assert totals["score"] == pytest.approx(100.0)
