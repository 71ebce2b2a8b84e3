"""Typed recipe models, YAML loading, `key=value` overrides, and readable errors.

Every field's docstring is its description: `kollm recipe schema` and docs/recipe.md show it.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kollm.text.pii import PLACEHOLDERS

RecordKind = Literal["dialogue_summary", "instruction", "chat", "preference", "text"]
InputFormat = Literal["auto", "jsonl", "csv", "parquet", "datasets"]
PiiType = Literal[
    "rrn",
    "alien",
    "email",
    "card",
    "phone",
    "business",
    "passport",
    "driver",
    "account",
    "ip",
    "address",
]
Tokenizer = Literal["mecab", "kiwi", "whitespace"]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key path."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class NormalizeConfig(StrictModel):
    enabled: bool = True
    """Run the normaliser (NFC, invisible and control characters, whitespace)."""
    max_repeat: int = Field(2, ge=0)
    """Longest run of one repeated Hangul, jamo or !?~ character kept (`ㅋㅋㅋ` -> `ㅋㅋ`)."""
    fullwidth_to_ascii: bool = True
    """Fold full-width digits and Latin letters (`０１０` -> `010`); nothing else gets NFKC."""


class PiiConfig(StrictModel):
    enabled: bool = True
    """Mask personal information with typed placeholders (`#PhoneNumber#`)."""
    types: list[PiiType] = Field(default_factory=lambda: sorted(set(PLACEHOLDERS) - {"address"}))
    """PII types to mask; `address` (road name + building number) is opt-in."""


class DedupConfig(StrictModel):
    exact: bool = True
    """Drop records whose normalised key text was seen before."""
    near: bool = True
    """Drop near-duplicates found with MinHash LSH on character n-grams."""
    threshold: float = Field(0.6, ge=0, le=1)
    """Estimated Jaccard similarity at or above which a record is a near-duplicate."""
    ngram: int = Field(4, ge=1, le=32)
    """Character n-gram length of the shingles (Korean particles defeat word shingles)."""
    num_perm: int = Field(128, ge=16, le=1024)
    """Number of MinHash permutations; more is more accurate and slower."""
    fields: list[str] | None = None
    """Fields compared for duplicates; default: the record kind's input fields."""


class LengthBounds(StrictModel):
    min_chars: int = Field(1, ge=0)
    """Fewest characters a field may have."""
    max_chars: int | None = Field(None, ge=1)
    """Most characters a field may have; none means no bound."""
    min_tokens: int = Field(0, ge=0)
    """Fewest tokens (with `filters.tokenizer`)."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens; none means no bound."""


class FilterConfig(StrictModel):
    lengths: dict[str, LengthBounds] = Field(default_factory=dict)
    """Length bounds per field (`dialogue`, `summary`, `messages`, ...)."""
    tokenizer: Tokenizer = "whitespace"
    """Tokenizer that counts tokens for the length bounds."""
    min_hangul_ratio: float = Field(0.3, ge=0, le=1)
    """Least share of Hangul among letters and digits of the input fields."""
    drop_placeholder_only: bool = True
    """Drop records with an empty field or one that holds nothing but placeholders."""


class SplitConfig(StrictModel):
    dev: float = Field(0.1, ge=0, lt=1)
    """Share of records for the dev split, when the input has no splits."""
    test: float = Field(0.0, ge=0, lt=1)
    """Share of records for the test split, when the input has no splits."""
    seed: int = 42
    """Seed of the shuffle before splitting."""

    @model_validator(mode="after")
    def _shares_leave_train(self) -> SplitConfig:
        if self.dev + self.test >= 1:
            raise ValueError("dev + test must be below 1")
        return self


class ReportConfig(StrictModel):
    tokenizer: str | None = "mecab"
    """`mecab`, `kiwi`, `whitespace`, or a path to a `tokenizer.json` for characters per token."""
    top_topics: int = Field(15, ge=1)
    """How many topics the report lists."""


