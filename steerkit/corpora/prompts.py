"""Corpus files: loaded and validated at the boundary, never edited by code.

A malformed file raises `SteerkitError` naming the file and the first problem found. An item may carry a
`reference` (a correct implementation of the function its prompt opens) and a `mutant` (a plausible wrong one);
they come together, so a user's own Rust problems get the executable `valid_test` outcome (generated tests run
against the reference and the mutant, `steerkit.metrics.rust_validity`). Other unknown fields are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerkit.core.generation import Prompt
from steerkit.corpora.loader import item_list, read_json
from steerkit.errors import SteerkitError


@dataclass(frozen=True)
class CorpusPrompt:
    """One prompt of a corpus: `id`, `category`, `prompt` text, optional `meta`, `reference` and `mutant`.

    `reference` / `mutant`: complete implementations of the function under test, correct / wrong (never shown
    to the model); both or neither.
    """

    id: str
    category: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    reference: str | None = None
    mutant: str | None = None

    @property
    def has_reference(self) -> bool:
        return self.reference is not None

    def as_prompt(self) -> Prompt:
        return Prompt(self.id, self.prompt)


@dataclass(frozen=True)
class PromptCorpus:
    """A validated prompt corpus and the SHA-256 of its file (logged for reproducibility)."""

    name: str
    path: str
    sha256: str
    prompts: tuple[CorpusPrompt, ...]

    def limit(self, n: int) -> tuple[CorpusPrompt, ...]:
        """The first `n` prompts (all when `n` is 0)."""
        if n < 0:
            raise SteerkitError(f"limit must be >= 0, got {n}")
        return self.prompts[:n] if n else self.prompts


def _implementations(item: dict[str, Any], i: int, path: str | Path) -> tuple[str | None, str | None]:
    """The item's optional `reference` and `mutant`: non-empty strings, both or neither."""
    found = {}
    for key in ("reference", "mutant"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise SteerkitError(f"malformed corpus {path}: prompt #{i} has a {key!r} that is not a non-empty string")
        found[key] = value
    if (found["reference"] is None) != (found["mutant"] is None):
        has, lacks = ("reference", "mutant") if found["reference"] is not None else ("mutant", "reference")
        raise SteerkitError(f"malformed corpus {path}: prompt #{i} has a {has!r} but no {lacks!r} (both or neither)")
    return found["reference"], found["mutant"]


def load_prompt_corpus(path: str | Path) -> PromptCorpus:
    """Load a JSON corpus `{"name", "prompts": [{"id", "category", "prompt", "meta"?, "reference"?, "mutant"?}]}`."""
    source, data = read_json(path, "corpus")
    items = item_list(data, "prompts", path, "corpus")
    prompts, seen = [], set()
    for i, item in enumerate(items):
        missing = [
            k
            for k in ("id", "category", "prompt")
            if not isinstance(item, dict) or not isinstance(item.get(k), str) or not item.get(k)
        ]
        if missing:
            raise SteerkitError(f"malformed corpus {path}: prompt #{i} lacks a non-empty string {missing[0]!r}")
        if item["id"] in seen:
            raise SteerkitError(f"malformed corpus {path}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        meta = item.get("meta", {})
        if not isinstance(meta, dict):
            raise SteerkitError(f"malformed corpus {path}: prompt #{i} has a non-object 'meta'")
        reference, mutant = _implementations(item, i, path)
        prompts.append(CorpusPrompt(item["id"], item["category"], item["prompt"], dict(meta), reference, mutant))
    return PromptCorpus(source.name(data), str(source.file), source.sha256, tuple(prompts))
