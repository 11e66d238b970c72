"""Executable primary outcome for Rust completions: did the model write a real test of its own?

Design note: the seed's outcome was a substring (`#[test]` anywhere in the output), so echoing the prompt's doc
test, or a 135M model repeating `#[test]` lines, counted as success. `valid_test` is executable instead: the
completion holds a complete `#[test]` function (top level, inside `mod tests`, anywhere) that calls the function
under test, is not a copy of the prompt's test (same statements after normalising whitespace, comments and
trailing commas, whatever the test's name), compiles against the item's reference implementation and passes.
`test_fails_on_mutant` then asks whether such a test also catches a plausible bug (the item's mutant): a test
that asserts nothing useful passes on both. Parsing lives in `rust_tests` (tree-sitter; see its note).

This module only builds sources and classifies. Compiling and running happen in `steerkit.execution` (the
sandbox, the only place generated code runs), reached through an injected `run(sources) -> {id: result}`
callable, so scoring is tested with a fake runner; `sandbox_runner()` is the real one. All candidate tests go in
one program per implementation; only when that program fails to compile or hangs are the tests run one per
program, so one broken test cannot hide a good one (a second sandbox call, in that case only). Only the
`#[test]` functions are carried over: helpers or `use` lines the model wrote beside them are not, so a test
that needs them does not compile (counted as `compile_error`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, get_args

from steerkit.errors import SteerkitError
from steerkit.metrics.rust_tests import (
    RustTest,
    calls_function,
    extract_tests,
    function_name,
    is_copy_of_prompt_test,
    prompt_tests,
    renamed_test,
)

Reason = Literal[
    "no_test", "copy_of_prompt_test", "does_not_call_function", "compile_error", "run_error", "fails_on_reference", "ok"
]
REASONS: tuple[str, ...] = get_args(Reason)

_COMPILED = {"passed", "failed", "timeout", "killed"}  # statuses reached only after a successful compile
_DETECTED = {"failed", "timeout", "killed"}
_RERUN_ALONE = {"compile_error", "timeout", "killed"}


class RustProblem(Protocol):
    """What scoring needs from a corpus item: the prompt and two complete implementations."""

    @property
    def prompt(self) -> str: ...
    @property
    def reference(self) -> str: ...
    @property
    def mutant(self) -> str: ...


class RustRunResult(Protocol):
    """The part of `steerkit.execution.RustResult` read here: a status and per-test outcomes."""

    @property
    def status(self) -> str: ...
    @property
    def tests(self) -> Mapping[str, str]: ...


Runner = Callable[[dict[str, str]], Mapping[str, RustRunResult]]


@dataclass(frozen=True)
class TestProblem:
    """A concrete `RustProblem`: what the model saw before its test, the reference and the mutant."""

    prompt: str
    reference: str
    mutant: str


@dataclass(frozen=True)
class RustValidity:
    """Executable scoring of one completion (see the module note); `valid_test` is the primary outcome.

    `n_tests_found`: complete `#[test]` functions; `n_own_tests`: those that are not copies of the prompt's
    test; `calls_function`: some own test calls the function under test; `test_compiles` / `test_passes`: some
    such test compiles / passes against the reference; `test_fails_on_mutant`: some test that passes on the
    reference fails on the mutant; `valid_test` equals `test_passes`; `reason`: the first step that failed, or
    `ok`.
    """

    n_tests_found: int
    n_own_tests: int
    calls_function: bool
    test_compiles: bool
    test_passes: bool
    test_fails_on_mutant: bool
    valid_test: bool
    reason: Reason

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise SteerkitError(f"unknown rust validity reason {self.reason!r}; expected one of {REASONS}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view for the per-sample log."""
        return asdict(self)


def _unique_names(tests: list[RustTest]) -> list[str]:
    seen: set[str] = set()
    names = []
    for i, test in enumerate(tests):
        name = test.name if test.name not in seen else f"{test.name}__dup{i}"
        seen.add(name)
        names.append(name)
    return names


