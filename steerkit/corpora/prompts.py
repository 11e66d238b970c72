"""Corpus files: loaded and validated at the boundary, never edited by code.

A malformed file raises `SteerkitError` naming the file and the first problem found.
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
    """One prompt of a corpus: `id`, `category`, `prompt` text, optional `meta`."""

    id: str
    category: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

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


def load_prompt_corpus(path: str | Path) -> PromptCorpus:
    """Load a JSON corpus `{"name", "prompts": [{"id", "category", "prompt", "meta"?}, ...]}`."""
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
        prompts.append(CorpusPrompt(item["id"], item["category"], item["prompt"], dict(meta)))
    return PromptCorpus(source.name(data), str(source.file), source.sha256, tuple(prompts))
