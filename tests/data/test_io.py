import json

import pytest

from kollm.config import DataConfig
from kollm.data.io import DataError, read_records, write_dataset_dir, write_jsonl
from kollm.data.pipeline import read_inputs
from kollm.data.records import KINDS
from tests.conftest import REPO, read_jsonl

REPO_RECIPE = REPO / "recipes" / "demo.yaml"

DIALOGUE = {
    "dialogue": "#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요.",
    "summary": "인사한다.",
}


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(DIALOGUE, ensure_ascii=False) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        list(read_records(path, KINDS["dialogue_summary"]))


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"dialogue": "안녕"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:1: missing field 'summary'"):
        list(read_records(path, KINDS["dialogue_summary"]))


def test_skip_bad_lines_collects_them(tmp_path):
    path = tmp_path / "in.jsonl"
    good = json.dumps(DIALOGUE, ensure_ascii=False)
    path.write_text(
        f'{good}\nnot json\n{{"dialogue": 3, "summary": "x"}}\n{good}\n', encoding="utf-8"
    )
    bad: list[dict] = []
    records = list(read_records(path, KINDS["dialogue_summary"], bad_lines=bad))
    assert len(records) == 2
    assert [b["line"] for b in bad] == [2, 3]
    assert "dialogue: expected a string" in bad[1]["error"]


def test_csv_with_multi_reference_summaries(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        'id,dialogue,summary\n1,"#Person1#: 안녕\n#Person2#: 네","[""요약 하나"", ""요약 둘""]"\n',
        encoding="utf-8",
    )
    (record,) = read_records(path, KINDS["dialogue_summary"])
    assert record["summary"] == ["요약 하나", "요약 둘"]
    assert record["dialogue"] == "#Person1#: 안녕\n#Person2#: 네"


def test_parquet_and_datasets_dir_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([DIALOGUE, DIALOGUE]), tmp_path / "in.parquet")
    assert len(list(read_records(tmp_path / "in.parquet", KINDS["dialogue_summary"]))) == 2
    write_dataset_dir(tmp_path / "ds", {"train": [DIALOGUE] * 3, "validation": [DIALOGUE]})
    cfg = DataConfig(input=str(tmp_path / "ds"), kind="dialogue_summary")
    splits = {k: list(v) for k, v in read_inputs(cfg, KINDS["dialogue_summary"], None).items()}
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "validation": 1}


def test_interrupted_write_leaves_no_file(tmp_path):
    def rows():
        yield {"a": 1}
        raise KeyboardInterrupt

    target = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        write_jsonl(target, rows())
    assert list(tmp_path.iterdir()) == []
    write_jsonl(target, [{"a": 1}])
    assert read_jsonl(target) == [{"a": 1}]


def test_the_one_jsonl_reader_names_the_file_and_line_of_a_bad_row(tmp_path):
    import pytest

    from kollm.data.io import DataError, read_jsonl

    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n', encoding="utf-8")
    assert read_jsonl(path, limit=2) == [{"a": 1}, {"a": 2}]
    with pytest.raises(DataError, match=r"x\.jsonl: line 4: malformed JSON"):
        read_jsonl(path)
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "none.jsonl")


def test_a_split_the_data_stage_wrote_in_shards_is_what_training_reads(tmp_path):
    from kollm.config import load_recipe
    from kollm.data.io import read_jsonl, write_jsonl

    recipe = load_recipe(REPO_RECIPE, [f"output_dir={tmp_path}"])
    shards = recipe.data_dir / "train"
    write_jsonl(shards / "part-00001.jsonl", [{"id": "b"}])
    write_jsonl(shards / "part-00000.jsonl", [{"id": "a"}])
    assert recipe.split_path("train") == shards
    assert read_jsonl(recipe.split_path("train")) == [{"id": "a"}, {"id": "b"}]
    write_jsonl(recipe.data_dir / "train.jsonl", [{"id": "one file"}])  # a local run's wins
    assert read_jsonl(recipe.split_path("train")) == [{"id": "one file"}]
