"""The refusal prompt corpora (harmful / benign prompt sets of seed 003's ladder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from steerkit.core.generation import Prompt
from steerkit.corpora.loader import read_json
from steerkit.errors import SteerkitError


@dataclass(frozen=True)
class RefusalPrompt:
    """One prompt of a refusal corpus; `split` is `direction` / `eval` for benign prompts, else empty."""

    id: str
    text: str
    action: str
    split: str = ""

    def as_prompt(self) -> Prompt:
        return Prompt(self.id, self.text)


@dataclass(frozen=True)
class RefusalCorpus:
    """A validated refusal prompt file and its SHA-256."""

    name: str
    path: str
    sha256: str
    prompts: tuple[RefusalPrompt, ...]

    def select(self, split: str | None = None, limit: int = 0) -> list[RefusalPrompt]:
        """Prompts of one benign `split` (None = all), the first `limit` of them (0 = all)."""
        if limit < 0:
            raise SteerkitError(f"limit must be >= 0, got {limit}")
        rows = [p for p in self.prompts if split is None or p.split == split]
        if not rows:
            raise SteerkitError(f"corpus {self.path} has no prompts with split {split!r}")
        return rows[:limit] if limit else rows


def load_refusal_corpus(path: str | Path) -> RefusalCorpus:
    """Load `{"name", "version", "description", "prompts": [{"id", "text", "action", "split"?}]}`."""
    source, data = read_json(path, "corpus")
    try:
        items = data["prompts"]
    except (KeyError, TypeError) as exc:
        raise SteerkitError(f"malformed corpus {path}: {exc}") from exc
    prompts: list[RefusalPrompt] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k] for k in ("id", "text")):
            raise SteerkitError(f"malformed corpus {path}: prompt #{i} needs non-empty 'id' and 'text'")
        if item["id"] in seen:
            raise SteerkitError(f"malformed corpus {path}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        prompts.append(RefusalPrompt(item["id"], item["text"], str(item.get("action", "")), str(item.get("split", ""))))
    if not prompts:
        raise SteerkitError(f"malformed corpus {path}: no prompts")
    return RefusalCorpus(str(data.get("name", source.file.stem)), str(source.file), source.sha256, tuple(prompts))
