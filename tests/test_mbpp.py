"""Tests for steerkit.corpora.mbpp and corpus/mbpp_style.jsonl.

The corpus's reference solutions are run against their asserts, and each assert against a wrong solution (the
entry point's body replaced by `return None`), in steerkit.execution's sandboxed subprocesses: code from a
corpus is never executed in the test process. Complexity is checked against hand counts of radon's definition,
strata against `pandas.qcut`, and the loader against the raw JSON and the real MBPP files when they are present.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from steerkit.corpora.mbpp import (
    DEFAULT_CORPUS,
    DEFAULT_FRACTIONS,
    SPLITS,
    Problem,
    ProblemSet,
    complexity_strata,
    load_problems,
    split_manifest,
    split_problems,
)
from steerkit.errors import SteerkitError
from steerkit.execution import run_many

MBPP_DIR = Path(os.environ.get("STEERKIT_MBPP_DIR", "/work/shared/data/mbpp"))
# Modules a deterministic, offline reference solution has no business importing.
FORBIDDEN_IMPORTS = {"random", "time", "os", "sys", "subprocess", "socket", "urllib", "http", "secrets", "pathlib"}


@pytest.fixture(scope="module")
def corpus() -> ProblemSet:
    return load_problems(DEFAULT_CORPUS)


def _raw_corpus() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DEFAULT_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- running the corpus (sandboxed subprocesses only, via steerkit.execution) ----------------------------------


def _with_stub_body(problem: Problem) -> str:
    """The solution with the entry point's body replaced by `return None` (parsed and rewritten, not run)."""
    tree = ast.parse(problem.code)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == problem.entry_point:
            node.body = [ast.Return(ast.Constant(None))]
            return ast.unparse(tree)
    raise AssertionError(f"{problem.task_id}: entry point {problem.entry_point} not found")


def test_every_reference_solution_passes_its_asserts(corpus: ProblemSet) -> None:
    results = run_many([(p.code, p.test_list) for p in corpus.problems], workers=2)
    failed = [(p.task_id, r.status, r.stderr[-200:]) for p, r in zip(corpus.problems, results) if not r.passed]
    assert failed == []
    assert all(r.tests_passed == r.tests_total == 3 for r in results)


def test_every_assert_fails_against_a_wrong_solution(corpus: ProblemSet) -> None:
    """No assert is vacuous: each one fails when the entry point returns None (run_tests runs every test)."""
    control = run_many([("def f(x):\n    return None", ["assert f(1) is None", "assert f(1) == 2"])])[0]
    assert (control.status, control.tests_passed, control.tests_total) == ("failed", 1, 2)  # counts per assert
    results = run_many([(_with_stub_body(p), p.test_list) for p in corpus.problems], workers=2)
    vacuous = [(p.task_id, r.status, r.tests_passed) for p, r in zip(corpus.problems, results)
               if r.status not in ("failed", "error") or r.tests_passed != 0]  # fmt: skip
    assert vacuous == []


# --- corpus shape ------------------------------------------------------------------------------------------------


def test_corpus_records_have_the_mbpp_layout(corpus: ProblemSet) -> None:
    raw = _raw_corpus()
    assert len(raw) == len(corpus.problems) >= 120
    ids = [r["task_id"] for r in raw]
    assert len(set(ids)) == len(ids) and min(ids) >= 10001
    for record in raw:
        assert set(record) == {"task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list"}
        assert record["test_setup_code"] == "" and record["challenge_test_list"] == []
        assert record["text"].startswith("Write a function to ") and "\n" not in record["text"], record["task_id"]


def test_each_problem_has_three_asserts_calling_its_entry_point(corpus: ProblemSet) -> None:
    for p in corpus.problems:
        assert len(p.test_list) == 3, p.task_id
        for test in p.test_list:
            tree = ast.parse(test)
            assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert), (p.task_id, test)
            called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            assert p.entry_point in called, (p.task_id, test)
        assert p.signature.startswith(f"def {p.entry_point}("), p.task_id


