"""The attention-pairs corpus and its loader: schema, counts, causal validity, distances, loader errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from steerkit.attention.rust_quality import score_rust_test
from steerkit.corpora.attention_pairs import (
    DEFAULT_PATH,
    encode_item,
    load_attention_corpus,
    marker_target_positions,
    token_distance,
)
from steerkit.corpora.doctests import load_doctest_prompts
from steerkit.errors import SteerkitError
from steerkit.execution import ExecutionLimits, RustJob, run_program, run_rust_many

CORPUS = load_attention_corpus(DEFAULT_PATH)


def test_counts_and_matching_by_task():
    py_tests, rs_tests = CORPUS.select("python", "test"), CORPUS.select("rust", "test")
    assert len(py_tests) >= 20 and len(rs_tests) >= 20
    assert len(CORPUS.select("python", "baseline")) >= 10 and len(CORPUS.select("rust", "baseline")) >= 10
    pairs = CORPUS.pairs()
    assert len(pairs) >= 20
    assert all(p.task == r.task and p.language == "python" and r.language == "rust" for p, r in pairs)
    assert len({i.id for i in CORPUS.items}) == len(CORPUS.items)
    for base in CORPUS.select(kind="baseline"):
        assert base.marker is None and base.marker_target_distance is None
        assert ">>>" not in base.code and "#[test]" not in base.code
    raw = json.loads(Path(DEFAULT_PATH).read_text())
    assert raw["name"] == "attention_pairs" and raw["tokenizer_for_distances"] == "smollm2-135m-instruct"


def test_markers_follow_targets_and_targets_hit_the_signature(tiny):
    tok = tiny("llama").tokenizer  # byte-level: one token per byte, so token order = character order
    for item in CORPUS.select(kind="test"):
        enc = encode_item(tok, item)
        sig_line = next(m for m in re.finditer(r"^(?:def|fn) \w+.*$", item.code, re.M))
        for target in ("function_name", "parameters"):
            markers, targets = marker_target_positions(enc, item, target)
            assert markers[0] > targets[-1], (item.id, target)  # causally valid: the marker attends back
            assert all(sig_line.start() <= enc.offsets[t][0] < sig_line.end() for t in targets), (item.id, target)
        name_tokens = marker_target_positions(enc, item)[1]
        assert item.code[enc.offsets[name_tokens[0]][0] : enc.offsets[name_tokens[-1]][1]] == item.function_name()
        params = marker_target_positions(enc, item, "parameters")[1]
        text = "".join(item.code[enc.offsets[t][0] : enc.offsets[t][1]] for t in params)
        assert len(text) > 0 and text.replace(",", "") == text  # names only, no separators


def test_rust_reference_tests_score_as_quality():
    for item in CORPUS.select("rust", "test"):
        body = item.code.split("#[test]")[1].split("{", 1)[1]
        assert score_rust_test(body, item.code).quality, item.id


def test_python_doctests_pass_in_the_sandbox():
    src = "\n\n".join(i.code for i in CORPUS.select("python", "test"))
    runner = (
        "\nimport doctest\nresult = doctest.testmod()\nassert result.failed == 0, result\nprint(result.attempted)\n"
    )
    r = run_program(src + runner, limits=ExecutionLimits(wall_seconds=60.0, cpu_seconds=30))
    assert r.status == "passed", r.stdout[-500:] + r.stderr[-500:]
    assert int(r.stdout.split()[-1]) == len(CORPUS.select("python", "test"))


@pytest.mark.skipif(shutil.which("rustc") is None, reason="no rustc on PATH")
def test_rust_reference_tests_compile_and_pass_in_the_sandbox():
    items = CORPUS.select("rust", "test")
    results = run_rust_many([RustJob(id=i.id, source=i.code) for i in items], workers=2)
    failed = {r.id: (r.status, r.compile_stderr[-300:] or r.stdout[-300:]) for r in results if not r.passed}
    assert not failed
    assert all(len(r.tests) == 1 for r in results)


@pytest.mark.skipif(shutil.which("rustc") is None, reason="no rustc on PATH")
def test_rust_items_test_passes_on_reference_and_fails_on_mutant():
    """The `reference`/`mutant` fields steer_attention scores against: the item's own test separates them."""
    items = CORPUS.select("rust", "test")
    assert all(i.reference and i.mutant and i.reference in i.code for i in items)  # the reference is the item's code
    test = {i.id: "#[test]" + i.code.split("#[test]", 1)[1] for i in items}
    jobs = [RustJob(id=f"{i.id}/{kind}", source=f"{getattr(i, kind)}\n{test[i.id]}") for i in items
            for kind in ("reference", "mutant")]  # fmt: skip
    status = {r.id: r.status for r in run_rust_many(jobs, workers=2)}
    assert {k: v for k, v in status.items() if k.endswith("/reference") and v != "passed"} == {}
    assert {k: v for k, v in status.items() if k.endswith("/mutant") and v != "failed"} == {}


