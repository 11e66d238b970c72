"""Named attention edge rules for Rust prompts with a doc-comment test (seed 000's format).

Design note: the reference experiment steered edges from the `#[test]` marker to the later `fn` token. A query
cannot attend to a later key, so that weight is 0 and scaling it does nothing; rule `reference` reproduces it
and `AttentionEdit` refuses it with a causal-mask error. The default, `signature_to_doctest`, is the meaningful
reading of "make the code attend more to the test": every position from the function signature on — the rest
of the prompt and every generated token — attending to the tokens of the doc-comment test.
"""

from __future__ import annotations

from steerkit.core.positions import GENERATED, FromPattern, Pattern, Selector
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionEdit

SIGNATURE = r"^(?:pub )?fn \w+"  # the real signature: doc-comment lines start with ///
DOC_TEST = r"^///\s*#\[test\][\s\S]*?^///\s*\}\s*$"  # from `/// #[test]` to the test's closing `/// }`
TEST_MARKER = r"#\[test\]"

EDGE_RULES: dict[str, tuple[Selector, Selector, str]] = {
    "signature_to_doctest": (
        FromPattern(SIGNATURE, occurrence="last"),
        Pattern(DOC_TEST),
        "every position from the fn signature on (generated tokens included) -> doc-comment test tokens",
    ),
    "generated_to_doctest": (
        GENERATED,
        Pattern(DOC_TEST),
        "generated tokens only -> doc-comment test tokens",
    ),
    "signature_to_marker": (
        FromPattern(SIGNATURE, occurrence="last"),
        Pattern(TEST_MARKER),
        "every position from the fn signature on -> the #[test] marker tokens",
    ),
    "reference": (
        Pattern(TEST_MARKER),
        Pattern(SIGNATURE, occurrence="last"),
        "the reference implementation's edges: #[test] marker -> later fn token (causally masked: refused)",
    ),
}


def edge_rule(name: str) -> tuple[Selector, Selector]:
    """(sources, targets) of a named rule."""
    if name not in EDGE_RULES:
        raise SteerkitError(f"unknown edge rule {name!r} (choose from {', '.join(EDGE_RULES)})")
    sources, targets, _ = EDGE_RULES[name]
    return sources, targets


def reads_continuation(name: str) -> bool:
    """Whether a named rule's edited queries include generated tokens (so what it applies depends on the
    continuation); False for an unknown name."""
    if name not in EDGE_RULES:
        return False
    sources, _ = edge_rule(name)
    return sources == GENERATED or (isinstance(sources, FromPattern) and sources.include_generated)


def attention_scale(
    rule: str, layer: int | tuple[int, ...], scale: float, heads: tuple[int, ...] | None = None
) -> AttentionEdit:
    """`AttentionEdit(op="scale")` with a named rule's edges."""
    sources, targets = edge_rule(rule)
    return AttentionEdit(layer, sources, targets, "scale", scale, heads)
