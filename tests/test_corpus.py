"""Tests for steerkit.corpora.prompts: the real n50 file against its raw JSON and README rules; malformed files."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from steerkit.core.generation import Prompt
from steerkit.corpora.prompts import CorpusPrompt, load_prompt_corpus
from steerkit.errors import SteerkitError
from tests.conftest import CORPUS_N50

CATEGORIES = {"arithmetic": 10, "string": 10, "collection": 10, "option_result": 10, "generic": 5, "should_panic": 5}
PREFIXES = {"arithmetic": "arith_", "string": "string_", "collection": "coll_", "option_result": "optres_",
            "generic": "generic_", "should_panic": "panic_"}  # fmt: skip


def test_n50_loads_as_its_raw_json() -> None:
    corpus = load_prompt_corpus(CORPUS_N50)
    raw = json.loads(CORPUS_N50.read_text(encoding="utf-8"))
    assert corpus.name == raw["name"] == "generation_prompts_n50"
    assert corpus.path == str(CORPUS_N50)
    assert corpus.sha256 == hashlib.sha256(CORPUS_N50.read_bytes()).hexdigest()
    assert [(p.id, p.category, p.prompt, p.meta) for p in corpus.prompts] == [
        (item["id"], item["category"], item["prompt"], item["meta"]) for item in raw["prompts"]
    ]
    assert [(p.reference, p.mutant) for p in corpus.prompts] == [
        (item["reference"], item["mutant"]) for item in raw["prompts"]
    ]
    assert all(p.has_reference for p in corpus.prompts)


def test_n50_has_fifty_prompts_in_the_declared_categories() -> None:
    corpus = load_prompt_corpus(str(CORPUS_N50))
    assert len(corpus.prompts) == 50
    assert Counter(p.category for p in corpus.prompts) == CATEGORIES
    assert len({p.id for p in corpus.prompts}) == 50
    for p in corpus.prompts:
        assert p.id.startswith(PREFIXES[p.category]), p.id


def test_n50_prompts_follow_the_readme_format() -> None:
    for p in load_prompt_corpus(CORPUS_N50).prompts:
        lines = p.prompt.split("\n")
        assert p.prompt.endswith("{\n") and lines[-1] == "", p.id
        assert all(line == "///" or line.startswith("/// ") for line in lines[:-2]), p.id
        assert sum(line == "/// #[test]" for line in lines) == 1, p.id
        assert re.match(r"(pub )?fn \w+", lines[-2]), p.id
        name = re.match(r"(?:pub )?fn (\w+)", lines[-2]).group(1)  # type: ignore[union-attr]
        assert f"{name}(" in p.prompt.split("/// #[test]")[1], p.id  # the test calls the function
        assert (p.category == "should_panic") == ("#[should_panic" in p.prompt), p.id


def test_limit_and_as_prompt() -> None:
    corpus = load_prompt_corpus(CORPUS_N50)
    assert corpus.limit(3) == corpus.prompts[:3]
    assert corpus.limit(0) == corpus.prompts
    with pytest.raises(SteerkitError, match="limit must be >= 0, got -1"):
        corpus.limit(-1)
    first = corpus.prompts[0]
    assert first.as_prompt() == Prompt(first.id, first.prompt)


# --- malformed files -------------------------------------------------------------------------------------------


def _write(tmp_path: Path, data: Any, name: str = "bad.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _item(i: int, **over: Any) -> dict[str, Any]:
    return {"id": f"p{i}", "category": "c", "prompt": f"text {i}", **over}


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(SteerkitError, match=re.escape(f"corpus file not found: {path}")):
        load_prompt_corpus(path)


def test_malformed_json_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"prompts": [')
    with pytest.raises(SteerkitError, match=re.escape(f"malformed corpus {path}: ")):
        load_prompt_corpus(path)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SteerkitError, match="malformed corpus .*binary.json"):
        load_prompt_corpus(binary)


@pytest.mark.parametrize("data", [[], {"prompts": []}, {"prompts": "x"}, {"name": "n"}])
def test_missing_prompts_list(tmp_path: Path, data: Any) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(SteerkitError, match=re.escape(f"malformed corpus {path}: expected an object with a non-empty")):
        load_prompt_corpus(path)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"category": "c", "prompt": "x"}, "id"),
        (_item(1, category=None), "category"),
        (_item(1, prompt=""), "prompt"),
        (_item(1, id=7), "id"),
        ("not an object", "id"),
    ],
)
def test_missing_field_is_named(tmp_path: Path, item: Any, field: str) -> None:
    path = _write(tmp_path, {"prompts": [_item(0), item]})
    with pytest.raises(SteerkitError, match=re.escape(f"{path}: prompt #1 lacks a non-empty string '{field}'")):
        load_prompt_corpus(path)


def test_duplicate_id_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, {"prompts": [_item(0), _item(1), _item(2, id="p0")]})
    with pytest.raises(SteerkitError, match=re.escape(f"malformed corpus {path}: duplicate id 'p0'")) as info:
        load_prompt_corpus(path)
    assert "\n" not in str(info.value)


def test_minimal_valid_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"prompts": [_item(0, meta={"k": 1}), _item(1)]}, name="mini.json")
    corpus = load_prompt_corpus(path)
    assert corpus.name == "mini"  # defaults to the file stem
    assert corpus.prompts == (CorpusPrompt("p0", "c", "text 0", {"k": 1}), CorpusPrompt("p1", "c", "text 1"))


@pytest.mark.parametrize("meta", [5, "oops", ["a", "b"]])
def test_malformed_meta_is_named(tmp_path: Path, meta: Any) -> None:
    path = _write(tmp_path, {"prompts": [_item(0, meta=meta)]})
    with pytest.raises(SteerkitError, match=re.escape(f"malformed corpus {path}: ") + ".*'meta'"):
        load_prompt_corpus(path)


def test_reference_and_mutant_are_kept(tmp_path: Path) -> None:
    """A user's own Rust problems: `reference` / `mutant` reach the items (they were dropped as unknown fields)."""
    ref, mut = "fn f() -> i32 {\n    1\n}\n", "fn f() -> i32 {\n    2\n}\n"
    path = _write(tmp_path, {"prompts": [_item(0, reference=ref, mutant=mut), _item(1)]})
    with_ref, without = load_prompt_corpus(path).prompts
    assert (with_ref.reference, with_ref.mutant, with_ref.has_reference) == (ref, mut, True)
    assert (without.reference, without.mutant, without.has_reference) == (None, None, False)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"reference": "fn f() {}\n"}, "has a 'reference' but no 'mutant'"),
        ({"mutant": "fn f() {}\n"}, "has a 'mutant' but no 'reference'"),
        ({"reference": 5, "mutant": "fn f() {}\n"}, "has a 'reference' that is not a non-empty string"),
        ({"reference": "fn f() {}\n", "mutant": "  "}, "has a 'mutant' that is not a non-empty string"),
    ],
)
def test_malformed_reference_is_named(tmp_path: Path, extra: dict[str, Any], needle: str) -> None:
    path = _write(tmp_path, {"prompts": [_item(0, **extra)]})
    with pytest.raises(SteerkitError, match=re.escape(f"malformed corpus {path}: prompt #0 {needle}")) as info:
        load_prompt_corpus(path)
    assert "\n" not in str(info.value)
