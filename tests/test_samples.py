import re

from typer.testing import CliRunner

from kollm.cli import app
from kollm.samples import DOCUMENTS_DIR, SAMPLE_FILES, write_samples
from tests.conftest import read_jsonl

SPEAKER = re.compile(r"#Person(\d+)#")


def test_bundled_samples_are_what_the_seeded_generator_writes(tmp_path, repo):
    write_samples(tmp_path)
    for name in SAMPLE_FILES:
        committed = (repo / "data" / "sample" / name).read_bytes()
        assert (tmp_path / name).read_bytes() == committed, (
            f"regenerate with: kollm data sample ({name})"
        )
    written = sorted(p.relative_to(tmp_path) for p in (tmp_path / DOCUMENTS_DIR).rglob("*.*"))
    committed = repo / "data" / "sample"
    assert written == sorted(
        p.relative_to(committed) for p in (committed / DOCUMENTS_DIR).rglob("*.*")
    )
    for path in written:
        assert (tmp_path / path).read_bytes() == (committed / path).read_bytes(), path


def test_every_labelled_query_names_a_bundled_document_of_each_format(repo):
    from kollm.text.morphemes import content_morphemes

    docs = repo / "data" / "sample" / DOCUMENTS_DIR
    queries = read_jsonl(repo / "data" / "sample" / "rag_queries.jsonl")
    assert len(queries) >= 100
    assert {q["relevant"][0].rsplit(".", 1)[1] for q in queries} == {
        "hwp",
        "hwpx",
        "pdf",
        "docx",
        "txt",
    }
    for q in queries:
        assert all((docs / doc).exists() for doc in q["relevant"])
        assert content_morphemes(q["query"])  # something to search with


def test_demo_data_stage_leaves_enough_varied_dialogues(tmp_path, repo, monkeypatch):
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(
        app,
        [
            "data",
            "prepare",
            "recipes/demo.yaml",
            f"data.output_dir={tmp_path}",
            "data.report.tokenizer=null",
        ],
    )
    assert result.exit_code == 0, result.output
    train, dev = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "dev.jsonl")
    assert len(train) >= 1000 and len(dev) >= 200
    speakers = {len(set(SPEAKER.findall(r["dialogue"]))) for r in train}
    turns = {r["dialogue"].count("\n") + 1 for r in train}
    assert speakers == set(range(2, 8))
    assert min(turns) == 2 and max(turns) == 30
    assert len({r["topic"] for r in train}) >= 15
    assert all("#Person1#" in r["summary"] for r in train)
    # The planted noise was found: raw PII, duplicates, English records.
    stats = result.output
    for marker in ("exact_duplicate", "near_duplicate", "low_hangul_ratio", "rrn", "card", "phone"):
        assert marker in stats
    text = "".join(r["dialogue"] for r in train + dev)
    assert not re.search(r"01[0-9]-\d{4}-\d{4}|\d{6}-[1-4]\d{6}|[\u200b\ufeff\x07]", text)


def test_instruction_sample_fits_its_kind(repo):
    from kollm.data.records import KINDS, validate_record

    rows = read_jsonl(repo / "data" / "sample" / "instructions.jsonl")
    assert len(rows) >= 300
    for row in rows:
        validate_record(row, KINDS["instruction"])