class DataConfig(StrictModel):
    input: str | dict[str, str]
    """Path to JSONL, CSV, Parquet or a saved `datasets` dir, or a mapping split -> path."""
    kind: RecordKind
    """Record kind: dialogue_summary, instruction, chat, preference or text."""
    format: InputFormat = "auto"
    """Input format; `auto` goes by the file suffix (a directory is a `datasets` dir)."""
    output_dir: str | None = None
    """Where cleaned data, stats and the report go; default `<output_dir>/data`."""
    skip_bad_lines: bool = False
    """Skip malformed lines and records (written to bad_lines.jsonl) instead of stopping."""
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    """Korean normalisation."""
    pii: PiiConfig = Field(default_factory=PiiConfig)
    """PII de-identification."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    """Exact and near-duplicate removal."""
    filters: FilterConfig = Field(default_factory=FilterConfig)
    """Quality filters."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """Train/dev/test split."""
    report: ReportConfig = Field(default_factory=ReportConfig)
    """EDA report."""


class Recipe(StrictModel):
    name: str = Field("kollm-run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Name of the run, and of the model in the registry."""
    output_dir: str = "runs/{name}"
    """Directory for everything the run writes; `{name}` is replaced by the recipe name."""
    data: DataConfig | None = None
    """The data stage."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    @property
    def data_dir(self) -> Path:
        if self.data is not None and self.data.output_dir:
            return Path(self.data.output_dir)
        return self.run_dir / "data"


# --- loading ---------------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["data.dedup.threshold=0.8"]` -> `{"data.dedup.threshold": 0.8}` (values read as YAML)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r}: expected key.path=value")
        parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every problem raises RecipeError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise RecipeError(f"{path}: cannot read recipe: {err.strerror}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise RecipeError(f"{path}: {where}not valid YAML: {getattr(err, 'problem', err)}") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    apply_overrides(raw, parse_overrides(overrides or []))
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(format_validation_error(path, err, Recipe)) from err


def recipe_text(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")


# --- error messages --------------------------------------------------------------------------


def _unwrap(annotation: Any, key: Any) -> Any:
    """The type found one step down `annotation` at `key` (a field, dict key or list index)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg, key)
            if found is not None:
                return found
        return None
    if origin is dict:
        return typing.get_args(annotation)[1]
    if origin is list:
        return typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        info = annotation.model_fields.get(key)
        return info if info is not None else None
    return None


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """FieldInfo of the field at `loc`, or None if the path leaves the schema."""
    current: Any = model
    info = None
    for key in loc:
        step = _unwrap(current, key)
        if step is None:
            return info if isinstance(key, str) and not key.isidentifier() else None
        if hasattr(step, "annotation") and hasattr(step, "metadata"):
            info, current = step, step.annotation
        else:
            current = step
    return info


def _bounds(info: Any) -> str:
    lo = hi = None
    lo_op = hi_op = ""
    for meta in getattr(info, "metadata", []):
        if isinstance(meta, annotated_types.Ge | annotated_types.Gt):
            lo, lo_op = (meta.ge, ">=") if isinstance(meta, annotated_types.Ge) else (meta.gt, ">")
        if isinstance(meta, annotated_types.Le | annotated_types.Lt):
            hi, hi_op = (meta.le, "<=") if isinstance(meta, annotated_types.Le) else (meta.lt, "<")
    if lo is not None and hi is not None:
        return f" between {lo} and {hi}"
    if lo is not None:
        return f" {lo_op} {lo}"
    if hi is not None:
        return f" {hi_op} {hi}"
    return ""


_NUMBER_ERRORS = {
    "float_parsing",
    "float_type",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "int_parsing",
    "int_type",
    "int_from_float",
}


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    kind, loc, got = error["type"], error["loc"], error.get("input")
    if kind == "extra_forbidden":
        parent = _field_at(model, loc[:-1])
        sub = getattr(parent, "annotation", model) if loc[:-1] else model
        known = list(getattr(sub, "model_fields", {}))
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return "unknown key" + (f"; did you mean '{hint[0]}'?" if hint else "")
    if kind == "missing":
        return "required field is missing"
    if kind in _NUMBER_ERRORS:
        info = _field_at(model, loc)
        noun = (
            "an integer" if kind.startswith("int") or "int" in str(info.annotation) else "a number"
        )
        return f"expected {noun}{_bounds(info)}, got {got!r}"
    if kind == "bool_parsing":
        return f"expected true or false, got {got!r}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "literal_error":
        return f"expected one of {error['ctx']['expected']}, got {got!r}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {got!r}"


def format_validation_error(path: Path | str, err: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: `recipes/demo.yaml: data.dedup.threshold: expected ...`."""
    lines = []
    for error in err.errors():
        # Union members add their type name to the location; it means nothing to a user.
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"{path}: {dotted}: {_describe({**error, 'loc': loc}, model)}")
    return "\n".join(dict.fromkeys(lines))