def test_solutions_define_a_top_level_function_and_import_only_safe_stdlib(corpus: ProblemSet) -> None:
    for p in corpus.problems:
        tree = ast.parse(p.code)
        assert p.entry_point in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, p.task_id
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top in sys.stdlib_module_names and top not in FORBIDDEN_IMPORTS, (p.task_id, name)


def test_corpus_complexity_spread(corpus: ProblemSet) -> None:
    values = [p.complexity for p in corpus.problems]
    assert min(values) <= 2 and max(values) >= 8
    assert sum(v >= 4 for v in values) >= 20
    assert sum(v <= 2 for v in values) >= 20


def test_first_problems_of_the_file_span_the_complexity_range(corpus: ProblemSet) -> None:
    """The file interleaves difficulties, so a small `limit` is not all trivial problems."""
    values = [p.complexity for p in corpus.limit(12)]
    assert min(values) == 1 and max(values) >= 4


# --- complexity --------------------------------------------------------------------------------------------------


def _problem(code: str, test: str = "assert f(1) == 1", task_id: int = 1) -> Problem:
    return Problem(task_id, "Write a function to do it.", code, (test, test, test))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("def f(x):\n    y = x + 1\n    return y * 2\n", 1),  # straight line
        ("def f(x):\n    if x > 0:\n        return 1\n    return 0\n", 2),  # one if
        ("def f(xs):\n    t = 0\n    for x in xs:\n        if x:\n            t += x\n    return t\n", 3),  # if + for
        ("def f(x):\n    if x > 0:\n        return 1\n    elif x < 0:\n        return -1\n    return 0\n", 3),
        ("def f(x):\n    return x > 0 and x < 9 or x == 20\n", 3),  # two boolean operators
        ("def f(xs):\n    return [x for x in xs if x]\n", 3),  # comprehension + its if
        ("def f(x):\n    while x:\n        x -= 1\n    else:\n        x = 5\n    return x\n", 3),  # loop + else
        ("def f(x):\n    try:\n        return 1 // x\n    except ZeroDivisionError:\n        return 0\n", 2),
        ("def f(x):\n    return 1 if x else 0\n", 2),  # conditional expression
    ],
)
def test_complexity_of_hand_counted_functions(code: str, expected: int) -> None:
    assert _problem(code).complexity == expected


def test_complexity_sums_helpers_closures_and_methods() -> None:
    helper = "def g(x):\n    return x if x else 0\n\ndef f(x):\n    if x:\n        return g(x)\n    return 1\n"
    assert _problem(helper).complexity == 2 + 2
    closure = "def f(xs):\n    def g(x):\n        return 1 if x else 0\n    return [g(x) for x in xs]\n"
    assert _problem(closure).complexity == 2 + 2  # f: 1 + comprehension; closure g: 1 + if-expression
    methods = "class A:\n    def m(self, x):\n        return 1 if x else 2\n\ndef f(x):\n    return A().m(x)\n"
    assert _problem(methods).complexity == 2 + 1  # the method once, not again through radon's class aggregate
    assert _problem("X = [1 if i else 0 for i in range(3)]\n\ndef f(x):\n    return X\n").complexity == 1


# --- Problem -----------------------------------------------------------------------------------------------------


def test_entry_point_is_the_function_the_first_test_calls() -> None:
    code = "def helper(x):\n    return x\n\n\ndef solve(a: int, b=2, *rest, k=1) -> int:\n    return helper(a) + b\n"
    p = _problem(code, "assert solve(1) == 3")
    assert p.entry_point == "solve"
    assert p.signature == "def solve(a: int, b=2, *rest, k=1) -> int:"
    assert _problem("def remove_odd(nums):\n    return nums", "assert remove_odd([1]) == [1]").signature == (
        "def remove_odd(nums):"
    )
    with pytest.raises(SteerkitError, match=r"task_id 1: no function in its code is called by 'assert g\(1\)"):
        _ = _problem("def f(x):\n    return x\n", "assert g(1) == 1").entry_point


