"""MBPP-format problems: loading, cyclomatic complexity, and complexity-stratified splits.

Design note: one loader reads both public MBPP layouts, converted at the boundary: `mbpp.jsonl` (one object per
line: `task_id`, `text`, `code`, `test_list`, `test_setup_code`, `challenge_test_list`), which is also the format
of steerkit's own `corpus/mbpp_style.jsonl`, and the hand-verified `sanitized-mbpp.json` (one JSON list; `prompt`
instead of `text`, `test_imports` instead of `test_setup_code`). Every record is validated and a bad one raises
a one-line `SteerkitError` naming the file, the line (or list item), the task_id and the field (`corpora.loader`
reads the file). The code is only parsed (`ast`), never run here: running tests is steerkit.execution's job.

Complexity is radon's cyclomatic complexity, *summed* over every function of the solution (helpers, methods
and closures included; radon's class aggregates are skipped so methods are not counted twice), so a solution
that delegates its branching to a helper is not rated simpler than one that inlines it. Straight-line code scores
1 per function; each `if`/`elif`, loop, `except`, boolean operator, comprehension and `if` inside one adds 1.

Splits (`sae`, `hyper`, `validation`, as in the seed's pipeline: select features on one split, tune on another,
report on a third) are stratified by complexity: problems are put into quantile bins of complexity, each bin is
shuffled with a seeded numpy Generator and cut by the fractions (largest-remainder rounding, so every split
gets its share of every bin within one problem).
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from steerkit.corpora.loader import read_records
from steerkit.errors import SteerkitError, optional_import

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "mbpp_style.jsonl"
SPLITS = ("sae", "hyper", "validation")
DEFAULT_FRACTIONS = (0.5, 0.1, 0.4)

_FuncDef = ast.FunctionDef | ast.AsyncFunctionDef


def _parse(code: str) -> ast.Module:
    """`ast.parse`, silencing the SyntaxWarnings old MBPP code raises (invalid escapes such as "\\d")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def _called_function(code: str, first_test: str) -> _FuncDef | None:
    """The first def (breadth-first, source order) whose name is called in `first_test`."""
    for node in ast.walk(_parse(code)):
        if isinstance(node, _FuncDef) and re.search(rf"\b{re.escape(node.name)}\s*\(", first_test):
            return node
    return None


def _function_blocks(blocks: Iterable[Any], function: Any) -> Iterable[Any]:
    """radon's `function` blocks, closures included, class aggregates excluded (their methods are blocks)."""
    for block in blocks:
        if isinstance(block, function):
            yield block
            yield from _function_blocks(block.closures, function)


@dataclass(frozen=True)
class Problem:
    """One MBPP-format problem. The code is data: it is parsed, never executed in this process."""

    task_id: int
    text: str
    code: str
    test_list: tuple[str, ...]
    test_setup_code: str = ""

    @cached_property
    def _entry_node(self) -> _FuncDef:
        node = _called_function(self.code, self.test_list[0])
        if node is None:
            raise SteerkitError(f"task_id {self.task_id}: no function in its code is called by {self.test_list[0]!r}")
        return node

    @property
    def entry_point(self) -> str:
        """Name of the function the tests call (the first def whose name is called in `test_list[0]`)."""
        return self._entry_node.name

    @property
    def signature(self) -> str:
        """The entry point's def line, normalised by `ast.unparse`, e.g. ``def remove_odd(nums):``."""
        node = self._entry_node
        head = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
        returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
        return f"{head} {node.name}({ast.unparse(node.args)}){returns}:"

    @cached_property
    def complexity(self) -> int:
        """radon cyclomatic complexity summed over every function of `code` (see the module note); >= 1."""
        complexity = optional_import("radon.complexity", "mbpp", "MBPP complexity (radon)")
        function = optional_import("radon.visitors", "mbpp", "MBPP complexity (radon)").Function
        blocks = complexity.cc_visit_ast(_parse(self.code))
        return max(1, sum(block.complexity for block in _function_blocks(blocks, function)))

    def to_dict(self) -> dict[str, Any]:
        """The record in mbpp.jsonl layout (what `from_dict` and `load_problems` read back)."""
        return {
            "task_id": self.task_id,
            "text": self.text,
            "code": self.code,
            "test_list": list(self.test_list),
            "test_setup_code": self.test_setup_code,
            "challenge_test_list": [],
        }

    @classmethod
    def from_dict(cls, record: Any) -> Problem:
        """A validated problem from one mbpp.jsonl or sanitized-mbpp.json record."""
        return _problem_from_record(record, "record")


