"""The doctest-prompt corpus (corpus/doctest_prompts.json): Python signatures whose docstring ends in `>>>`.

Design note: each item holds the prompt the model continues (signature, one-line description, a blank line and
an open `>>>`), the function's name and parameters, and a reference implementation the generated doctest is
run against (in the sandbox, never here). The loader checks at the boundary that the reference parses and
defines exactly that function and those parameters, and that the prompt starts with the reference's signature
line, so the target token spans (`target_spans`) are found by parsing the signature rather than by regex.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerkit.core.generation import Prompt
from steerkit.corpora.loader import read_items
from steerkit.errors import SteerkitError

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "corpus" / "doctest_prompts.json"
_FIELDS = ("id", "task", "prompt", "function_name", "reference")


@dataclass(frozen=True)
class DoctestPrompt:
    """One item: `prompt` ends with `>>>`; `reference` is the full implementation source."""

    id: str
    task: str
    prompt: str
    function_name: str
    parameters: tuple[str, ...]
    reference: str

    def as_prompt(self) -> Prompt:
        return Prompt(self.id, self.prompt)

    def target_spans(self) -> dict[str, list[tuple[int, int]]]:
        """Character spans in `prompt` of the function name and of each parameter name in the signature."""
        line = self.prompt.split("\n", 1)[0]
        fn = ast.parse(line + "\n    pass\n").body[0]
        assert isinstance(fn, ast.FunctionDef)  # checked by the loader
        start = line.index(self.function_name, len("def "))
        params = [(a.col_offset, a.end_col_offset or a.col_offset) for a in fn.args.args]
        return {"function_name": [(start, start + len(self.function_name))], "parameters": params}


@dataclass(frozen=True)
class DoctestCorpus:
    """A validated doctest corpus and the SHA-256 of its file."""

    name: str
    path: str
    sha256: str
    prompts: tuple[DoctestPrompt, ...]

    def limit(self, n: int) -> tuple[DoctestPrompt, ...]:
        """The first `n` items (all when `n` is 0)."""
        if n < 0:
            raise SteerkitError(f"limit must be >= 0, got {n}")
        return self.prompts[:n] if n else self.prompts


def _parse_item(raw: Any, i: int) -> DoctestPrompt:
    ident = raw.get("id", f"#{i}") if isinstance(raw, dict) else f"#{i}"
    for key in _FIELDS:
        if not isinstance(raw, dict) or not isinstance(raw.get(key), str) or not raw[key]:
            raise SteerkitError(f"doctest item {ident!r}: field {key!r} is missing or not a non-empty string")
    params = raw.get("parameters")
    if not isinstance(params, list) or not all(isinstance(p, str) and p for p in params):
        raise SteerkitError(f"doctest item {ident!r}: field 'parameters' must be a list of names, got {params!r}")
    item = DoctestPrompt(raw["id"], raw["task"], raw["prompt"], raw["function_name"], tuple(params), raw["reference"])
    _check_item(item)
    return item


def _check_item(item: DoctestPrompt) -> None:
    try:
        tree = ast.parse(item.reference)
    except SyntaxError as exc:
        raise SteerkitError(f"doctest item {item.id!r}: reference does not parse: {exc.msg}") from exc
    fn = tree.body[0] if tree.body else None
    if not isinstance(fn, ast.FunctionDef) or fn.name != item.function_name:
        raise SteerkitError(f"doctest item {item.id!r}: reference does not define {item.function_name!r} first")
    if tuple(a.arg for a in fn.args.args) != item.parameters:
        raise SteerkitError(f"doctest item {item.id!r}: parameters {list(item.parameters)} differ from the reference")
    if item.prompt.split("\n", 1)[0] != item.reference.split("\n", 1)[0]:
        raise SteerkitError(f"doctest item {item.id!r}: prompt does not start with the reference's signature line")
    if not item.prompt.endswith(">>>"):
        raise SteerkitError(f"doctest item {item.id!r}: prompt must end with '>>>'")


def load_doctest_prompts(path: str | Path = DEFAULT_PATH) -> DoctestCorpus:
    """Load and validate `{"name", "prompts": [...]}` (see corpus/README.md).

    Raises:
        SteerkitError: naming the file, or the item and field of the first problem.
    """
    source, data, items = read_items(path, "prompts", "doctest corpus", _parse_item, label="doctest item")
    return DoctestCorpus(source.name(data), str(source.file), source.sha256, items)


__all__ = ["DEFAULT_PATH", "DoctestCorpus", "DoctestPrompt", "load_doctest_prompts"]
