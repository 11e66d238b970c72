"""How `steer_eval` scores a completion: a built-in by name, or the user's `module:function`.

Design note: a scorer maps a batch of completions (with their prompt rows) to one value per sample, and declares
whether its outcome is binary (bool; exact McNemar) or continuous (float; Wilcoxon) *before* anything is
generated, because the design (test, smallest attainable p) is logged first. A user's function declares it by its
return annotation (`-> bool` / `-> float`) or by `outcome=`; a value of the other type fails the run. Built-ins:

- `python_tests`: the completion's code (its first ```python block, else prompt + completion, for a prompt that
  opens a function) run against the row's `tests` field (assert statements) in the sandbox (`steerkit.execution`);
  True when every test passed.
- `rust_tests`: `valid_test` of `steerkit.metrics.rust_validity`: the completion holds a `#[test]` of its own that
  passes against the row's `reference` (rows need `reference` and `mutant`), compiled and run in the sandbox.
- `refusal`: the rule judge of `steerkit.refusal.judges` says `refusal` (`unclear` counts as not refusing).
- `regex:PATTERN`: `re.search(PATTERN, completion)` finds a match.
- `length`: generated tokens (float).
- `kl`: KL(identity || steered) of the next-token distribution at the last prompt token (float; the baseline's
  value is KL of the identity arm with itself, exactly 0). Computed from logits by the evaluation, not from text.
"""

from __future__ import annotations

import importlib
import math
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from steerkit.core.generation import Generation
from steerkit.corpora.loader import PromptRow
from steerkit.errors import SteerkitError
from steerkit.execution import run_many
from steerkit.metrics.rust_validity import sandbox_runner, score_valid_tests
from steerkit.refusal.judges import judge

Outcome = Literal["binary", "continuous"]
BUILTINS = ("python_tests", "rust_tests", "refusal", "regex:PATTERN", "length", "kl")
BatchScore = Callable[[Sequence[Generation], Sequence[PromptRow]], list[Any]]
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


@dataclass(frozen=True)
class Scorer:
    """A named scorer: its outcome kind, the row fields it needs, and the batch function (None for `kl`)."""

    name: str
    outcome: Outcome
    needs: tuple[str, ...] = ()
    batch: BatchScore | None = None

    def score(self, gens: Sequence[Generation], rows: Sequence[PromptRow]) -> list[bool | float]:
        """One checked value per completion (bool for binary, finite float for continuous)."""
        if self.batch is None:
            raise SteerkitError(f"scorer {self.name!r} is computed from logits, not from completions")
        values = self.batch(gens, rows)
        if len(values) != len(gens):
            raise SteerkitError(f"scorer {self.name!r} returned {len(values)} values for {len(gens)} completions")
        return [self._check(v, row.id) for v, row in zip(values, rows)]

    def _check(self, value: Any, sample: str) -> bool | float:
        is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too
        if self.outcome == "binary":
            if not is_bool:
                raise SteerkitError(f"scorer {self.name!r} is binary but returned {value!r} for sample {sample!r}")
            return bool(value)
        if is_bool or not isinstance(value, int | float) or not math.isfinite(float(value)):
            raise SteerkitError(f"scorer {self.name!r} is continuous but returned {value!r} for sample {sample!r}")
        return float(value)


def _python_code(gen: Generation, row: PromptRow) -> str:
    fenced = _FENCE.search(gen.text)
    return fenced.group(1) if fenced else row.text + gen.text


def _tests(row: PromptRow) -> list[str]:
    tests = row.fields["tests"]
    lines = tests.splitlines() if isinstance(tests, str) else list(tests)
    return [t for t in lines if str(t).strip()]


def _python_tests(workers: int) -> BatchScore:
    def score(gens: Sequence[Generation], rows: Sequence[PromptRow]) -> list[Any]:
        results = run_many([(_python_code(g, r), _tests(r)) for g, r in zip(gens, rows)], workers=workers)
        return [res.status == "passed" for res in results]

    return score


@dataclass(frozen=True)
class _RustItem:
    prompt: str
    reference: str
    mutant: str