def test_to_dict_from_dict_round_trip(corpus: ProblemSet) -> None:
    raw = _raw_corpus()
    assert [p.to_dict() for p in corpus.problems] == raw
    assert tuple(Problem.from_dict(r) for r in raw) == corpus.problems


# --- loader ------------------------------------------------------------------------------------------------------


def test_corpus_loads_as_its_raw_jsonl(corpus: ProblemSet) -> None:
    import hashlib

    assert corpus.name == "mbpp_style" and corpus.path == str(DEFAULT_CORPUS)
    assert corpus.sha256 == hashlib.sha256(DEFAULT_CORPUS.read_bytes()).hexdigest()
    assert [(p.task_id, p.text, p.code, list(p.test_list)) for p in corpus.problems] == [
        (r["task_id"], r["text"], r["code"], r["test_list"]) for r in _raw_corpus()
    ]
    assert corpus.limit(0) == corpus.problems and corpus.limit(3) == corpus.problems[:3]
    assert corpus.by_id()[10001] is corpus.problems[0]
    with pytest.raises(SteerkitError, match="limit must be >= 0, got -1"):
        corpus.limit(-1)


def test_round_trip_through_a_written_file(corpus: ProblemSet, tmp_path: Path) -> None:
    path = tmp_path / "copy.jsonl"
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in corpus.problems[:10]), encoding="utf-8")
    again = load_problems(str(path))
    assert again.problems == corpus.problems[:10] and again.name == "copy"


_DROP = object()  # marks a field to leave out of a record


def _record(task_id: Any, **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "task_id": task_id,
        "text": "Write a function to add one.",
        "code": "def inc(x):\n    return x + 1",
        "test_list": ["assert inc(1) == 2", "assert inc(2) == 3", "assert inc(0) == 1"],
        "test_setup_code": "",
        "challenge_test_list": [],
    }
    record.update(over)
    return {k: v for k, v in record.items() if v is not _DROP}


def _write_jsonl(tmp_path: Path, records: list[Any]) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_record(12, code=_DROP), "line 2 (task_id 12): missing field 'code'"),
        (_record(12, text=_DROP), "line 2 (task_id 12): missing field 'text'"),
        (_record(12, test_list="assert inc(1) == 2"), "line 2 (task_id 12): test_list must be a non-empty list of "
         "strings, got 'assert inc(1) == 2'"),
        (_record(12, test_list=[]), "line 2 (task_id 12): test_list must be a non-empty list of strings, got []"),
        (_record(11), "line 2 (task_id 11): duplicate task_id 11 (first at"),
        (_record(12, code="def inc(x)\n    return x"), "line 2 (task_id 12): code does not parse: expected ':'"),
        (_record("12"), "line 2: task_id must be an integer, got '12'"),
        (_record(12, code="def other(x):\n    return x"), "line 2 (task_id 12): no function defined in code is "
         "called by test_list[0]"),
        (_record(12, test_setup_code=None), "line 2 (task_id 12): test_setup_code must be a string, got None"),
        (["not", "an", "object"], "line 2: expected a JSON object, got list"),
    ],
)  # fmt: skip
def test_bad_record_is_named(tmp_path: Path, bad: Any, message: str) -> None:
    path = _write_jsonl(tmp_path, [_record(11), bad])
    with pytest.raises(SteerkitError, match=re.escape(f"{path} {message}")) as info:
        load_problems(path)
    assert "\n" not in str(info.value)


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SteerkitError, match=re.escape(f"MBPP file not found: {tmp_path / 'none.jsonl'}")):
        load_problems(tmp_path / "none.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(_record(1)) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(SteerkitError, match=re.escape(f"{broken} line 2: invalid JSON")):
        load_problems(broken)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(SteerkitError, match=re.escape(f"malformed MBPP file {empty}: no problems")):
        load_problems(empty)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SteerkitError, match=re.escape(f"malformed MBPP file {binary}: not UTF-8")):
        load_problems(binary)


