"""The attention-pairs corpus: Python doctests and Rust `#[test]`s for the same functions, plus baselines.

Design note: each item is a complete function; `test` items carry a test marker (`>>>` inside the Python
docstring, `#[test]` after the Rust function) and `baseline` items are the same functions with no test. The
marker and the targets are regexes resolved with `steerkit.core.positions.Pattern` on the text the model sees, so
the corpus holds no token indices and works with any tokenizer. Targets are anchored to the definition: the
function-name regex has a fixed-width lookbehind on `def `/`fn `, and the parameter regex a lookahead to the end
of the signature line, so every match lies in the signature, before the marker (a query at the marker can
attend to it: the edge is causally valid). `marker_target_distance` is stored for the embedded SmolLM2
tokenizer and recomputed for the model in use with `token_distance`. The loader validates the file at the
boundary and names the item and field of the first problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from steerkit.core.generation import Prompt
from steerkit.core.positions import EncodedPrompt, Pattern, encode
from steerkit.corpora.loader import read_items
from steerkit.errors import SteerkitError

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "corpus" / "attention_pairs.json"
LANGUAGES = ("python", "rust")
KINDS = ("test", "baseline")
MARKERS = {"python": ">>>", "rust": r"#\[test\]"}
TARGETS = ("function_name", "parameters")
_SIGNATURE = {"python": re.compile(r"^def \w+\(.*\):$", re.M), "rust": re.compile(r"^(pub )?fn \w+.*\{$", re.M)}


@dataclass(frozen=True)
class AttentionItem:
    """One function of the corpus.

    Attributes:
        id: unique id, `py_<task>` / `rs_<task>` (tests) or `py_<task>_base` / `rs_<task>_base` (baselines).
        task: the function's task key, shared by its Python and Rust versions.
        language: `python` or `rust`.
        kind: `test` (has a doctest / `#[test]`) or `baseline` (the same function without one).
        code: the source text.
        marker: regex of the test marker (`>>>`, `#\\[test\\]`), None for baselines.
        targets: target name (`function_name`, `parameters`) -> regex; every match lies in the signature.
        marker_target_distance: tokens from the last function-name token to the first marker token with the
            embedded SmolLM2 tokenizer (None for baselines).
        reference: optional complete implementation (the function, no test), for executable test scoring.
        mutant: optional wrong version of `reference` that the item's own test fails.
    """

    id: str
    task: str
    language: Literal["python", "rust"]
    kind: Literal["test", "baseline"]
    code: str
    marker: str | None
    targets: dict[str, str]
    marker_target_distance: int | None
    reference: str | None = None
    mutant: str | None = None

    def __hash__(self) -> int:
        return hash(self.id)

    def marker_selector(self) -> Pattern:
        """Every token of every marker match (`occurrence="all"`)."""
        if self.marker is None:
            raise SteerkitError(f"item {self.id!r} is a baseline and has no test marker")
        return Pattern(self.marker)

    def target_selector(self, which: str = "function_name") -> Pattern:
        """Tokens of a target in the definition: the first function-name match, or every parameter name.

        The parameter regex is anchored to the signature line (checked by the loader), so taking all of its
        matches selects every parameter name and nothing outside the signature.
        """
        if which not in self.targets:
            raise SteerkitError(f"unknown target {which!r} for item {self.id!r} (choose from {sorted(self.targets)})")
        return Pattern(self.targets[which], occurrence="first" if which == "function_name" else "all")

    def as_prompt(self) -> Prompt:
        return Prompt(self.id, self.code)

    def function_name(self) -> str:
        """The defined function's name (from the signature)."""
        return _signature_match(self).group(0).split("(")[0].split()[-1].split("<")[0]


@dataclass(frozen=True)
class AttentionCorpus:
    """A validated attention corpus and the SHA-256 of its file."""

    name: str
    path: str
    sha256: str
    items: tuple[AttentionItem, ...]

    def select(self, language: str | None = None, kind: str | None = None) -> tuple[AttentionItem, ...]:
        """Items of one language and/or kind, in file order."""
        if language is not None and language not in LANGUAGES:
            raise SteerkitError(f"unknown language {language!r} (choose from {', '.join(LANGUAGES)})")
        if kind is not None and kind not in KINDS:
            raise SteerkitError(f"unknown kind {kind!r} (choose from {', '.join(KINDS)})")
        return tuple(i for i in self.items if language in (None, i.language) and kind in (None, i.kind))

    def pairs(self) -> list[tuple[AttentionItem, AttentionItem]]:
        """(python, rust) test items with the same task, in the order of the Python items."""
        rust = {i.task: i for i in self.select("rust", "test")}
        return [(py, rust[py.task]) for py in self.select("python", "test") if py.task in rust]


def _signature_match(item: AttentionItem) -> re.Match[str]:
    found = _SIGNATURE[item.language].search(item.code)
    if found is None:
        raise SteerkitError(f"item {item.id!r}: field 'code' has no {item.language} function signature line")
    return found


def _field(raw: Any, key: str, i: int, kinds: type | tuple[type, ...], allow_none: bool = False) -> Any:
    value = raw.get(key) if isinstance(raw, dict) else None
    ident = raw.get("id", f"#{i}") if isinstance(raw, dict) else f"#{i}"
    if value is None and allow_none:
        return None
    if not isinstance(value, kinds) or isinstance(value, bool) or value == "":
        raise SteerkitError(f"item {ident!r}: field {key!r} is missing or not a {_kind_name(kinds)}, got {value!r}")
    return value


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    return kinds.__name__ if isinstance(kinds, type) else "/".join(k.__name__ for k in kinds)


