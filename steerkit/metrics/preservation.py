"""Does a Rust completion keep writing tests, and are they its own?

Design note: the seed experiment counted a completion as "having a test" if any
of four marker strings occurred in it (a plain substring check), and that
criterion is kept verbatim so results stay comparable. It cannot tell a model
that writes a new test from one that merely echoes the doc-comment test in the
prompt, so completions are also compared line by line with the prompt's own
test lines after normalising comment prefixes and whitespace. The comparison is
line-based on purpose: it is simple to audit, at the cost of calling a test
"new" when the model reflows it (e.g. puts a whole test on one line).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from steerkit.errors import SteerkitError

TEST_MARKERS: tuple[str, ...] = ("#[test]", "assert_eq!", "assert!", "fn test_")

# Leading indentation plus one line-comment prefix (`//!`, `///` or `//`) and the space after it.
_COMMENT_PREFIX = re.compile(r"^\s*(?://[/!]?)?\s*")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Preservation:
    """Test-writing behaviour of one completion.

    ``has_test`` is the seed's substring criterion and equals
    ``copied_test or new_test``.
    """

    has_test: bool
    new_test: bool
    copied_test: bool
    markers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (markers as a list) for logging."""
        out = asdict(self)
        out["markers"] = list(self.markers)
        return out


def has_test_marker(text: str) -> bool:
    """The seed's criterion: whether any of :data:`TEST_MARKERS` occurs in ``text``.

    Args:
        text: A completion (or any Rust source).

    Returns:
        True if some marker is a substring of ``text``.
    """
    return any(marker in text for marker in TEST_MARKERS)


def _normalise(line: str) -> str:
    """Drop indentation and a comment prefix, collapse internal whitespace."""
    return _WHITESPACE.sub(" ", _COMMENT_PREFIX.sub("", line, count=1)).strip()


def _test_lines(text: str) -> set[str]:
    """Normalised lines of ``text`` that contain a test marker."""
    return {_normalise(line) for line in text.splitlines() if has_test_marker(line)}


def rust_test_preservation(prompt: str, completion: str) -> Preservation:
    """Classify a completion's tests as absent, copied from the prompt, or new.

    Args:
        prompt: The prompt, typically a doc comment containing a test followed by
            the function signature.
        completion: The model's continuation only (not including the prompt).

    Returns:
        ``has_test`` (seed criterion), ``copied_test`` (some completion test line
        equals a prompt test line), ``new_test`` (some completion test line is not
        among the prompt's), and the markers found in the completion.

    Raises:
        SteerkitError: If prompt or completion is not a string.
    """
    for name, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str):
            raise SteerkitError(f"{name} must be a str, got {type(value).__name__}")
    prompt_lines = _test_lines(prompt)
    completion_lines = _test_lines(completion)
    return Preservation(
        has_test=has_test_marker(completion),
        new_test=bool(completion_lines - prompt_lines),
        copied_test=bool(completion_lines & prompt_lines),
        markers=tuple(m for m in TEST_MARKERS if m in completion),
    )
