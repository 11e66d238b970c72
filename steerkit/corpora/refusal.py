"""The refusal prompt corpora (harmful / benign prompt sets of seed 003's ladder).

Design note: the benign file has a `direction` split (used only for the direction) and an `eval` split. Helpfulness
that picks the winning condition and helpfulness that is reported must come from different prompts, so
`benign_eval_test` returns an explicit `test` split when the file has one, and otherwise divides `eval` by id:
within each action, prompts ordered by SHA-256 of their id alternate select, test, select, ... (deterministic,
independent of file order, balanced per action).
"""

from __future__ import annotations

import hashlib
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

    def benign_eval_test(self, limit: int = 0) -> tuple[list[RefusalPrompt], list[RefusalPrompt]]:
        """(selection, test) benign prompts: the `test` split if present, else `eval` divided by id (module note);
        each list in file order, cut to its first `limit` (0 = all)."""
        if any(p.split == "test" for p in self.prompts):
            return self.select("eval", limit), self.select("test", limit)
        pool = self.select("eval")
        test_ids = set()
        for action in sorted({p.action for p in pool}):
            ranked = sorted((p for p in pool if p.action == action), key=lambda p: _id_hash(p.id))
            test_ids |= {p.id for p in ranked[1::2]}
        chosen, test = [p for p in pool if p.id not in test_ids], [p for p in pool if p.id in test_ids]
        if not test:
            raise SteerkitError(
                f"corpus {self.path}: the eval split has {len(pool)} prompt(s), too few to hold out a test split"
            )
        return (chosen[:limit] if limit else chosen), (test[:limit] if limit else test)


def _id_hash(prompt_id: str) -> str:
    return hashlib.sha256(prompt_id.encode()).hexdigest()


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