def _rust_tests(workers: int) -> BatchScore:
    def score(gens: Sequence[Generation], rows: Sequence[PromptRow]) -> list[Any]:
        items = [
            (_RustItem(r.text, str(r.fields["reference"]), str(r.fields["mutant"])), g.text) for g, r in zip(gens, rows)
        ]
        return [v.valid_test for v in score_valid_tests(items, sandbox_runner(workers=workers))]

    return score


def _refusal(gens: Sequence[Generation], rows: Sequence[PromptRow]) -> list[Any]:
    return [judge(g.text, r.text).refusal == "refusal" for g, r in zip(gens, rows)]


def _regex(pattern: str) -> BatchScore:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise SteerkitError(f"scorer regex:{pattern} is not a valid regular expression: {exc}") from exc
    return lambda gens, rows: [compiled.search(g.text) is not None for g in gens]


def _declared(fn: Callable[..., Any], name: str, outcome: str) -> Outcome:
    if outcome in ("binary", "continuous"):
        return outcome  # type: ignore[return-value]
    if outcome != "auto":
        raise SteerkitError(f"outcome must be auto, binary or continuous, got {outcome!r}")
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall through to the message below
        hint = None
    if hint is bool:
        return "binary"
    if hint in (float, int):
        return "continuous"
    raise SteerkitError(f"scorer {name!r}: annotate its return as bool or float, or pass outcome=binary|continuous")


def _user_function(spec: str, outcome: str) -> Scorer:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr.isidentifier():
        raise SteerkitError(f"scorer must be a built-in ({', '.join(BUILTINS)}) or module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SteerkitError(f"scorer {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SteerkitError(f"scorer {spec!r}: module {module_name!r} has no function {attr!r}")
    return _wrap(fn, spec, _declared(fn, spec, outcome))


def _wrap(fn: Callable[..., Any], name: str, outcome: Outcome) -> Scorer:
    def score(gens: Sequence[Generation], rows: Sequence[PromptRow]) -> list[Any]:
        return [fn(g.text, {"id": r.id, "prompt": r.text, **r.fields}) for g, r in zip(gens, rows)]

    return Scorer(name, outcome, (), score)


def resolve_scorer(spec: str | Callable[..., Any], *, outcome: str = "auto", workers: int = 2) -> Scorer:
    """The scorer named by `spec` (a built-in, `regex:PATTERN` or `module:function`), or wrapping a callable
    `fn(completion: str, prompt: dict) -> bool | float` (`prompt` holds `id`, `prompt` and the extra fields)."""
    if outcome not in ("auto", "binary", "continuous"):
        raise SteerkitError(f"outcome must be auto, binary or continuous, got {outcome!r}")
    scorer = _resolve(spec, outcome, workers)
    if outcome != "auto" and scorer.outcome != outcome:
        raise SteerkitError(f"scorer {scorer.name!r} is {scorer.outcome}, but outcome={outcome!r} was given")
    return scorer


def _resolve(spec: str | Callable[..., Any], outcome: str, workers: int) -> Scorer:
    if callable(spec):
        name = getattr(spec, "__qualname__", "scorer")
        return _wrap(spec, name, _declared(spec, name, outcome))
    if spec == "python_tests":
        return Scorer(spec, "binary", ("tests",), _python_tests(workers))
    if spec == "rust_tests":
        return Scorer(spec, "binary", ("reference", "mutant"), _rust_tests(workers))
    if spec == "refusal":
        return Scorer(
            spec,
            "binary",
            (),
            lambda gens, rows: [judge(g.text, r.text).refusal == "refusal" for g, r in zip(gens, rows)],
        )
    if spec.startswith("regex:"):
        return Scorer(spec, "binary", (), _regex(spec.removeprefix("regex:")))
    if spec == "length":
        return Scorer(spec, "continuous", (), lambda gens, rows: [float(g.n_tokens) for g in gens])
    if spec == "kl":
        return Scorer(spec, "continuous")
    return _user_function(spec, outcome)


__all__ = ["BUILTINS", "Outcome", "Scorer", "resolve_scorer"]
