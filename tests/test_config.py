from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kollm.cli import app
from kollm.config import Recipe, RecipeError, load_recipe
from kollm.docs import recipe_markdown, schema_rows

MINIMAL = "name: t\ndata:\n  input: in.jsonl\n  kind: dialogue_summary\n"


def recipe_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_bundled_recipe_loads(repo):
    recipes = sorted((repo / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        recipe = load_recipe(path)
        assert recipe.name == raw["name"]
        for section in ("data", "train", "eval"):  # a section the file has is one it runs
            assert (getattr(recipe, section) is not None) == (section in raw), (path, section)
        given = recipe.data.input if recipe.data else {}
        inputs = given if isinstance(given, dict) else {"": given}
        for source in inputs.values():  # bundled inputs exist; others are the user's own
            if source.startswith("data/"):
                assert (repo / source).is_file(), f"{path}: {source} is not bundled"
        first_line = path.read_text(encoding="utf-8").splitlines()[0]
        assert first_line.startswith("# Run: kollm "), f"{path} must open with its command"


def test_wrong_type_names_file_and_key_path(tmp_path):
    path = recipe_file(tmp_path, MINIMAL + "  dedup:\n    threshold: high\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert (
        str(err.value)
        == f"{path}: data.dedup.threshold: expected a number between 0 and 1, got 'high'"
    )


def test_unknown_key_suggests_the_known_one(tmp_path):
    path = recipe_file(tmp_path, MINIMAL + "  dedup:\n    ngramm: 3\n")
    with pytest.raises(
        RecipeError, match=r"data\.dedup\.ngramm: unknown key; did you mean 'ngram'\?"
    ):
        load_recipe(path)


def test_missing_required_field(tmp_path):
    path = recipe_file(tmp_path, "name: t\ndata:\n  kind: text\n")
    with pytest.raises(RecipeError, match=r"data\.input is missing: give the input file"):
        load_recipe(path)


def test_bad_literal_lists_the_choices(tmp_path):
    with pytest.raises(RecipeError, match=r"data\.kind: expected one of .*'text', got 'novel'"):
        load_recipe(recipe_file(tmp_path, MINIMAL), ["data.kind=novel"])


def test_overrides_are_typed_and_nested(tmp_path):
    recipe = load_recipe(
        recipe_file(tmp_path, MINIMAL),
        ["data.dedup.threshold=0.8", "data.filters.lengths.summary.min_chars=5", "name=other"],
    )
    assert recipe.data.dedup.threshold == 0.8
    assert recipe.data.filters.lengths["summary"].min_chars == 5
    assert recipe.name == "other"
    assert recipe.data_dir == Path("runs/other/data")


def test_malformed_override_and_yaml_are_errors(tmp_path):
    with pytest.raises(RecipeError, match=r"expected key\.path=value"):
        load_recipe(recipe_file(tmp_path, MINIMAL), ["data.dedup.threshold"])
    with pytest.raises(RecipeError, match=r"r\.yaml: line 2: not valid YAML"):
        load_recipe(recipe_file(tmp_path, "name: t\ndata: : :\n  x: 1\n"))


def test_cli_exits_2_with_the_message(tmp_path):
    path = recipe_file(tmp_path, MINIMAL + "  dedup:\n    threshold: high\n")
    result = CliRunner().invoke(app, ["data", "prepare", str(path)])
    assert result.exit_code == 2
    assert "data.dedup.threshold: expected a number between 0 and 1, got 'high'" in result.output


def test_every_field_has_a_description():
    missing = [row[0] for row in schema_rows(Recipe) if not row[3]]
    assert missing == []


def test_generated_docs_are_current(repo):
    reference = repo / "docs" / "reference" / "recipe.md"
    assert reference.read_text(encoding="utf-8") == recipe_markdown(), "run: kollm recipe docs"


def test_schema_command_shows_descriptions():
    result = CliRunner().invoke(app, ["recipe", "schema"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "data.dedup.threshold" in result.output
    assert "Estimated Jaccard similarity" in result.output


@pytest.mark.parametrize(
    ("distributed", "message"),
    [
        ("{num_workers: 2}", "train.distributed.num_workers is for launcher: ray"),
        ("{launcher: torchrun, max_failures: 2}", "max_failures is for launcher: ray"),
        ("{launcher: ray, num_processes: 2}", "takes train.distributed.num_workers, not num_"),
        ("{launcher: ray, gpus_per_worker: 2}", "gpus_per_worker needs use_gpu: true"),
        ("{launcher: ray, resources_per_worker: {GPU: 1}}", "give GPUs as gpus_per_worker"),
    ],
)
def test_inconsistent_ray_training_settings_are_refused_by_name(tmp_path, distributed, message):
    path = recipe_file(tmp_path, MINIMAL + f"train:\n  distributed: {distributed}\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_recipe_docs_writes_the_sites_reference_page(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["recipe", "docs"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "docs" / "reference" / "recipe.md"
    assert written.read_text(encoding="utf-8") == recipe_markdown()
