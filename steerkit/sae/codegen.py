"""Code-generation prompts for MBPP problems and code extraction from completions.

Design note: a prompt is the problem text, ONE of its test asserts (the other tests stay hidden, as in MBPP's
own protocol) and the entry point's signature, so the model knows the name and arguments the tests call.
The instruct model answers a chat-templated prompt with a fenced code block followed by prose; without the
template the embedded 135M model mostly writes prose (measured, see the README section), so experiments
default to `chat=True`.

`extract_code` turns a completion into a program, without running anything (parsing with `ast` only):

1. the first fenced block that defines a function (else the first fenced block; an unclosed fence runs to the
   end, which is what a stop at the closing fence leaves), or the raw completion when there is no fence;
2. raw text that does not parse starts at its first top-level `def`/`class`/`import`/`from`/decorator line;
   if the entry point is not defined and the code continues the function body (indented first line) or has
   no `def` at all, the signature is prepended (the body indented when needed);
3. trailing prose is cut: the longest prefix of lines that parses is kept;
4. the model's own top-level test code is dropped: `assert` statements, bare expressions (e.g. `print(...)`)
   and `if __name__ == "__main__":` blocks, which would otherwise make a correct function fail on the model's
   own wrong expectations, or print. Definitions, imports and assignments are kept.

The result carries how it was obtained (`method`) and whether it parses (`syntax_ok`), which the syntax-error
rate of the steering metrics is computed from.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from steerkit.core.batching import batch_order, encode_prompts
from steerkit.core.generation import Generation, GenerationConfig, Prompt, generate
from steerkit.core.models import LoadedModel
from steerkit.corpora.mbpp import Problem
from steerkit.errors import SteerkitError
from steerkit.execution import ExecutionJob, ExecutionLimits, run_many

ExtractionMethod = Literal["fenced", "raw", "empty"]
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n?(.*?)(?:\n?```|\Z)", re.DOTALL)
_DEF = re.compile(r"^\s*(?:async\s+)?def\s+\w+\s*\(", re.MULTILINE)
_CODE_START = re.compile(r"^(?:async\s+def|def|class|import|from|@)\b")
PROMPT_TEMPLATE = (
    "{text}\nYour code should pass this test:\n{test}\n\nWrite the function, starting with:\n{signature}\n"
)


def build_prompt(problem: Problem, *, test_index: int = 0) -> str:
    """The prompt for one problem: text, one test assert (`test_list[test_index]`) and the signature.

    Raises:
        SteerkitError: if `test_index` is not a valid index into the problem's tests.
    """
    if not 0 <= test_index < len(problem.test_list):
        raise SteerkitError(f"test_index {test_index} out of range for task {problem.task_id} tests")
    return PROMPT_TEMPLATE.format(
        text=problem.text.strip(), test=problem.test_list[test_index].strip(), signature=problem.signature
    )


@dataclass(frozen=True)
class ExtractedCode:
    """A program extracted from a completion.

    Attributes:
        code: the program text ("" when nothing code-like was found).
        method: `fenced` (from a ``` block), `raw` (the completion itself) or `empty`.
        signature_added: the signature was prepended (the model continued the body / wrote no def).
        lines_cut: trailing lines dropped because they did not parse (prose).
        statements_dropped: top-level test statements removed (asserts, bare expressions, `__main__` blocks).
        syntax_ok: `code` parses with `ast.parse` (an empty program counts as not ok).
    """

    code: str
    method: ExtractionMethod
    signature_added: bool
    lines_cut: int
    statements_dropped: int
    syntax_ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source with NUL bytes
        return False
    return True


def _candidate(completion: str) -> tuple[str, ExtractionMethod]:
    """The code-bearing text of a completion: a fenced block (preferring one with a def) or the raw text."""
    blocks = [m.group(2) for m in _FENCE.finditer(completion)]
    if blocks:
        with_def = [b for b in blocks if _DEF.search(b)]
        return (with_def or blocks)[0], "fenced"
    return completion, "raw"


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _add_signature(code: str, signature: str, name: str) -> tuple[str, bool]:
    """Prepend the signature when the entry point is missing and the text is a body (or has no def at all)."""
    lines = [line for line in code.splitlines() if line.strip()]
    if not lines or _defines(code, name):
        return code, False
    if lines[0][:1] in (" ", "\t"):
        return f"{signature}\n{code}", True
    if _DEF.search(code) is None:
        return f"{signature}\n{textwrap.indent(code, '    ')}", True
    return code, False


def _skip_leading_prose(code: str) -> str:
    """Start raw text at its first line of top-level code when it does not parse as it is (leading prose)."""
    if _parses(code):
        return code
    lines = code.splitlines()
    for i, line in enumerate(lines):
        if _CODE_START.match(line):
            return "\n".join(lines[i:])
    return code


def _longest_parsing_prefix(code: str) -> tuple[str, int]:
    """Drop trailing lines until the rest parses; returns (code, lines dropped). Unparseable -> (code, 0)."""
    lines = code.rstrip().splitlines()
    for end in range(len(lines), 0, -1):
        head = "\n".join(lines[:end]).rstrip()
        if head and _parses(head):
            return head + "\n", len(lines) - end
    return code, 0


def _is_test_statement(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assert | ast.Expr):
        return not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))  # keep docstrings
    if isinstance(node, ast.If):
        return "__name__" in ast.unparse(node.test)
    return False


def _drop_test_code(code: str) -> tuple[str, int]:
    """Remove top-level asserts, bare expressions and `__main__` blocks by source line ranges."""
    tree = ast.parse(code)
    drop = [n for n in tree.body if _is_test_statement(n)]
    if not drop:
        return code, 0
    lines = code.splitlines()
    removed: set[int] = set()
    for node in drop:
        end = node.end_lineno or node.lineno
        removed.update(range(node.lineno - 1, end))
    kept = "\n".join(line for i, line in enumerate(lines) if i not in removed).rstrip()
    return (kept + "\n" if kept else ""), len(drop)


def extract_code(completion: str, problem: Problem) -> ExtractedCode:
    """Extract the program from a model completion for `problem` (steps in the module note)."""
    text, method = _candidate(completion)
    if not text.strip():
        return ExtractedCode("", "empty", False, 0, 0, False)
    code = text.strip("\n")
    if method == "raw":
        code = _skip_leading_prose(code)
    code, added = _add_signature(code, problem.signature, problem.entry_point)
    code, cut = _longest_parsing_prefix(code)
    dropped = 0
    if _parses(code):
        code, dropped = _drop_test_code(code)
    return ExtractedCode(code, method, added, cut, dropped, bool(code.strip()) and _parses(code))


class _Log(Protocol):
    def append(self, record: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...


def solve_problems(
    loaded: LoadedModel,
    problems: Sequence[Problem],
    *,
    config: GenerationConfig,
    interventions: Sequence[Any] = (),
    limits: ExecutionLimits | None = None,
    workers: int = 2,
    extra: Mapping[int, Mapping[str, Any]] | None = None,
    on_batch: _Log | None = None,
    progress: bool = True,
    companions: Mapping[int, str] | None = None,
    generations: Sequence[Generation] | None = None,
) -> list[dict[str, Any]]:
    """Generate a completion per problem (under `interventions`), extract its code and run ALL its tests.
    `generations` (one per problem, by prompt id = task id; e.g. from a `generate_arms` pass): already generated
    under `interventions`, so only run, in the batches `generate` would have made.

    Programs run in `steerkit.execution`'s sandbox (subprocesses), a batch at a time as generation finishes it;
    each record is appended to `on_batch` and the log flushed per batch, so a killed run keeps what it did.
    `companions` (task_id -> code, e.g. the baseline's program) run in the SAME `run_many` call as the batch's
    generated programs, so both sides of a steered-vs-baseline pair meet the same machine load.

    Returns:
        One record per problem, in input order: task_id, prompt, completion, token_ids, n_tokens, stop_reason,
        code, extraction fields, status, error_kind, tests_passed, tests_total, passed (+ `extra[task_id]`;
        with `companions`: rerun_status, rerun_error_kind, rerun_passed of the companion program).
    """
    by_id = {str(p.task_id): p for p in problems}
    missing = [p.task_id for p in problems if companions is not None and p.task_id not in companions]
    if missing:
        raise SteerkitError(f"no companion (baseline) program for task {missing[0]} ({len(missing)} missing)")
    prompts = [Prompt(str(p.task_id), build_prompt(p)) for p in problems]
    pending: list[tuple[Generation, ExtractedCode]] = []
    records: dict[str, dict[str, Any]] = {}

    def run_pending() -> None:
        jobs = [_job(x.code, by_id[g.prompt_id]) for g, x in pending]
        paired = [by_id[g.prompt_id] for g, _ in pending] if companions is not None else []
        jobs += [_job(companions[p.task_id], p) for p in paired if companions is not None]
        results = run_many(jobs, workers=workers, limits=limits or ExecutionLimits())
        for i, (gen, code) in enumerate(pending):
            record = _record(
                by_id[gen.prompt_id], gen, code, results[i], (extra or {}).get(by_id[gen.prompt_id].task_id)
            )
            if paired:
                rerun = results[len(pending) + i]
                record.update(rerun_status=rerun.status, rerun_error_kind=rerun.error_kind or "")
                record["rerun_passed"] = rerun.passed
            records[gen.prompt_id] = record
            if on_batch is not None:
                on_batch.append(record)
        pending.clear()
        if on_batch is not None:
            on_batch.flush()

    def on_result(gen: Generation) -> None:
        pending.append((gen, extract_code(gen.text, by_id[gen.prompt_id])))
        if len(pending) >= config.batch_size or len(records) + len(pending) == len(prompts):
            run_pending()

    if generations is None:
        generate(loaded, prompts, interventions=interventions, config=config, on_result=on_result, progress=progress)
    else:
        done = {g.prompt_id: g for g in generations}
        for i in batch_order(encode_prompts(loaded, prompts, config.chat)):
            on_result(done[prompts[i].id])
    if pending:
        run_pending()
    return [records[p.id] for p in prompts]


def _job(code: str, problem: Problem) -> ExecutionJob:
    """The sandbox job: the problem's setup code, the extracted code, then ALL the problem's tests."""
    return ExecutionJob(code=code, tests=problem.test_list, setup=problem.test_setup_code)


def _record(
    problem: Problem, gen: Generation, code: ExtractedCode, result: Any, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    res = result.to_dict()
    return {
        "task_id": problem.task_id,
        **dict(extra or {}),
        "prompt": build_prompt(problem),
        "completion": gen.text,
        "token_ids": list(gen.token_ids),
        "n_tokens": gen.n_tokens,
        "stop_reason": gen.stop_reason,
        "code": code.code,
        "extraction": code.method,
        "signature_added": code.signature_added,
        "syntax_ok": code.syntax_ok,
        "status": res["status"],
        "error_kind": res.get("error_kind") or "",
        "tests_passed": res.get("tests_passed", 0),
        "tests_total": res.get("tests_total", len(problem.test_list)),
        "passed": res["status"] == "passed",
    }
