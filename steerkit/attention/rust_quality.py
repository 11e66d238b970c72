"""Does a generated Rust test body exercise the function above it plausibly? Pure text checks, no execution.

Design note: the prompt ends inside `fn test_<name>() {`, so the completion is the test body. Only the body is
scored (the text up to the first line that closes the test function), so a model that writes more functions
after it gets no credit for them. Four flags: the body calls the function (`\\bname\\s*\\(`); the first call has
as many arguments as the signature has parameters; every argument of that call is a literal of the parameter's
type (integer literal for integer types, float literal for f32/f64, string literal for &str/String, true/false
for bool, `vec![..]`/`[..]`/`&[..]`/`&vec![..]` for Vec and slices; anything else, e.g. a variable, cannot be
checked and counts as implausible); and it asserts (`assert_eq!`, `assert_ne!` or `assert!`). `quality` is all
four. The checks read text only: nothing generated is compiled or run here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from steerkit.errors import SteerkitError

_INT_TYPES = {f"{s}{n}" for s in "iu" for n in ("8", "16", "32", "64", "128", "size")}
_INT = re.compile(r"^-?\s*\d[\d_]*(?:" + "|".join(sorted(_INT_TYPES)) + r")?$")
_FLOAT = re.compile(r"^-?\s*(?:\d[\d_]*\.\d*(?:[eE][+-]?\d+)?|\d[\d_]*[eE][+-]?\d+|\d[\d_]*(?:\.\d*)?f(?:32|64))$")
_STRING = re.compile(
    r'^(?:"(?:[^"\\]|\\.)*"(?:\.to_string\(\)|\.to_owned\(\)|\.into\(\))?|String::from\("(?:[^"\\]|\\.)*"\))$'
)
_SEQ = re.compile(r"^&?\s*(?:vec!\s*)?\[.*\]$", re.S)
_SIGNATURE = re.compile(r"^\s*(?:pub\s+)?fn\s+(\w+)\s*(?:<[^>]*>)?\s*\(([^)]*)\)", re.M)


@dataclass(frozen=True)
class RustTestQuality:
    """The four flags, their conjunction, and what was parsed (for the per-sample log)."""

    calls_function: bool
    arg_count_ok: bool
    arg_types_ok: bool
    has_assert: bool
    quality: bool
    first_call_args: list[str] | None
    body: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_signature(code: str) -> tuple[str, list[tuple[str, str]]]:
    """Name and (parameter, type) list of the first `fn` in `code`."""
    found = _SIGNATURE.search(code)
    if found is None:
        raise SteerkitError(f"no Rust function signature in {code[:60]!r}")
    params = [p.strip() for p in split_top_level(found.group(2), angle=True) if p.strip()]
    pairs = []
    for p in params:
        name, _, typ = p.partition(":")
        pairs.append((name.strip().removeprefix("mut ").strip(), typ.strip()))
    return found.group(1), pairs


def split_top_level(text: str, angle: bool = False) -> list[str]:
    """Split at commas outside brackets, parentheses, braces, string literals (and `<>` when `angle`)."""
    opening, closing = ("([{<", ")]}>") if angle else ("([{", ")]}")
    parts: list[str] = []
    current: list[str] = []
    depth, in_str, escape = 0, False, False
    for ch in text:
        if in_str:
            escape = (ch == "\\") and not escape
            in_str = not (ch == '"' and not escape)
        elif ch == '"':
            in_str = True
        elif ch in opening:
            depth += 1
        elif ch in closing:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def first_call_args(text: str, name: str) -> list[str] | None:
    """Arguments of the first call `name(...)` in `text` (None: no call, or the call never closes)."""
    found = re.search(rf"\b{re.escape(name)}\s*\(", text)
    if found is None:
        return None
    depth, start = 1, found.end()
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            inner = text[start:i].strip()
            return [a.strip() for a in split_top_level(inner)] if inner else []
    return None


def literal_fits(arg: str, typ: str) -> bool:
    """Whether `arg` is a literal of Rust type `typ` (see the module note for the accepted forms)."""
    base = typ.replace(" ", "")
    if base in _INT_TYPES:
        return bool(_INT.match(arg))
    if base in ("f32", "f64"):
        return bool(_FLOAT.match(arg))
    if base in ("&str", "String", "&String"):
        return bool(_STRING.match(arg))
    if base == "bool":
        return arg in ("true", "false")
    if base.startswith(("Vec<", "&[", "&Vec<", "&mut[")):
        return bool(_SEQ.match(arg))
    return False


def completion_body(completion: str) -> str:
    """The completion up to the first line that closes the test function (`}` at column 0)."""
    cut = re.search(r"^\}", completion, re.M)
    return completion[: cut.start()] if cut else completion


def score_rust_test(completion: str, function_code: str) -> RustTestQuality:
    """Score a generated test body against the function signature in `function_code`."""
    name, params = parse_signature(function_code)
    body = completion_body(completion)
    args = first_call_args(body, name)
    calls = bool(re.search(rf"\b{re.escape(name)}\s*\(", body))
    count_ok = args is not None and len(args) == len(params)
    types_ok = count_ok and all(literal_fits(a, t) for a, (_, t) in zip(args or [], params))
    asserts = bool(re.search(r"\bassert(?:_eq|_ne)?!\s*\(", body))
    return RustTestQuality(calls, count_ok, types_ok, asserts, calls and count_ok and types_ok and asserts, args, body)


__all__ = [
    "RustTestQuality",
    "first_call_args",
    "literal_fits",
    "parse_signature",
    "score_rust_test",
    "split_top_level",
]