def test_reads_the_sanitized_json_list_format(tmp_path: Path) -> None:
    items: list[dict[str, Any]] = [
        {"source_file": "nb.ipynb", "task_id": 7, "prompt": "Write a function to take a square root.",
         "code": "import math\ndef root(x):\n    return math.sqrt(x)",
         "test_imports": ["import math", "from fractions import Fraction"],
         "test_list": ["assert math.isclose(root(4), 2)", "assert root(9) == 3", "assert root(1) == 1",
                       "assert root(0) == 0"]},
        {"source_file": "nb.ipynb", "task_id": 3, "prompt": "Write a function to negate.",
         "code": "def neg(x):\n    return -x", "test_imports": [], "test_list": ["assert neg(1) == -1"]},
    ]  # fmt: skip
    path = tmp_path / "sanitized-mini.json"
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")
    problems = load_problems(path).problems
    assert [p.task_id for p in problems] == [7, 3]
    assert problems[0].text == "Write a function to take a square root."
    assert problems[0].test_setup_code == "import math\nfrom fractions import Fraction"
    assert problems[0].test_list == tuple(items[0]["test_list"]) and problems[0].entry_point == "root"
    assert problems[1].test_setup_code == ""
    items[1]["task_id"] = 7
    path.write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(SteerkitError, match=re.escape(f"{path} item #1 (task_id 7): duplicate task_id 7")):
        load_problems(path)


@pytest.mark.skipif(not (MBPP_DIR / "mbpp.jsonl").is_file(), reason="real MBPP files not present")
def test_loads_the_real_mbpp_files() -> None:
    full = load_problems(MBPP_DIR / "mbpp.jsonl")
    sanitized = load_problems(MBPP_DIR / "sanitized-mbpp.json")
    assert len(full.problems) == 974 and len(sanitized.problems) == 427
    assert [p.task_id for p in full.problems] == list(range(1, 975))
    raw = json.loads((MBPP_DIR / "sanitized-mbpp.json").read_text(encoding="utf-8"))
    assert [p.text for p in sanitized.problems] == [r["prompt"] for r in raw]
    first = full.by_id()[1]
    assert first.entry_point == "min_cost" and first.signature == "def min_cost(cost, m, n):"
    assert all(p.complexity >= 1 for p in full.problems)
    assert sorted(p.task_id for p in sum(split_problems(sanitized.problems).values(), ())) == sorted(
        r["task_id"] for r in raw
    )


@pytest.mark.skipif(not (MBPP_DIR / "mbpp.jsonl").is_file(), reason="real MBPP files not present")
def test_corpus_shares_no_text_code_or_test_with_mbpp(corpus: ProblemSet) -> None:
    real = load_problems(MBPP_DIR / "mbpp.jsonl").problems
    texts = {p.text.strip().lower() for p in real}
    codes = {p.code.replace("\r", "").strip() for p in real}
    tests = {t.strip() for p in real for t in p.test_list}
    assert [p.task_id for p in corpus.problems if p.text.strip().lower() in texts] == []
    assert [p.task_id for p in corpus.problems if p.code.strip() in codes] == []
    assert [t for p in corpus.problems for t in p.test_list if t.strip() in tests] == []


# --- splits ------------------------------------------------------------------------------------------------------


def _ids(splits: dict[str, tuple[Problem, ...]]) -> dict[str, list[int]]:
    return {name: [p.task_id for p in ps] for name, ps in splits.items()}


def test_splits_are_deterministic_and_seed_dependent(corpus: ProblemSet) -> None:
    first = split_problems(corpus.problems, seed=0)
    assert _ids(first) == _ids(split_problems(corpus.problems, seed=0))
    assert _ids(first) == _ids(split_problems(corpus.problems[::-1], seed=0))  # input order does not matter
    other = split_problems(corpus.problems, seed=1)
    assert {n: set(v) for n, v in _ids(first).items()} != {n: set(v) for n, v in _ids(other).items()}