@dataclass(frozen=True)
class ProblemSet:
    """Validated problems of one file and the SHA-256 of its bytes (logged for reproducibility)."""

    name: str
    path: str
    sha256: str
    problems: tuple[Problem, ...]

    def limit(self, n: int) -> tuple[Problem, ...]:
        """The first `n` problems in file order (all when `n` is 0)."""
        if n < 0:
            raise SteerkitError(f"limit must be >= 0, got {n}")
        return self.problems[:n] if n else self.problems

    def by_id(self) -> dict[int, Problem]:
        return {p.task_id: p for p in self.problems}


def _field(record: dict[str, Any], names: tuple[str, ...], where: str) -> Any:
    for name in names:
        if name in record:
            return record[name]
    raise SteerkitError(f"{where}: missing field {names[0]!r}")


def _problem_from_record(record: Any, where: str) -> Problem:
    """Validate one record; `where` (file and line) prefixes every error message."""
    if not isinstance(record, dict):
        raise SteerkitError(f"{where}: expected a JSON object, got {type(record).__name__}")
    task_id = _field(record, ("task_id",), where)
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        raise SteerkitError(f"{where}: task_id must be an integer, got {task_id!r}")
    where = f"{where} (task_id {task_id})"
    text = _field(record, ("text", "prompt"), where)
    code = _field(record, ("code",), where)
    tests = _field(record, ("test_list",), where)
    for name, value in (("text", text), ("code", code)):
        if not isinstance(value, str) or not value.strip():
            raise SteerkitError(f"{where}: {name} must be a non-empty string, got {value!r:.80}")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise SteerkitError(f"{where}: test_list must be a non-empty list of strings, got {tests!r:.80}")
    setup = record.get("test_setup_code", "")
    imports = record.get("test_imports", [])
    if not isinstance(setup, str):
        raise SteerkitError(f"{where}: test_setup_code must be a string, got {setup!r:.80}")
    if not isinstance(imports, list) or not all(isinstance(line, str) for line in imports):
        raise SteerkitError(f"{where}: test_imports must be a list of strings, got {imports!r:.80}")
    try:
        _parse(code)
    except SyntaxError as exc:
        raise SteerkitError(f"{where}: code does not parse: {exc.msg} (code line {exc.lineno})") from exc
    if _called_function(code, tests[0]) is None:
        raise SteerkitError(f"{where}: no function defined in code is called by test_list[0] {tests[0]!r:.80}")
    setup = "\n".join(part for part in (setup, *imports) if part)
    return Problem(task_id, text, code, tuple(tests), setup)


def load_problems(path: str | Path) -> ProblemSet:
    """Load MBPP problems from `mbpp.jsonl`-style JSON lines or a `sanitized-mbpp.json`-style JSON list.

    Raises:
        SteerkitError: missing/empty file, bad JSON, or a bad record (missing field, non-list `test_list`,
            non-integer or duplicate `task_id`, code that does not parse or defines no function the first
            test calls); the message names the file, the line or item, the task_id and the field.
    """
    source, records = read_records(path, "MBPP")
    file = source.file
    problems: list[Problem] = []
    seen: dict[int, str] = {}
    for location, record in records:
        problem = _problem_from_record(record, f"{file} {location}")
        if problem.task_id in seen:
            where = f"{file} {location} (task_id {problem.task_id})"
            raise SteerkitError(f"{where}: duplicate task_id {problem.task_id} (first at {seen[problem.task_id]})")
        seen[problem.task_id] = location
        problems.append(problem)
    if not problems:
        raise SteerkitError(f"malformed MBPP file {file}: no problems")
    return ProblemSet(file.stem, str(file), source.sha256, tuple(problems))


