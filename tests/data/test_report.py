from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from kollm.data.report import build_report, render_markdown

ROWS = [
    {
        "id": "1",
        "topic": "병원 예약",
        "dialogue": "#Person1#: 예약하고 싶어요.\n#Person2#: 네.",
        "summary": "예약한다.",
    },
    {
        "id": "2",
        "topic": "병원 예약",
        "dialogue": "#Person1#: 안녕\n#Person2#: 응\n#Person3#: 나도",
        "summary": "인사",
    },
    {
        "id": "3",
        "topic": "여행",
        "dialogue": "#Person1#: 제주도 가자.\n#Person2#: 좋아.",
        "summary": "여행 간다.",
    },
]


def test_report_counts_topics_speakers_and_chars_per_token(tmp_path):
    report = build_report({"train": ROWS}, "dialogue_summary", tmp_path, tokenizer="whitespace")
    assert report["topics"][0] == ("병원 예약", 2)
    assert report["speakers_per_dialogue"] == {2: 2, 3: 1}
    assert report["turns"]["max"] == 3
    assert (tmp_path / "length_summary.png").read_bytes()[:4] == b"\x89PNG"
    assert report["chars_per_token"]["value"] > 1
    page = render_markdown(report, {"steps": []})
    assert "| 병원 예약 | 2 |" in page and "![length_dialogue.png](length_dialogue.png)" in page


def test_report_reads_a_tokenizer_json(tmp_path):
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(
        [r["dialogue"] for r in ROWS] * 20,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]),
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    report = build_report({"train": ROWS}, "dialogue_summary", tmp_path, tokenizer=str(tmp_path))
    assert report["chars_per_token"]["tokenizer"] == str(tmp_path)
    assert report["chars_per_token"]["value"] > 0


def test_counts_kept_apart_and_merged_give_the_same_report(tmp_path):
    """As the Ray blocks count: each chunk counted alone, through JSON, then merged."""
    import json
    from pathlib import Path

    from kollm.data.report import SAMPLE, ReportCounts, report_from_counts

    sample = Path(__file__).resolve().parents[2] / "data" / "sample" / "dialogsum_train.jsonl"
    rows = [json.loads(line) for line in sample.read_text().splitlines()[:90]]
    whole = build_report({"train": rows[:60], "dev": rows[60:]}, "dialogue_summary", tmp_path)
    merged = ReportCounts("dialogue_summary")
    for rank, lo, hi in ((1, 60, 90), (0, 30, 60), (0, 0, 30)):  # blocks in any order
        part = ReportCounts("dialogue_summary")
        for i in range(lo, hi):
            part.add(rows[i], [rank, i])
        merged.merge(
            ReportCounts.from_json("dialogue_summary", json.loads(json.dumps(part.to_json())))
        )
    sizes = {"train": 60, "dev": 30}
    assert report_from_counts(merged, sizes, tmp_path, None, 15, rows[:SAMPLE]) == whole