@pytest.mark.parametrize(("fractions", "seed"), [(DEFAULT_FRACTIONS, 0), ((0.6, 0.2, 0.2), 3), ((0.34, 0.33, 0.33), 7)])
def test_splits_are_disjoint_complete_and_stratified(
    corpus: ProblemSet, fractions: tuple[float, float, float], seed: int
) -> None:
    splits = split_problems(corpus.problems, fractions, seed=seed)
    assert tuple(splits) == SPLITS
    ids = [p.task_id for ps in splits.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {p.task_id for p in corpus.problems}
    strata = dict(zip((p.task_id for p in corpus.problems), complexity_strata(corpus.problems)))
    whole = Counter(strata.values())
    assert len(whole) == 3
    for name, share in zip(SPLITS, fractions):
        per_stratum = Counter(strata[p.task_id] for p in splits[name])
        for stratum, size in whole.items():
            assert abs(per_stratum[stratum] - share * size) < 1, (name, stratum)
            assert per_stratum[stratum] >= 1, (name, stratum)  # every stratum represented in every split


def test_split_prefixes_span_the_strata(corpus: ProblemSet) -> None:
    """A split is interleaved across strata, so its first few problems (a `limit`) are not all from one bin."""
    strata = dict(zip((p.task_id for p in corpus.problems), complexity_strata(corpus.problems)))
    for name, problems in split_problems(corpus.problems).items():
        assert {strata[p.task_id] for p in problems[:6]} == {0, 1, 2}, name


def test_strata_agree_with_pandas_qcut(corpus: ProblemSet) -> None:
    for bins in (1, 2, 3, 5):
        values = [p.complexity for p in corpus.problems]
        expected = pd.qcut(values, bins, labels=False, duplicates="drop") if bins > 1 else [0] * len(values)
        assert list(complexity_strata(corpus.problems, bins)) == list(expected), bins
    flat = [_problem("def f(x):\n    return x\n", task_id=i) for i in range(5)]
    assert complexity_strata(flat, 3) == (0, 0, 0, 0, 0)  # all tied: one bin
    # one stratum of 5: shares 2.5, 0.5, 2.0 -> floors 2, 0, 2; the leftover goes to the first largest remainder
    assert [len(v) for v in split_problems(flat, seed=0).values()] == [3, 0, 2]


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.5, 0.5), "fractions must have 3 values"),
        ((0.5, 0.0, 0.5), "fractions must be positive finite numbers, got (0.5, 0.0, 0.5)"),
        ((0.6, -0.1, 0.5), "fractions must be positive finite numbers"),
        ((0.5, math.nan, 0.5), "fractions must be positive finite numbers"),
        ((0.5, 0.2, 0.2), "fractions must sum to 1, got (0.5, 0.2, 0.2)"),
    ],
)
def test_bad_fractions_are_named(corpus: ProblemSet, fractions: tuple[float, ...], message: str) -> None:
    with pytest.raises(SteerkitError, match=re.escape(message)):
        split_problems(corpus.problems, fractions)


def test_bad_split_inputs_are_named(corpus: ProblemSet) -> None:
    with pytest.raises(SteerkitError, match="seed must be an integer >= 0, got -1"):
        split_problems(corpus.problems, seed=-1)
    with pytest.raises(SteerkitError, match="bins must be an integer >= 1, got 0"):
        split_problems(corpus.problems, bins=0)
    with pytest.raises(SteerkitError, match="needs at least one problem"):
        split_problems([])
    with pytest.raises(SteerkitError, match="duplicate task_id 10001"):
        split_problems([corpus.problems[0], corpus.problems[0]])


def test_split_manifest_lists_ids_and_summarises_complexity(corpus: ProblemSet) -> None:
    splits = split_problems(corpus.problems)
    manifest = json.loads(json.dumps(split_manifest(splits)))
    assert manifest["task_ids"] == _ids(splits)
    for name, problems in splits.items():
        values = [p.complexity for p in problems]
        summary = manifest["complexity"][name]
        assert summary["n"] == len(values) and summary["min"] == min(values) and summary["max"] == max(values)
        assert summary["median"] == statistics.median(values)
        assert summary["mean"] == pytest.approx(statistics.fmean(values), abs=1e-4)
        assert {int(k): v for k, v in summary["histogram"].items()} == Counter(values)