def complexity_strata(problems: Sequence[Problem], bins: int = 3) -> tuple[int, ...]:
    """Quantile bin (0 = simplest) of each problem's complexity; tied quantiles merge, so there may be fewer bins.

    Bins are right-closed intervals between the `bins`-quantiles of the complexities, like `pandas.qcut`.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise SteerkitError(f"bins must be an integer >= 1, got {bins!r}")
    values = np.array([p.complexity for p in problems], dtype=float)
    if values.size == 0:
        return ()
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
    return tuple(int(k) for k in np.searchsorted(edges[1:-1], values, side="left"))


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    values = tuple(fractions)
    if len(values) != len(SPLITS):
        raise SteerkitError(f"fractions must have {len(SPLITS)} values {SPLITS}, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise SteerkitError(f"fractions must be positive finite numbers, got {values!r}")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-9):
        raise SteerkitError(f"fractions must sum to 1, got {values!r} (sum {sum(values)})")
    return values


def _apportion(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of n * fractions: sums to n, each count within 1 of its share.

    Hand-written: numpy/scipy have no apportionment routine, and rounding each share alone can miss the total.
    """
    shares = [n * f for f in fractions]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_problems(
    problems: Sequence[Problem],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    seed: int = 0,
    bins: int = 3,
) -> dict[str, tuple[Problem, ...]]:
    """Disjoint, complete, complexity-stratified splits named by `SPLITS`, deterministic for a seed.

    Each split lists its problems interleaved across strata in proportion (each stratum in its shuffled order),
    so any prefix of a split (a `limit`) spans the complexity range. The result does not depend on the order of
    `problems`.
    """
    shares = _check_fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SteerkitError(f"seed must be an integer >= 0, got {seed!r}")
    ordered = sorted(problems, key=lambda p: p.task_id)
    if not ordered:
        raise SteerkitError("split_problems needs at least one problem, got none")
    duplicates = [tid for tid, n in Counter(p.task_id for p in ordered).items() if n > 1]
    if duplicates:
        raise SteerkitError(f"split_problems got duplicate task_id {duplicates[0]}")
    strata = complexity_strata(ordered, bins)
    keyed: dict[str, list[tuple[float, int, Problem]]] = {name: [] for name in SPLITS}
    for stratum in sorted(set(strata)):
        members = [p for p, s in zip(ordered, strata) if s == stratum]
        order = np.random.default_rng([seed, stratum]).permutation(len(members))
        shuffled = [members[i] for i in order]
        start = 0
        for name, count in zip(SPLITS, _apportion(len(shuffled), shares)):
            for j, problem in enumerate(shuffled[start : start + count]):
                keyed[name].append(((j + 0.5) / count, stratum, problem))
            start += count
    return {name: tuple(p for _, _, p in sorted(keyed[name], key=lambda t: t[:2])) for name in SPLITS}


def split_manifest(splits: Mapping[str, Sequence[Problem]]) -> dict[str, Any]:
    """JSON-ready description of splits: task ids per split and a complexity summary per split.

    Returns:
        ``{"task_ids": {split: [ids]}, "complexity": {split: {"n", "min", "median", "max", "mean",
        "histogram": {"<complexity>": count}}}}``.
    """
    summary: dict[str, Any] = {}
    for name, problems in splits.items():
        values = sorted(p.complexity for p in problems)
        summary[name] = {
            "n": len(values),
            "min": values[0] if values else None,
            "median": float(np.median(values)) if values else None,
            "max": values[-1] if values else None,
            "mean": round(float(np.mean(values)), 4) if values else None,
            "histogram": {str(c): n for c, n in sorted(Counter(values).items())},
        }
    return {"task_ids": {name: [p.task_id for p in ps] for name, ps in splits.items()}, "complexity": summary}
