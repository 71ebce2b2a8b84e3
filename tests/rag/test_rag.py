"""Retrieval, first step: ingest each format, Korean morpheme keyword search, incremental
re-index, failures named in the report."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kollm.cli import app
from kollm.rag.chunk import chunk_text
from kollm.rag.index import RagIndex
from kollm.samples.files import write_hwpx, write_pdf
from tests.rag.conftest import PASSAGES


def test_every_format_is_read_with_its_place(tmp_path):
    import docx

    root = tmp_path / "all"
    root.mkdir()
    (root / "a.md").write_text("# 안내\n\n대형 폐기물은 배출 신고 후 버립니다.", encoding="utf-8")
    (root / "b.html").write_text(
        "<p>청년 월세 지원은 복지정책과에서 받습니다.</p><script>x=1</script>", encoding="utf-8"
    )
    (root / "c.jsonl").write_text(
        json.dumps(
            {"id": "faq-7", "text": "건강검진 예약은 보건소에서 합니다.", "topic": "보건"},
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    write_hwpx(root / "d.hwpx", [["공고문", "주차 허가는 주차관리과에서 발급합니다."]])
    document = docx.Document()
    document.add_paragraph("여권 발급에는 사진 한 장이 필요합니다.")
    document.save(str(root / "e.docx"))
    write_pdf(
        root / "f.pdf",
        [["허가 사무실은 아홉 시에 엽니다."], ["둘째 쪽은 수수료와 처리 기간을", "안내합니다."]],
    )
    index = RagIndex(tmp_path / "home")
    report = index.index_paths("all", [root])
    assert (report.files, report.indexed, report.failures) == (6, 6, [])
    found = {
        q: index.search("all", q, 1)[0]
        for q in ("배출 신고", "월세 지원", "건강검진 예약", "주차 허가", "여권 사진", "수수료는")
    }
    assert found["배출 신고"].doc_id == "a.md"
    assert "script" not in found["월세 지원"].text and found["월세 지원"].doc_id == "b.html"
    assert found["건강검진 예약"].doc_id == "faq-7"  # a JSONL record's own id
    assert found["주차 허가"].doc_id == "d.hwpx"
    assert found["여권 사진"].doc_id == "e.docx"
    assert found["수수료는"].doc_id == "f.pdf" and found["수수료는"].page == 2
    assert (
        found["수수료는"].text == "둘째 쪽은 수수료와 처리 기간을 안내합니다."
    )  # the wrapped line rejoined


def test_a_question_with_other_particles_and_endings_finds_its_passage(docs, tmp_path):
    index = RagIndex(tmp_path / "home")
    index.index_paths("civil", [docs])
    (hit, *_) = index.search("civil", "이사하면 전입 신고는 며칠 안에 해야 하나요?")
    assert hit.doc_id == "moving.txt" and hit.start == 0 and "14일" in hit.text
    (hit, *_) = index.search("civil", "여권 분실했을 때 어디에 신고하죠")
    assert hit.doc_id == "passport.txt"
    assert index.search("civil", "?!") == []


def test_reindexing_replaces_only_the_changed_file_and_prune_drops_removed_ones(docs, tmp_path):
    index = RagIndex(tmp_path / "home")
    index.index_paths("civil", [docs])
    before = {
        h.doc_id: h.chunk_id
        for q in ("주차 신청", "여권 분실")
        for h in index.search("civil", q, 1)
    }
    (docs / "moving.txt").write_text("전입신고는 이제 30일 안에 하면 됩니다.", encoding="utf-8")
    report = index.index_paths("civil", [docs])
    assert (report.indexed, report.unchanged) == (1, 2)
    (hit, *_) = index.search("civil", "전입 신고 기한")
    assert "30일" in hit.text and "14일" not in " ".join(
        h.text for h in index.search("civil", "전입", 10)
    )
    after = {
        h.doc_id: h.chunk_id
        for q in ("주차 신청", "여권 분실")
        for h in index.search("civil", q, 1)
    }
    assert after == before  # the unchanged files kept their chunks
    (docs / "parking.txt").unlink()
    assert index.index_paths("civil", [docs], prune=True).removed == 1
    assert all(h.doc_id != "parking.txt" for h in index.search("civil", "주차 신청", 5))
    assert index.collections() == {"civil": 2}


def test_a_corrupt_file_is_named_in_the_report_and_the_rest_are_indexed(
    docs, tmp_path, monkeypatch
):
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (docs / "broken.hwpx").write_bytes(b"not a zip")
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["rag", "index", str(docs), "--collection", "civil"])
    assert result.exit_code == 0, result.output
    assert "3 indexed" in result.output and "2 failed" in result.output
    report = json.loads((tmp_path / "home" / "rag" / "civil" / "index_report.json").read_text())
    reasons = {f["path"].split("/")[-1]: f["reason"] for f in report["failures"]}
    assert reasons["broken.hwpx"] == "not an HWPX file (not a zip archive)"
    assert reasons["broken.pdf"].startswith("cannot read PDF")
    assert (tmp_path / "home" / "rag" / "civil" / "index_report.html").exists()
    out = CliRunner().invoke(app, ["rag", "query", "civil", "주차 신청 기간", "--json"])
    (first, *_) = json.loads(out.output)
    assert first["doc_id"] == "parking.txt"
    assert set(first) == {
        *("doc_id", "chunk_id", "source", "page", "section", "paragraph"),
        *("start", "end", "score", "text"),
    }


def test_chunks_are_whole_sentences_with_their_span():
    text = "첫 문장입니다. 둘째 문장이에요! 셋째는 질문인가요? 넷째."
    chunks = chunk_text(text, max_chars=20, overlap=1)
    assert all(text[c.start : c.end].strip() == c.text for c in chunks)
    assert chunks[0].text == "첫 문장입니다. 둘째 문장이에요!"
    assert chunks[1].text.startswith("둘째 문장이에요!")  # one sentence of overlap


def test_a_two_document_collection_still_ranks_by_relevance(tmp_path):
    root = tmp_path / "two"
    root.mkdir()
    (root / "a.txt").write_text(PASSAGES["moving.txt"], encoding="utf-8")
    (root / "b.txt").write_text(PASSAGES["passport.txt"], encoding="utf-8")
    index = RagIndex(tmp_path / "home")
    index.index_paths("two", [root])
    first, second = index.search("two", "이사하면 전입 신고는 며칠 안에 해야 하나요?")
    assert first.doc_id == "a.txt" and first.score > second.score > 0


def test_term_frequencies_follow_every_change_and_are_rebuilt_when_missing(docs, tmp_path):
    import sqlite3
    from collections import Counter

    index = RagIndex(tmp_path / "home")
    index.index_paths("civil", [docs])
    (docs / "moving.txt").write_text("전입신고는 이제 30일 안에 하면 됩니다.", encoding="utf-8")
    index.index_paths("civil", [docs])
    (docs / "parking.txt").unlink()
    index.index_paths("civil", [docs], prune=True)
    db = sqlite3.connect(index.path)

    def kept():
        return dict(db.execute("SELECT term, df FROM rag_df WHERE collection = 'civil'"))

    recount = Counter(
        w for (t,) in db.execute("SELECT terms FROM rag_terms") for w in set(t.split())
    )
    assert kept() == dict(recount)
    scores = [h.score for h in index.search("civil", "전입 신고 여권", 5)]
    with db:
        db.execute("DELETE FROM rag_df")  # as a collection indexed before migration 011
    assert [h.score for h in index.search("civil", "전입 신고 여권", 5)] == scores
    assert kept() == dict(recount)


def test_hwp5_documents_are_read_and_unreadable_ones_named(tmp_path):
    from kollm.samples.files import hwp_bytes, write_hwp

    root = tmp_path / "hwp"
    root.mkdir()
    write_hwp(root / "rules.hwp", ["주차 운영 규정", "제2조(대상) 대상은 관내 주민으로 한다."])
    (root / "plain.hwp").write_bytes(hwp_bytes(["압축하지 않은 문서의 본문입니다."], False))
    (root / "locked.hwp").write_bytes(hwp_bytes(["비밀"], flags=2))
    (root / "dist.hwp").write_bytes(hwp_bytes(["배포"], flags=4))
    (root / "junk.hwp").write_bytes(b"HWP? no, just bytes")
    (root / "old.hwp").write_bytes(b"HWP Document File V3.00 \x1a\x01\x02\x03\x04\x05" + bytes(99))
    index = RagIndex(tmp_path / "home")
    report = index.index_paths("h", [root])
    reasons = {f["path"].split("/")[-1]: f["reason"] for f in report.failures}
    assert report.indexed == 2 and set(reasons) == {"locked.hwp", "dist.hwp", "junk.hwp", "old.hwp"}
    assert reasons["old.hwp"].startswith("an HWP 3 file (한글 97 or older), not read")
    assert reasons["locked.hwp"] == "the HWP file is password-protected"
    assert "배포용" in reasons["dist.hwp"]
    assert reasons["junk.hwp"] == "not an HWP 5 file (not an OLE compound file)"
    (hit, *_) = index.search("h", "관내 주민이 대상인가요")
    # kollm's own writer saves no line layout: the page is not known, the paragraph is
    assert hit.doc_id == "rules.hwp" and (hit.section, hit.paragraph, hit.page) == (1, 1, None)
    assert hit.text.startswith("주차 운영 규정\n제2조")  # the section control is not text
    assert index.search("h", "압축")[0].doc_id == "plain.hwp"
