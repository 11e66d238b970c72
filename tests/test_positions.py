"""Tests for steerkit.core.positions (and the edge rules built on it): selectors against offsets, decoded text and
closed-form byte positions; `RowTable.mask` against a plain loop; every corpus prompt under every edge rule."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable

import pytest
import torch

from steerkit.attention.edge_rules import DOC_TEST, EDGE_RULES, SIGNATURE, TEST_MARKER, attention_scale, edge_rule
from steerkit.core.generation import Prompt, encode_prompts
from steerkit.core.models import LoadedModel
from steerkit.core.positions import (
    ALL,
    GENERATED,
    PROMPT,
    EncodedPrompt,
    Explicit,
    FromPattern,
    Pattern,
    PerPrompt,
    Range,
    RowPositions,
    RowTable,
    Span,
    encode,
    parse_selector,
)
from steerkit.corpora.prompts import PromptCorpus
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionEdit, steer

GCD = (
    "/// Returns the greatest common divisor of `a` and `b`.\n"
    "///\n"
    "/// #[test]\n"
    "/// fn test_gcd() {\n"
    "///     assert_eq!(gcd(48, 18), 6);\n"
    "/// }\n"
    "fn gcd(a: u64, b: u64) -> u64 {\n"
)

MODELS = ["tiny", pytest.param("embedded", marks=pytest.mark.embedded)]


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest, tiny: Callable[[str], LoadedModel]) -> LoadedModel:
    """The tiny byte-level model, or the embedded SmolLM2 (its BPE tokenizer) where installed."""
    if request.param == "tiny":
        return tiny("llama")
    return request.getfixturevalue("embedded")


def _decode(model: LoadedModel, prompt: EncodedPrompt, indices: Iterable[int]) -> str:
    return model.tokenizer.decode([prompt.ids[i] for i in sorted(indices)])


def _overlapping(prompt: EncodedPrompt, start: int, end: int) -> set[int]:
    """Tokens whose offsets overlap the character range, computed here from the offsets."""
    return {i for i, (a, b) in enumerate(prompt.offsets) if max(a, start) < min(b, end)}


# --- selectors on a Rust doc-test prompt ----------------------------------------------------------------------


def test_pattern_covers_every_token_of_the_marker(model: LoadedModel) -> None:
    prompt = encode(model.tokenizer, "gcd", GCD)
    selected = Pattern(TEST_MARKER).resolve(prompt).indices
    start = GCD.index("#[test]")
    assert set(selected) == _overlapping(prompt, start, start + len("#[test]"))
    assert sorted(selected) == list(range(min(selected), max(selected) + 1))  # contiguous
    assert "#[test]" in _decode(model, prompt, selected)
    # Minimal: dropping the first or the last selected token loses part of the marker.
    assert "#[test]" not in _decode(model, prompt, sorted(selected)[1:])
    assert "#[test]" not in _decode(model, prompt, sorted(selected)[:-1])


def test_pattern_on_byte_tokens_is_the_character_range(tiny: Callable[[str], LoadedModel]) -> None:
    prompt = encode(tiny("llama").tokenizer, "gcd", GCD)
    assert len(prompt) == len(GCD.encode())  # one token per byte, no special tokens added
    start = GCD.index("#[test]")
    assert Pattern(TEST_MARKER).resolve(prompt).indices == frozenset(range(start, start + 7))
    # Every "fn" (two in the test line and signature) with occurrence selection.
    fns = [i for i in range(len(GCD)) if GCD.startswith("fn", i)]
    assert Pattern("fn").resolve(prompt).indices == frozenset(i + k for i in fns for k in (0, 1))
    assert Pattern("fn", occurrence="first").resolve(prompt).indices == {fns[0], fns[0] + 1}
    assert Pattern("fn", occurrence=-1).resolve(prompt).indices == {fns[-1], fns[-1] + 1}
    # A capture group selects only its characters.
    group = Pattern(r"fn (gcd)\(", group=1).resolve(prompt).indices
    name = GCD.index("fn gcd(") + 3
    assert group == frozenset(range(name, name + 3))


def test_from_pattern_start_and_open_end(model: LoadedModel) -> None:
    prompt = encode(model.tokenizer, "gcd", GCD)
    row = FromPattern(SIGNATURE, occurrence="last").resolve(prompt)
    assert row.stop is None and row.last == float("inf") and not row.indices
    sig = GCD.index("\nfn gcd") + 1
    assert row.start == min(_overlapping(prompt, sig, sig + 2))
    assert _decode(model, prompt, range(row.start, len(prompt))).lstrip().startswith("fn gcd(")
    closed = FromPattern(SIGNATURE, occurrence="last", include_generated=False).resolve(prompt)
    assert (closed.start, closed.stop) == (row.start, len(prompt))


def test_span_selects_tokens_overlapping_characters(tiny: Callable[[str], LoadedModel]) -> None:
    prompt = encode(tiny("llama").tokenizer, "gcd", GCD)
    assert Span(3, 10).resolve(prompt).indices == frozenset(range(3, 10))
    with pytest.raises(SteerkitError, match=r"span \[5, 5000\) outside prompt 'gcd'"):
        Span(5, 5000).resolve(prompt)


def test_explicit_negative_indices_count_from_the_end(model: LoadedModel) -> None:
    prompt = encode(model.tokenizer, "gcd", GCD)
    n = len(prompt)
    assert Explicit((0, -1, -2, 3)).resolve(prompt).indices == {0, n - 1, n - 2, 3}
    assert Explicit((-n,)).resolve(prompt).indices == {0}
    for bad in (n, -n - 1):
        with pytest.raises(SteerkitError, match=rf"position {bad} out of range for prompt 'gcd' of {n} tokens"):
            Explicit((1, bad)).resolve(prompt)
    with pytest.raises(SteerkitError, match="at least one index"):
        Explicit(())


def test_missing_pattern_names_prompt_and_pattern(tiny: Callable[[str], LoadedModel]) -> None:
    prompt = encode(tiny("llama").tokenizer, "arith_gcd", GCD)
    missing = r"#\[should_panic\]"
    with pytest.raises(SteerkitError, match=re.escape(f"pattern {missing!r} not found in prompt 'arith_gcd'")):
        Pattern(missing).resolve(prompt)
    with pytest.raises(SteerkitError, match="'nope'.*'arith_gcd'"):
        FromPattern("nope").resolve(prompt)
    with pytest.raises(SteerkitError, match="occurs 1 times in prompt 'arith_gcd', occurrence 3"):
        Pattern(TEST_MARKER, occurrence=3).resolve(prompt)
    with pytest.raises(SteerkitError, match=r"invalid pattern '\(unclosed'"):
        Pattern("(unclosed")


def test_ranges_and_per_prompt(tiny: Callable[[str], LoadedModel]) -> None:
    tok = tiny("llama").tokenizer
    a, b = encode(tok, "a", "abcdef"), encode(tok, "b", "xy")
    assert ALL.resolve(a) == RowPositions(start=0)
    assert PROMPT.resolve(a) == RowPositions(start=0, stop=6)
    assert GENERATED.resolve(a) == RowPositions(start=6) and not GENERATED.resolve(a).is_empty
    per = PerPrompt.of({"a": Explicit((1,)), "b": ALL})
    assert per.resolve(a).indices == {1} and per.resolve(b) == RowPositions(start=0)
    with pytest.raises(SteerkitError, match="no positions given for prompt 'c'"):
        per.resolve(encode(tok, "c", "z"))
    with pytest.raises(SteerkitError, match="'everything'"):
        Range("everything")  # type: ignore[arg-type]
    with pytest.raises(SteerkitError, match="stop=3 given without start"):
        RowPositions(stop=3)


def test_parse_selector() -> None:
    assert parse_selector("all") == ALL and parse_selector("generated") == GENERATED
    assert parse_selector("3,4,-1") == Explicit((3, 4, -1))
    assert parse_selector(r"pattern:#\[test\]") == Pattern(r"#\[test\]")
    assert parse_selector("from:fn ") == FromPattern("fn ")
    with pytest.raises(SteerkitError, match="unknown positions 'somewhere'"):
        parse_selector("somewhere")


# --- RowTable.mask against the RowPositions semantics -----------------------------------------------------------


def _selected(row: RowPositions, pos: int) -> bool:
    if pos < 0:
        return False
    in_range = row.start is not None and pos >= row.start and (row.stop is None or pos < row.stop)
    return pos in row.indices or in_range


def test_row_table_mask_matches_a_python_loop() -> None:
    rng = random.Random(0)
    for _ in range(30):
        rows = []
        for _ in range(rng.randint(1, 5)):
            indices = frozenset(rng.sample(range(40), rng.randint(0, 6)))
            kind = rng.choice(["none", "closed", "open"])
            start = None if kind == "none" else rng.randint(0, 40)
            stop = start + rng.randint(0, 10) if kind == "closed" and start is not None else None
            rows.append(RowPositions(indices=indices, start=start, stop=stop))
        positions = torch.tensor([[rng.randint(-6, 60) for _ in range(25)] for _ in rows])
        mask = RowTable.from_rows(rows).mask(positions)
        expected = [[_selected(row, int(p)) for p in line] for row, line in zip(rows, positions, strict=True)]
        assert mask.tolist() == expected


def test_row_table_padding_is_never_selected() -> None:
    table = RowTable.from_rows([RowPositions(start=0), RowPositions(indices=frozenset({0, 1}))])
    positions = torch.arange(-3, 3)[None, :].expand(2, -1)
    assert table.mask(positions).tolist() == [[False] * 3 + [True] * 3, [False] * 3 + [True, True, False]]


# --- chat template ---------------------------------------------------------------------------------------------------


def test_chat_positions_map_onto_the_user_text(model: LoadedModel) -> None:
    (plain,) = encode_prompts(model, [Prompt("gcd", GCD)], chat=False)
    (chat,) = encode_prompts(model, [Prompt("gcd", GCD)], chat=True)
    user = chat.text.index(GCD)
    assert chat.text == model.format_prompt(GCD, chat=True) and len(chat) > len(plain)
    marker = Pattern(TEST_MARKER).resolve(chat).indices
    start = user + GCD.index("#[test]")
    assert set(marker) == _overlapping(chat, start, start + 7)
    assert "#[test]" in _decode(model, chat, marker)
    assert len(marker) == len(Pattern(TEST_MARKER).resolve(plain).indices)
    sig = FromPattern(SIGNATURE, occurrence="last", include_generated=False).resolve(chat)
    assert sig.start is not None and sig.stop == len(chat)
    assert chat.offsets[sig.start][0] >= user
    assert _decode(model, chat, range(sig.start, sig.stop)).lstrip().startswith("fn gcd(")
    # The template's trailer (end of turn, assistant header) follows the user text.
    assert _decode(model, chat, range(sig.start, len(chat))).endswith(chat.text[user + len(GCD) :])


# --- edge rules over the whole corpus ------------------------------------------------------------------------------


@pytest.mark.parametrize("chat", [False, True])
def test_every_corpus_prompt_resolves_every_edge_rule(model: LoadedModel, n50: PromptCorpus, chat: bool) -> None:
    prompts = encode_prompts(model, [p.as_prompt() for p in n50.prompts], chat=chat)
    assert len(prompts) == 50
    for name in EDGE_RULES:
        if name == "reference":
            continue
        sources, targets = edge_rule(name)
        for prompt in prompts:
            src, tgt = sources.resolve(prompt), targets.resolve(prompt)
            assert not src.is_empty and not tgt.is_empty, (name, prompt.id)
            assert src.first >= tgt.last, (name, prompt.id)
            target_text = _decode(model, prompt, tgt.indices)
            assert "#[test]" in target_text, (name, prompt.id)
            if "doctest" in name:
                assert target_text.rstrip().endswith("/// }"), (name, prompt.id)
        # Binding all 50 at once (what generate does per batch) passes the causal check.
        with steer(model, AttentionEdit(0, sources, targets, "scale", 2.0), prompts=prompts) as state:
            assert set(state.tables) == {(0, "sources"), (0, "targets")}


def test_reference_rule_is_refused_as_causally_masked(model: LoadedModel, n50: PromptCorpus) -> None:
    sources, targets = edge_rule("reference")
    prompts = encode_prompts(model, [p.as_prompt() for p in n50.prompts], chat=False)
    for prompt in prompts:
        with pytest.raises(SteerkitError, match="causally masked") as info:
            with steer(model, AttentionEdit(0, sources, targets, "scale", 3.0), prompts=[prompt]):
                pass
        assert "causally masked" in str(info.value) and repr(prompt.id) in str(info.value)


def test_doc_test_pattern_spans_marker_to_closing_brace(tiny: Callable[[str], LoadedModel]) -> None:
    prompt = encode(tiny("llama").tokenizer, "gcd", GCD)
    start, end = GCD.index("/// #[test]"), GCD.index("/// }\n") + len("/// }")
    assert Pattern(DOC_TEST).resolve(prompt).indices == frozenset(range(start, end))


def test_edge_rule_helpers() -> None:
    edit = attention_scale("signature_to_marker", (1, 2), 2.5, heads=(0,))
    assert edit == AttentionEdit((1, 2), *edge_rule("signature_to_marker"), "scale", 2.5, (0,))
    with pytest.raises(SteerkitError, match="unknown edge rule 'sideways'"):
        edge_rule("sideways")