def _parse_item(raw: Any, i: int) -> AttentionItem:
    item = AttentionItem(
        id=_field(raw, "id", i, str),
        task=_field(raw, "task", i, str),
        language=_field(raw, "language", i, str),
        kind=_field(raw, "kind", i, str),
        code=_field(raw, "code", i, str),
        marker=_field(raw, "marker", i, str, allow_none=True),
        targets=dict(_field(raw, "targets", i, dict)),
        marker_target_distance=_field(raw, "marker_target_distance", i, int, allow_none=True),
        reference=_field(raw, "reference", i, str, allow_none=True),
        mutant=_field(raw, "mutant", i, str, allow_none=True),
    )
    _check_item(item)
    return item


def _check_item(item: AttentionItem) -> None:
    """Semantic checks: enums, marker presence by kind, regexes, targets inside the signature before the marker."""
    if item.language not in LANGUAGES:
        raise SteerkitError(f"item {item.id!r}: field 'language' must be python or rust, got {item.language!r}")
    if item.kind not in KINDS:
        raise SteerkitError(f"item {item.id!r}: field 'kind' must be test or baseline, got {item.kind!r}")
    if (item.kind == "test") != (item.marker is not None):
        raise SteerkitError(f"item {item.id!r}: field 'marker' must be set for kind 'test' only, got {item.marker!r}")
    if (item.kind == "test") != (item.marker_target_distance is not None):
        raise SteerkitError(f"item {item.id!r}: field 'marker_target_distance' must be set exactly for kind 'test'")
    if (item.reference is None) != (item.mutant is None):
        raise SteerkitError(f"item {item.id!r}: fields 'reference' and 'mutant' must be given together")
    if set(item.targets) != set(TARGETS):
        raise SteerkitError(f"item {item.id!r}: field 'targets' needs keys {list(TARGETS)}, got {list(item.targets)}")
    sig = _signature_match(item)
    for name, regex in item.targets.items():
        spans = _matches(item, regex, f"targets.{name}")
        used = spans[:1] if name == "function_name" else spans
        if any(a < sig.start() or b > sig.end() for a, b in used):
            raise SteerkitError(f"item {item.id!r}: field 'targets.{name}' matches outside the signature line")
    if item.marker is not None:
        first_marker = _matches(item, item.marker, "marker")[0][0]
        if first_marker < sig.end():
            raise SteerkitError(f"item {item.id!r}: field 'marker' occurs before the end of the signature")


def _matches(item: AttentionItem, regex: Any, where: str) -> list[tuple[int, int]]:
    if not isinstance(regex, str):
        raise SteerkitError(f"item {item.id!r}: field {where!r} must be a regex string, got {regex!r}")
    try:
        spans = [m.span() for m in re.finditer(regex, item.code, re.MULTILINE) if m.end() > m.start()]
    except re.error as exc:
        raise SteerkitError(f"item {item.id!r}: field {where!r} is not a valid regex: {exc}") from exc
    if not spans:
        raise SteerkitError(f"item {item.id!r}: field {where!r} regex {regex!r} matches nothing in the code")
    return spans


def load_attention_corpus(path: str | Path = DEFAULT_PATH) -> AttentionCorpus:
    """Load and validate `{"name", "items": [...]}` (see corpus/README.md).

    Raises:
        SteerkitError: naming the file, or the item and field of the first problem.
    """
    source, data, items = read_items(path, "items", "attention corpus", _parse_item)
    return AttentionCorpus(source.name(data), str(source.file), source.sha256, items)


def encode_item(tokenizer: Any, item: AttentionItem) -> EncodedPrompt:
    """The item as a model sees it without a chat template (as `generation.encode_prompts(chat=False)`)."""
    return encode(tokenizer, item.id, item.code, add_special_tokens=True)


def marker_target_positions(
    encoded: EncodedPrompt, item: AttentionItem, target: str = "function_name"
) -> tuple[list[int], list[int]]:
    """(marker token indices, target token indices), both sorted, on an encoded item."""
    markers = sorted(item.marker_selector().resolve(encoded).indices)
    targets = sorted(item.target_selector(target).resolve(encoded).indices)
    return markers, targets


def token_distance(loaded: Any, item: AttentionItem) -> int:
    """First marker token index minus last function-name token index, with `loaded`'s tokenizer.

    `loaded` is a `LoadedModel` or a bare tokenizer.
    """
    tokenizer = getattr(loaded, "tokenizer", loaded)
    markers, targets = marker_target_positions(encode_item(tokenizer, item), item)
    return markers[0] - targets[-1]


__all__ = [
    "DEFAULT_PATH",
    "AttentionCorpus",
    "AttentionItem",
    "encode_item",
    "load_attention_corpus",
    "marker_target_positions",
    "token_distance",
]


def load_attention_pairs(
    path: str | Path, limit: int = 0
) -> tuple[AttentionCorpus, list[tuple[AttentionItem, AttentionItem]]]:
    """The corpus and its first `limit` (python, rust) test pairs (all when 0)."""
    corpus = load_attention_corpus(path)
    pairs = corpus.pairs()
    return corpus, pairs[:limit] if limit else pairs
