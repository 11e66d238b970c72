"""Offline text for SAE training: the project's corpora plus Python standard-library sources, as token windows.

Design note: SAE training needs many tokens of text the model normally sees; nothing may be downloaded. Two
offline sources: every `corpus/*.json` / `*.jsonl` file (string fields named `text`, `prompt` or `code`, found
at any depth, so new corpora need no code) and the `.py` files of the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]`, site-packages excluded). Each document is cut into windows of `window`
tokens (decoded back to text, so they run through the usual prompt path). Corpus documents, in a seeded order,
fill up to `corpus_fraction` of the token budget; stdlib files, in a seeded order, fill the rest. Every file used
is listed with its SHA-256 so a run can be reproduced (the stdlib differs between Python builds). Each corpus
string carries the `task_id` of its record, so MBPP problems (text and solution) can be held out by id
(`drop_task_ids`): the problems a steering experiment reports on must never shape the SAE's features.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerkit.core.generation import Prompt
from steerkit.corpora.loader import read_json, read_records
from steerkit.errors import SteerkitError

TEXT_KEYS = ("text", "prompt", "code")


@dataclass(frozen=True)
class Document:
    """One text and where it came from (`source` = file path, `kind` = `corpus` or `stdlib`; `task_id` = the
    `task_id` of the JSON record holding it, e.g. an MBPP problem's text or solution)."""

    source: str
    kind: str
    text: str
    task_id: int | None = None


@dataclass(frozen=True)
class Window:
    """A window of at most `window` tokens of one document, as text."""

    id: str
    source: str
    kind: str
    text: str
    n_tokens: int
    task_id: int | None = None

    def as_prompt(self) -> Prompt:
        return Prompt(self.id, self.text)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strings(node: Any, task_id: int | None = None) -> Iterator[tuple[str, int | None]]:
    """(string value stored under TEXT_KEYS, `task_id` of the nearest record holding one) at any depth."""
    if isinstance(node, dict):
        own = node.get("task_id")
        task_id = int(own) if isinstance(own, int | str) and str(own).isdigit() else task_id
        for key, value in node.items():
            if key in TEXT_KEYS and isinstance(value, str) and value.strip():
                yield value, task_id
            elif isinstance(value, dict | list):
                yield from _strings(value, task_id)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, task_id)


def corpus_documents(directory: str | Path) -> list[Document]:
    """Texts from every `*.json` / `*.jsonl` file in `directory` (sorted by name)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SteerkitError(f"corpus directory not found: {directory}")
    docs: list[Document] = []
    for path in sorted([*directory.glob("*.json"), *directory.glob("*.jsonl")]):
        if path.suffix == ".jsonl":
            values = [record for _, record in read_records(path, "corpus")[1]]
        else:
            values = [read_json(path, "corpus", "corpus file")[1]]
        docs.extend(Document(str(path), "corpus", text, task_id) for text, task_id in _strings(values))
    return docs


def stdlib_files(seed: int) -> list[Path]:
    """The interpreter's standard-library `.py` files (no site-packages), in a seeded order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    random.Random(seed).shuffle(files)
    return files


def _cut(tokenizer: Any, doc: Document, window: int, min_tokens: int, max_windows: int) -> list[tuple[str, int]]:
    """Up to `max_windows` windows of `doc` as (text, n_tokens); a tail shorter than `min_tokens` is dropped."""
    text = doc.text[: window * max_windows * 8]  # ~4 chars/token: never tokenise a whole huge file
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out: list[tuple[str, int]] = []
    for start in range(0, len(ids), window):
        chunk = ids[start : start + window]
        if len(chunk) < min_tokens or len(out) == max_windows:
            break
        out.append((tokenizer.decode(chunk), len(chunk)))
    return out


def token_windows(
    tokenizer: Any,
    corpus_dir: str | Path | None,
    *,
    stdlib: bool = True,
    budget_tokens: int = 32_768,
    window: int = 128,
    min_tokens: int = 16,
    max_windows_per_file: int = 16,
    corpus_fraction: float = 0.5,
    seed: int = 0,
) -> tuple[list[Window], list[dict[str, Any]]]:
    """Windows of text up to `budget_tokens` tokens in total, and the files they came from.

    Corpus documents (all files, in a seeded order) fill at most `corpus_fraction` of the budget (all of it
    when `stdlib` is off); standard-library files fill the rest.

    Returns:
        (windows, files): each file as `{"path", "kind", "sha256", "n_windows", "n_tokens"}`.
    """
    if budget_tokens < min_tokens or window < min_tokens:
        raise SteerkitError(f"token budget {budget_tokens} and window {window} must be >= {min_tokens}")
    if not 0.0 <= corpus_fraction <= 1.0:
        raise SteerkitError(f"corpus_fraction must be in [0, 1], got {corpus_fraction!r}")
    corpus = corpus_documents(corpus_dir) if corpus_dir is not None else []
    random.Random(seed).shuffle(corpus)
    windows: list[Window] = []
    files: dict[str, dict[str, Any]] = {}
    total = 0

    def add(doc: Document, cap: int, budget: int) -> bool:
        nonlocal total
        for text, n in _cut(tokenizer, doc, window, min_tokens, cap):
            if total + n > budget:
                return False
            windows.append(Window(f"w{len(windows):05d}", doc.source, doc.kind, text, n, doc.task_id))
            entry = files.setdefault(doc.source, {"path": doc.source, "kind": doc.kind, "n_windows": 0, "n_tokens": 0})
            entry["n_windows"] += 1
            entry["n_tokens"] += n
            total += n
        return True

    corpus_budget = round(corpus_fraction * budget_tokens) if stdlib else budget_tokens
    for doc in corpus:
        if not add(doc, max_windows_per_file, corpus_budget):
            break
    for path in stdlib_files(seed) if stdlib else []:
        text = path.read_text(errors="replace")
        if not add(Document(str(path), "stdlib", text), max_windows_per_file, budget_tokens):
            break
    if not windows:
        raise SteerkitError(f"no text windows of >= {min_tokens} tokens found (corpus {corpus_dir}, stdlib {stdlib})")
    for entry in files.values():
        entry["sha256"] = sha256_file(Path(entry["path"]))
    return windows, list(files.values())


def drop_task_ids(windows: list[Window], holdout: Collection[int] | None) -> list[Window]:
    """`windows` without those cut from a record whose `task_id` is held out (by id, not by text): `holdout`
    None drops every window that has a task id (all MBPP problems and solutions), an empty set drops none."""
    if holdout is None:
        return [w for w in windows if w.task_id is None]
    held = set(holdout)
    return [w for w in windows if w.task_id is None or w.task_id not in held]


def task_ids(windows: list[Window]) -> list[int]:
    """The sorted task ids whose text appears in `windows` (what a trained SAE records about its training text)."""
    return sorted({w.task_id for w in windows if w.task_id is not None})


def split_windows(windows: list[Window], val_fraction: float, seed: int) -> tuple[list[Window], list[Window]]:
    """Seeded split into (train, validation) windows; validation gets round(val_fraction × n), at least 1."""
    if not 0.0 < val_fraction < 1.0:
        raise SteerkitError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if len(windows) < 2:
        raise SteerkitError(f"need at least 2 text windows to hold some out, got {len(windows)}")
    order = list(range(len(windows)))
    random.Random(seed).shuffle(order)
    n_val = min(len(windows) - 1, max(1, round(val_fraction * len(windows))))
    val = set(order[:n_val])
    return [w for i, w in enumerate(windows) if i not in val], [w for i, w in enumerate(windows) if i in val]