@pytest.mark.embedded
def test_stored_distances_equal_the_embedded_tokenizer(embedded):
    for item in CORPUS.select(kind="test"):
        assert token_distance(embedded, item) == item.marker_target_distance, item.id


def _write(tmp_path: Path, items: list[dict]) -> Path:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "c", "items": items}))
    return path


def _good() -> dict:
    return json.loads(json.dumps(next(i for i in json.loads(Path(DEFAULT_PATH).read_text())["items"])))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"language": "go"}, "'language'"),
        ({"kind": "other"}, "'kind'"),
        ({"marker": None}, "'marker'"),
        ({"marker": "@@@"}, "'marker'"),
        ({"marker": "def"}, "'marker' occurs before"),
        ({"code": 3}, "'code'"),
        ({"targets": {"function_name": "add"}}, "'targets'"),
        ({"targets": {"function_name": r"\breturn\b", "parameters": r"\ba\b"}}, "'targets.function_name'"),
        ({"targets": {"function_name": "(?<=def )add", "parameters": r"\breturn\b"}}, "'targets.parameters'"),
        ({"targets": {"function_name": "(", "parameters": "a"}}, "not a valid regex"),
        ({"marker_target_distance": None}, "'marker_target_distance'"),
    ],
)
def test_loader_names_item_and_field(tmp_path, change, needle):
    item = _good() | change
    with pytest.raises(SteerkitError, match=re.escape(needle)) as exc:
        load_attention_corpus(_write(tmp_path, [item]))
    assert "py_add" in str(exc.value) and "\n" not in str(exc.value)


def test_loader_file_level_errors(tmp_path):
    with pytest.raises(SteerkitError, match="not found"):
        load_attention_corpus(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SteerkitError, match="malformed"):
        load_attention_corpus(bad)
    with pytest.raises(SteerkitError, match="duplicated"):
        load_attention_corpus(_write(tmp_path, [_good(), _good()]))
    with pytest.raises(SteerkitError, match="unknown language"):
        CORPUS.select(language="go")
    with pytest.raises(SteerkitError, match="baseline"):
        CORPUS.select(kind="baseline")[0].marker_selector()


def test_doctest_loader_rejects_a_repeated_id(tmp_path):
    """The doctest corpus goes through the same item reader (corpora.loader.read_items) as the attention corpus."""
    real = json.loads((Path(__file__).resolve().parents[1] / "corpus" / "doctest_prompts.json").read_text())
    first = real["prompts"][0]
    path = tmp_path / "doctests.json"
    path.write_text(json.dumps({"name": "d", "prompts": [first, first]}))
    with pytest.raises(SteerkitError, match=re.escape(f"doctest item {first['id']!r}: field 'id' is duplicated")):
        load_doctest_prompts(path)
    path.write_text(json.dumps({"name": "d", "prompts": [first]}))
    assert [p.id for p in load_doctest_prompts(path).prompts] == [first["id"]]