def build_test_program(implementation: str, tests: list[RustTest]) -> str:
    """`implementation` followed by `tests` in `#[cfg(test)] mod generated { use super::*; ... }`.

    A test whose name repeats an earlier one is renamed `<name>__dup<i>` (`i`: its index in `tests`). Test
    sources are inserted unindented, so multi-line string literals keep their contents.
    """
    names = _unique_names(tests)
    body = "\n\n".join(renamed_test(t, n).source for t, n in zip(tests, names))
    return f"{implementation.rstrip()}\n\n#[cfg(test)]\nmod generated {{\nuse super::*;\n\n{body}\n}}\n"


def _outcome(result: RustRunResult, name: str) -> str | None:
    """The outcome of test `name`: libtest names it `generated::name` (`... - should panic` for those)."""
    for key, outcome in result.tests.items():
        path = key.removesuffix(" - should panic")
        if path == name or path.endswith(f"::{name}"):
            return outcome
    return None


@dataclass(frozen=True)
class _TestRun:
    compiled: bool
    passes: bool
    detects_mutant: bool
    run_error: bool

    @staticmethod
    def of(reference: RustRunResult, mutant: RustRunResult, name: str) -> _TestRun:
        compiled = reference.status in _COMPILED
        passes = compiled and _outcome(reference, name) == "ok"
        detects = passes and mutant.status in _DETECTED and _outcome(mutant, name) != "ok"
        return _TestRun(compiled, passes, detects, reference.status == "error")


def _first_sources(item: RustProblem, tests: list[RustTest], key: str) -> dict[str, str]:
    """All of one completion's tests in one program per implementation."""
    return {
        f"{key}reference": build_test_program(item.reference, tests),
        f"{key}mutant": build_test_program(item.mutant, tests),
    }


def _alone_sources(item: RustProblem, tests: list[RustTest], key: str) -> dict[str, str]:
    """One program per test and implementation (after the shared program failed to compile or hung)."""
    sources = {}
    for i, test in enumerate(tests):
        sources[f"{key}reference/{i}"] = build_test_program(item.reference, [test])
        sources[f"{key}mutant/{i}"] = build_test_program(item.mutant, [test])
    return sources


def _candidates(item: RustProblem, completion: str) -> tuple[tuple[int, int, bool], list[RustTest], Reason]:
    """(counts, own tests that call the function, the reason when there are none)."""
    tests = extract_tests(completion)
    own = [t for t in tests if not is_copy_of_prompt_test(t.source, item.prompt)]
    name = _function_under_test(item)
    calling = [t for t in own if calls_function(t.source, name)]
    reason: Reason = "no_test" if not tests else "copy_of_prompt_test" if not own else "does_not_call_function"
    return (len(tests), len(own), bool(calling)), calling, reason


def _classify(found: tuple[int, int, bool], runs: list[_TestRun]) -> RustValidity:
    compiles, passes = any(r.compiled for r in runs), any(r.passes for r in runs)
    reason: Reason
    if passes:
        reason = "ok"
    elif compiles:
        reason = "fails_on_reference"
    else:
        reason = "run_error" if all(r.run_error for r in runs) else "compile_error"
    return RustValidity(*found, compiles, passes, any(r.detects_mutant for r in runs), passes, reason)


