"""The one corpus-file reader: every corpus in `corpus/` is read, hashed and decoded here.

Design note: corpus files are data, loaded and validated at the boundary and never edited by code. Each typed
corpus (`prompts`, `attention_pairs`, `doctests`, `mbpp`, `refusal`) only validates its own records; reading
the bytes, the SHA-256 that runs log for reproducibility, JSON / JSON-lines decoding, the top-level item list
and the one-line error naming the file all happen here, the same way for every corpus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from steerkit.errors import SteerkitError


@dataclass(frozen=True)
class CorpusFile:
    """A corpus file's bytes and their SHA-256 (`path` as given by the caller, for messages)."""

    path: str
    file: Path
    raw: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def name(self, data: Any) -> str:
        """The corpus's `name` field, else the file stem."""
        return str((data.get("name") if isinstance(data, dict) else None) or self.file.stem)


def read_file(path: str | Path, what: str) -> CorpusFile:
    """The file's bytes; a missing file raises `<what> file not found: <path>`."""
    file = Path(path)
    if not file.is_file():
        raise SteerkitError(f"{what} file not found: {path}")
    return CorpusFile(str(path), file, file.read_bytes())


def read_json(path: str | Path, what: str, malformed: str | None = None) -> tuple[CorpusFile, Any]:
    """The file and its decoded JSON; bad JSON or bytes raise `malformed <what> <path>: <reason>`."""
    source = read_file(path, what)
    try:
        return source, json.loads(source.raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SteerkitError(f"malformed {malformed or what} {path}: {exc}") from exc


def item_list(data: Any, key: str, path: str | Path, what: str) -> list[Any]:
    """`data[key]`, which must be a non-empty list (else `malformed <what> <path>: expected ...`)."""
    rows = data.get(key) if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise SteerkitError(f"malformed {what} {path}: expected an object with a non-empty {key!r} list")
    return rows


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


Item = TypeVar("Item", bound=_HasId)


def read_items(
    path: str | Path, key: str, what: str, parse: Callable[[Any, int], Item], label: str = "item"
) -> tuple[CorpusFile, Any, tuple[Item, ...]]:
    """The file, its JSON, and the rows of `data[key]` each parsed by `parse(row, index)`, their ids unique
    (a repeated id raises `<label> '<id>': field 'id' is duplicated`)."""
    source, data = read_json(path, what)
    items: list[Item] = []
    seen: set[str] = set()
    for i, row in enumerate(item_list(data, key, path, what)):
        item = parse(row, i)
        if item.id in seen:
            raise SteerkitError(f"{label} {item.id!r}: field 'id' is duplicated")
        seen.add(item.id)
        items.append(item)
    return source, data, tuple(items)


def read_records(path: str | Path, what: str) -> tuple[CorpusFile, list[tuple[str, Any]]]:
    """(location, record) pairs of a JSON list file ("item #i") or a JSON-lines file ("line n")."""
    source = read_file(path, what)
    file = source.file
    try:
        text = source.raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SteerkitError(f"malformed {what} file {file}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SteerkitError(f"malformed {what} file {file}: {exc}") from exc
        return source, [(f"item #{i}", item) for i, item in enumerate(items)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise SteerkitError(f"{file} line {number}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
    return source, records


__all__ = ["CorpusFile", "item_list", "read_file", "read_items", "read_json", "read_records"]
