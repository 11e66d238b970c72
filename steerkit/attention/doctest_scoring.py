"""Scores of a generated doctest (seed 002, phase 3): does it call the function, correctly, and does it pass?

Design note: the model continues a prompt that ends with `    >>>` inside a docstring. The generated docstring
text is `"    >>>" + completion`, cut at the closing triple quote; `doctest.DocTestParser` extracts its examples
(what `python -m doctest` would run). Every score except `passes` is pure (parsing only; nothing generated is
executed here). `passes` runs the generated examples against the item's reference implementation in the
sandbox (`steerkit.execution.run_tests`): the program is the reference, and the one test statement runs the
examples with doctest's own runner and output checker (default option flags) and asserts that all were
attempted and none failed; so "passes" means "this doctest, as written, passes against the reference".

Definitions (per completion; an "example" is a doctest example of the generated docstring):

- `valid_doctest`: at least one example, and the first example's source parses (`ast.parse`, exec mode).
- `calls_function`: the first example's source, stripped, starts with `<function_name>(`.
- `arity_matches`: the first example is one expression, a call of `<function_name>` with exactly as many
  arguments (positional + keyword, no `*`/`**` unpacking) as the function has parameters.
- `uses_param_names`: some example's code uses a parameter name as an identifier: a variable (`ast.Name`,
  e.g. `>>> a = 3` then `>>> f(a, 2)`) or a keyword argument (`f(a=3, ...)`). Prose is not searched: the
  corpus has one-letter parameters (`a`, `n`, `x`) that occur as English words.
- `passes`: `valid_doctest`, some example's code calls `<function_name>` (so an example like `>>> x = 5`
  alone cannot pass vacuously), and every example passes against the reference in the sandbox.
"""

from __future__ import annotations

import ast
import doctest
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from steerkit.corpora.doctests import DoctestPrompt
from steerkit.errors import SteerkitError
from steerkit.execution import ExecutionJob, ExecutionLimits, ExecutionResult, run_many

SCORES = ("valid_doctest", "calls_function", "arity_matches", "uses_param_names", "passes")
STATIC_SCORES = SCORES[:-1]
_QUOTES = ('"""', "'''")


def generated_docstring(prompt: str, completion: str) -> str:
    """The docstring text from the prompt's last line (`    >>>`) through the completion, cut at a closing quote."""
    text = prompt.rsplit("\n", 1)[-1] + completion
    cuts = [text.index(q) for q in _QUOTES if q in text]
    return text[: min(cuts)] if cuts else text


def extract_examples(prompt: str, completion: str) -> list[doctest.Example]:
    """Doctest examples of the generated docstring; [] when doctest cannot parse it (e.g. bad indentation)."""
    try:
        return doctest.DocTestParser().get_examples(generated_docstring(prompt, completion))
    except ValueError:
        return []


def _parses(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _arity_matches(tree: ast.Module | None, item: DoctestPrompt) -> bool:
    if tree is None or len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return False
    call = tree.body[0].value
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != item.function_name:
        return False
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return False
    return len(call.args) + len(call.keywords) == len(item.parameters)


def _calls_anywhere(examples: Sequence[doctest.Example], item: DoctestPrompt) -> bool:
    for example in examples:
        tree = _parses(example.source)
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == item.function_name:
                return True
    return False


def _uses_param_names(examples: Sequence[doctest.Example], item: DoctestPrompt) -> bool:
    params = set(item.parameters)
    for example in examples:
        tree = _parses(example.source)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in params:
                return True
            if isinstance(node, ast.keyword) and node.arg in params:
                return True
    return False


@dataclass(frozen=True)
class DoctestScore:
    """Static scores of one completion (see the module docstring) and its first example."""

    valid_doctest: bool
    calls_function: bool
    arity_matches: bool
    uses_param_names: bool
    runnable: bool
    n_examples: int
    example_source: str | None
    example_want: str | None
    examples: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_static(item: DoctestPrompt, completion: str) -> DoctestScore:
    """Every score but `passes`, from parsing alone."""
    examples = extract_examples(item.prompt, completion)
    first = examples[0] if examples else None
    tree = _parses(first.source) if first is not None else None
    return DoctestScore(
        valid_doctest=tree is not None,
        calls_function=first is not None and first.source.strip().startswith(f"{item.function_name}("),
        arity_matches=_arity_matches(tree, item),
        uses_param_names=_uses_param_names(examples, item),
        runnable=tree is not None and _calls_anywhere(examples, item),
        n_examples=len(examples),
        example_source=first.source if first is not None else None,
        example_want=first.want if first is not None else None,
        examples=tuple((e.source, e.want) for e in examples),
    )


def doctest_test_statement(examples: Sequence[tuple[str, str]]) -> str:
    """The sandbox test: run the (source, want) examples with doctest's runner in the program's namespace and
    assert that every one was attempted and none failed."""
    return (
        "import doctest as _doctest\n"
        f"_examples = [_doctest.Example(s, w) for s, w in {list(examples)!r}]\n"
        "_test = _doctest.DocTest(_examples, dict(globals()), 'generated', None, 0, None)\n"
        "_result = _doctest.DocTestRunner(verbose=False).run(_test, out=lambda text: None)\n"
        f"assert _result.attempted == {len(examples)} and _result.failed == 0, 'a generated doctest example failed'\n"
    )


def doctest_job(item: DoctestPrompt, score: DoctestScore, limits: ExecutionLimits | None = None) -> ExecutionJob:
    """The sandbox job checking a runnable completion's examples against the reference."""
    if not score.runnable:
        raise SteerkitError(f"completion for {item.id!r} has no runnable doctest (valid and calling the function)")
    return ExecutionJob(item.reference, (doctest_test_statement(score.examples),), "", limits)


def run_passes(
    items: Sequence[DoctestPrompt],
    scores: Sequence[DoctestScore],
    *,
    workers: int = 2,
    limits: ExecutionLimits | None = None,
) -> list[tuple[bool, ExecutionResult | None]]:
    """`passes` per completion (False when not `runnable`, no run), with the sandbox result where one ran."""
    todo = [i for i, s in enumerate(scores) if s.runnable]
    results = run_many([doctest_job(items[i], scores[i], limits) for i in todo], workers=workers)
    out: list[tuple[bool, ExecutionResult | None]] = [(False, None)] * len(scores)
    for i, result in zip(todo, results):
        out[i] = (result.status == "passed", result)
    return out


__all__ = [
    "SCORES",
    "STATIC_SCORES",
    "DoctestScore",
    "doctest_job",
    "doctest_test_statement",
    "extract_examples",
    "generated_docstring",
    "run_passes",
    "score_static",
]