def _score(pairs: Sequence[tuple[RustProblem, str]], run: Runner | None, keys: Sequence[str]) -> list[RustValidity]:
    """Score every (item, completion) with at most two runner calls in all (key prefixes keep sources apart)."""
    found = [_candidates(item, completion) for item, completion in pairs]
    todo = [i for i, (_, calling, _) in enumerate(found) if calling]
    first: Mapping[str, RustRunResult] = {}
    alone: Mapping[str, RustRunResult] = {}
    if todo:
        run = run or sandbox_runner()
        first = run({k: v for i in todo for k, v in _first_sources(pairs[i][0], found[i][1], keys[i]).items()})
        again = [i for i in todo if first[f"{keys[i]}reference"].status in _RERUN_ALONE and len(found[i][1]) > 1]
        if again:
            alone = run({k: v for i in again for k, v in _alone_sources(pairs[i][0], found[i][1], keys[i]).items()})
    results = []
    for i, (counts, calling, reason) in enumerate(found):
        key = keys[i]
        if not calling:
            results.append(RustValidity(*counts, False, False, False, False, reason))
        elif f"{key}reference/0" in alone:
            runs = [
                _TestRun.of(alone[f"{key}reference/{j}"], alone[f"{key}mutant/{j}"], t.name)
                for j, t in enumerate(calling)
            ]
            results.append(_classify(counts, runs))
        else:
            ref, mut = first[f"{key}reference"], first[f"{key}mutant"]
            results.append(_classify(counts, [_TestRun.of(ref, mut, n) for n in _unique_names(calling)]))
    return results


def _function_under_test(item: RustProblem) -> str:
    """The function whose signature ends the prompt; else the first function of the reference."""
    lines = item.prompt.rstrip().splitlines()
    try:
        return function_name(lines[-1] + "}") if lines else function_name(item.reference)
    except SteerkitError:
        return function_name(item.reference)


def score_valid_test(item: RustProblem, completion: str, run: Runner | None = None) -> RustValidity:
    """Score a completion's own tests by running them against `item.reference` and `item.mutant`.

    Args:
        item: The corpus item (`prompt`, `reference`, `mutant`).
        completion: The model's continuation of `item.prompt`.
        run: `run(sources) -> {id: result}` compiling and running each source under `rustc --test`;
            `sandbox_runner()` when None. Called only when some own test calls the function.

    Returns:
        The counts, flags and the first reason a test fell short (`ok` when `valid_test`).
    """
    return _score([(item, completion)], run, [""])[0]


def score_valid_tests(pairs: Sequence[tuple[RustProblem, str]], run: Runner | None = None) -> list[RustValidity]:
    """`score_valid_test` for many (item, completion) pairs, in order, with the sandbox working on all at once.

    Every program of every completion goes into one `run` call (a second one only for completions whose
    shared program failed to compile or hung), so `sandbox_runner`'s workers compile and run in parallel.
    Source ids are prefixed `<index>/` (`3/reference`, `3/mutant/0`).
    """
    return _score(pairs, run, [f"{i}/" for i in range(len(pairs))])


def sandbox_runner(*, limits: Any = None, workers: int = 2) -> Runner:
    """A `run` for `score_valid_test` that compiles and runs every source in `steerkit.execution`'s sandbox.

    Args:
        limits: `steerkit.execution` limits for each program (its defaults when None).
        workers: Programs compiled and run at once.

    Raises:
        SteerkitError: If this steerkit has no Rust sandbox (`steerkit.execution.run_rust_many`).
    """
    try:
        from steerkit.execution import RustJob, run_rust_many  # type: ignore[attr-defined]
    except ImportError as exc:
        raise SteerkitError(f"steerkit.execution has no Rust sandbox (run_rust_many): {exc}") from exc

    def run(sources: dict[str, str]) -> Mapping[str, RustRunResult]:
        jobs = [RustJob(id=key, source=source) for key, source in sources.items()]
        return {result.id: result for result in run_rust_many(jobs, limits=limits, workers=workers)}

    return run


__all__ = [
    "REASONS",
    "Reason",
    "RustProblem",
    "RustRunResult",
    "RustTest",
    "RustValidity",
    "Runner",
    "TestProblem",
    "build_test_program",
    "calls_function",
    "extract_tests",
    "function_name",
    "is_copy_of_prompt_test",
    "prompt_tests",
    "sandbox_runner",
    "score_valid_test",
    "score_valid_tests",
]
