"""Find, compare and rename the `#[test]` functions of Rust source: the parsing half of `rust_validity`.

Design note: parsing uses tree-sitter's Rust grammar (`tree-sitter` + `tree-sitter-rust`, binary wheels that
install from PyPI and need no network) rather than regexes or a hand-written brace matcher. Braces inside
strings, raw strings, char literals, lifetimes and nested block comments are then the grammar's problem, and its
error recovery keeps the complete items of a completion that is cut off mid-function while the unfinished test
is left without its closing brace (and so is not a test). A completion is parsed behind an opening `fn ... {`
line, as the model saw it, so the function body it finishes closes normally and what follows parses as items;
a `#[test]` marker that error recovery still left without its function is parsed again from the marker on.
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


def _leaves(node: Any) -> Iterator[Any]:
    """Leaf tokens under `node` in order, comments dropped, each string or char literal one token."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type in _COMMENTS or current.is_missing:
            continue
        if current.type in _LITERALS or current.child_count == 0:
            yield current
        else:
            stack.extend(reversed(current.children))


def _tokens(node: Any) -> list[str]:
    return [leaf.text.decode("utf-8", "replace") for leaf in _leaves(node)]


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


def _closed_tests(root: Any) -> Iterator[tuple[Any, list[Any]]]:
    """(function, its attributes) for every closed function under `root` that has a `#[test]` attribute."""
    for node in _walk(root):
        if node.type == "function_item" and _is_closed(node):
            attributes = _attributes(node)
            if any("".join(a.text.decode("utf-8", "replace").split()) == "#[test]" for a in attributes):
                yield node, attributes


def _test_markers(root: Any) -> list[int]:
    """Start bytes of every `#[test]` token sequence, wherever the parser put it (even inside an error)."""
    leaves = list(_leaves(root))
    texts = [leaf.text for leaf in leaves]
    return [leaves[i].start_byte for i in range(len(leaves) - 3) if texts[i : i + 4] == [b"#", b"[", b"test", b"]"]]


def _as_test(source: bytes, start: int, fn: Any, base: int = 0) -> tuple[int, RustTest]:
    line_start = source.rfind(b"\n", 0, start) + 1
    if not source[line_start:start].strip():  # keep the indentation, so every line is indented alike
        start = line_start
    name = fn.child_by_field_name("name").text.decode("utf-8", "replace")
    return start, RustTest(name, source[start : base + fn.end_byte].decode("utf-8", "replace"))


def _tests_in(source: bytes) -> list[RustTest]:
    """Closed test functions of `source`, in order.

    A `#[test]` that the parse of the whole text left without a function (after unparsable text, error recovery
    can read `fn t()` as a call) is parsed again on its own, from the marker up to the next one, so what comes
    before a test cannot hide it.
    """
    root = _parse(source)
    found: list[tuple[int, RustTest]] = []
    covered: set[int] = set()
    for fn, attributes in _closed_tests(root):
        found.append(_as_test(source, attributes[0].start_byte, fn))
        covered.update(a.start_byte for a in attributes)
    markers = _test_markers(root)
    for start, end in zip(markers, [*markers[1:], len(source)]):
        if start in covered:
            continue
        first = next(_closed_tests(_parse(source[start:end])), None)
        if first is not None and first[1][0].start_byte == 0:
            found.append(_as_test(source, start, first[0], base=start))
    return [test for _, test in sorted(found, key=lambda pair: pair[0])]


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
