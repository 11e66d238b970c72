"""Find, compare and rename the `#[test]` functions of Rust source: the parsing half of `rust_validity`.

Design note: parsing uses tree-sitter's Rust grammar (`tree-sitter` + `tree-sitter-rust`, binary wheels that
install from PyPI and need no network) rather than regexes or a hand-written brace matcher. Braces inside
strings, raw strings, char literals, lifetimes and nested block comments are then the grammar's problem, and its
error recovery keeps the complete items of a completion that is cut off mid-function while the unfinished test
is left without its closing brace (and so is not a test). A completion is parsed behind an opening `fn ... {`
line, as the model saw it, so the function body it finishes closes normally and what follows parses as items.
Inside macro arguments (`assert_eq!(f(1), 2)`) the grammar gives only token trees, so calls and statements are
read from leaf tokens, with comments dropped and each string or char literal kept as one token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from steerkit.errors import SteerkitError

_OPEN_BODY = "fn __steerkit_open_body() {\n"  # what the prompt's signature line leaves open
_COMMENTS = {"line_comment", "block_comment"}
_LITERALS = {"string_literal", "raw_string_literal", "char_literal"}
_CLOSERS = {")", "]", "}"}


@dataclass(frozen=True)
class RustTest:
    """One complete `#[test]` function: its name and its source (attributes, signature, body)."""

    name: str
    source: str


# tree-sitter is imported where it is used, so importing steerkit does not need it; nodes are typed `Any`
# because its stubs make every child and field optional where the grammar guarantees them.
@cache
def _language() -> Any:
    import tree_sitter
    import tree_sitter_rust

    return tree_sitter.Language(tree_sitter_rust.language())


def _parse(source: bytes) -> Any:
    import tree_sitter

    return tree_sitter.Parser(_language()).parse(source).root_node


def _walk(node: Any) -> Iterator[Any]:
    """Every node below `node` in document order (iterative: completions can nest deeply)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def _tokens(node: Any) -> list[str]:
    """Leaf token texts under `node`, comments dropped, each string or char literal one token."""
    out: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type in _COMMENTS or current.is_missing:
            continue
        if current.type in _LITERALS or current.child_count == 0:
            out.append(current.text.decode("utf-8", "replace"))
        else:
            stack.extend(reversed(current.children))
    return out


def _is_closed(fn: Any) -> bool:
    body = fn.child_by_field_name("body")
    last = body.children[-1] if body is not None and body.child_count else None
    return last is not None and last.type == "}" and not last.is_missing


def _attributes(fn: Any) -> list[Any]:
    """The attribute items directly before `fn` (comments between them allowed), in document order."""
    found, node = [], fn.prev_sibling
    while node is not None and (node.type == "attribute_item" or node.type in _COMMENTS):
        if node.type == "attribute_item":
            found.append(node)
        node = node.prev_sibling
    return found[::-1]


def _tests_in(source: bytes) -> list[RustTest]:
    tests = []
    for node in _walk(_parse(source)):
        if node.type != "function_item" or not _is_closed(node):
            continue
        attributes = _attributes(node)
        if not any("".join(a.text.decode("utf-8", "replace").split()) == "#[test]" for a in attributes):
            continue
        start = attributes[0].start_byte
        line_start = source.rfind(b"\n", 0, start) + 1
        if not source[line_start:start].strip():  # keep the indentation, so every line is indented alike
            start = line_start
        name = node.child_by_field_name("name").text.decode("utf-8", "replace")
        tests.append(RustTest(name, source[start : node.end_byte].decode("utf-8", "replace")))
    return tests


def extract_tests(completion: str) -> list[RustTest]:
    """The complete `#[test]` functions of a completion, in order (a test cut off before its `}` is left out).

    Args:
        completion: The model's continuation of a prompt that ends with an open `fn ... {` line.

    Returns:
        One `RustTest` per test function found, with its attributes (`#[should_panic]`, ...) in its source.
    """
    return _tests_in((_OPEN_BODY + completion).encode("utf-8"))


def prompt_tests(prompt: str) -> list[RustTest]:
    """The test(s) written in a prompt's doc comment, with the `///` (or `//!`) prefixes removed."""
    lines = []
    for line in prompt.splitlines():
        text = line.strip()
        if text.startswith(("///", "//!")):
            body = text[3:]
            lines.append(body[1:] if body.startswith(" ") else body)
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("#[")), len(lines))
    return _tests_in("\n".join(lines[start:]).encode("utf-8"))


def calls_function(test_src: str, fn_name: str) -> bool:
    """Whether `test_src` calls `fn_name(...)` (or `fn_name::<T>(...)`) outside comments and strings.

    Method calls (`x.fn_name(...)`) and a definition `fn fn_name(` do not count.
    """
    tokens = _tokens(_parse(test_src.encode("utf-8")))
    for i, token in enumerate(tokens):
        if token != fn_name or (i > 0 and tokens[i - 1] in (".", "fn")):
            continue
        if tokens[i + 1 : i + 2] == ["("] or tokens[i + 1 : i + 3] == ["::", "<"]:
            return True
    return False


def _normalise(node: Any) -> str:
    tokens = _tokens(node)
    if tokens and tokens[-1] == ";":
        tokens.pop()
    kept = [t for i, t in enumerate(tokens) if not (t == "," and tokens[i + 1 : i + 2] and tokens[i + 1] in _CLOSERS)]
    return " ".join(kept)


def _statements(test_src: str) -> set[str]:
    """Normalised top-level statements of the body of the first function in `test_src`."""
    fn = next((n for n in _walk(_parse(test_src.encode("utf-8"))) if n.type == "function_item"), None)
    body = fn.child_by_field_name("body") if fn is not None else None
    if body is None:
        return set()
    kept = [c for c in body.children if c.type not in _COMMENTS and c.type not in ("{", "}", "empty_statement")]
    return {s for s in (_normalise(c) for c in kept) if s}


def is_copy_of_prompt_test(test_src: str, prompt: str) -> bool:
    """Whether every statement of the test is one of the prompt's doc-test statements.

    Statements are compared as token sequences (whitespace, line breaks, comments and trailing commas do not
    matter), and the test's name and attributes are ignored, so a reflowed or renamed copy, or a copy of part
    of the prompt's test, is still a copy. A test with no statement is not a copy.
    """
    own = _statements(test_src)
    reference = set().union(*(_statements(t.source) for t in prompt_tests(prompt)))
    return bool(own) and own <= reference


def renamed_test(test: RustTest, name: str) -> RustTest:
    """`test` with its function renamed to `name` (the source is otherwise unchanged)."""
    if name == test.name:
        return test
    raw = test.source.encode("utf-8")
    fn = next(n for n in _walk(_parse(raw)) if n.type == "function_item")
    node = fn.child_by_field_name("name")
    return RustTest(name, (raw[: node.start_byte] + name.encode() + raw[node.end_byte :]).decode("utf-8"))


def function_name(implementation: str) -> str:
    """The name of the first function defined in `implementation` (the function under test)."""
    for node in _walk(_parse(implementation.encode("utf-8"))):
        if node.type == "function_item":
            return node.child_by_field_name("name").text.decode("utf-8")
    raise SteerkitError(f"no Rust function in {implementation[:60]!r}")


__all__ = [
    "RustTest",
    "calls_function",
    "extract_tests",
    "function_name",
    "is_copy_of_prompt_test",
    "prompt_tests",
    "renamed_test",
]
