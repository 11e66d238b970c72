"""The one corpus-file reader: every corpus in `corpus/` is read, hashed and decoded here.

Design note: corpus files are data, loaded and validated at the boundary and never edited by code. Each typed
corpus (`prompts`, `attention_pairs`, `doctests`, `mbpp`, `refusal`) only validates its own records; reading
the bytes, the SHA-256 that runs log for reproducibility, JSON / JSON-lines decoding, the top-level item list
and the one-line error naming the file all happen here, the same way for every corpus.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


RECORD_KEYS = ("prompts", "items", "problems", "pairs", "rows")  # where a JSON object corpus keeps its records


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a user's file: a stable `id`, the `text` the model sees, and the requested extra `fields`."""

    id: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class PromptTable:
    """Prompts read from a JSONL, JSON or CSV file (or an existing corpus), with the file's SHA-256.

    `id_source` is `field` when the file gives ids, `text_sha256` when they are derived from the text.
    """

    name: str
    path: str
    sha256: str
    rows: tuple[PromptRow, ...]
    id_source: str

    def limit(self, n: int) -> tuple[PromptRow, ...]:
        """The first `n` rows (all when `n` is 0)."""
        if n < 0:
            raise SteerkitError(f"limit must be >= 0, got {n}")
        return self.rows[:n] if n else self.rows


def text_id(text: str) -> str:
    """The stable id of a prompt that has none: the first 16 hex digits of the SHA-256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _table_records(path: str | Path, what: str) -> tuple[CorpusFile, Any, list[tuple[str, Any]]]:
    """(file, decoded top level, [(location, record)]) of a CSV, JSON-lines, JSON list or JSON object file."""
    source = read_file(path, what)
    if source.file.suffix.lower() == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(source.raw.decode("utf-8-sig")))
            return source, None, [(f"row {i}", dict(row)) for i, row in enumerate(reader, start=2)]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise SteerkitError(f"malformed {what} file {path}: {exc}") from exc
    try:
        data = json.loads(source.raw) if source.file.suffix.lower() != ".jsonl" else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None  # JSON lines (or malformed: read_records names the line)
    if isinstance(data, dict):
        key = next((k for k in RECORD_KEYS if isinstance(data.get(k), list)), None)
        if key is not None:  # a corpus object; any other object is one JSON-lines record
            return source, data, [(f"item #{i}", item) for i, item in enumerate(data[key])]
    source, records = read_records(path, what)
    return source, None, records


def load_prompt_table(
    path: str | Path, *, text_field: str = "prompt", id_field: str = "id", fields: Sequence[str] = ()
) -> PromptTable:
    """Read a user's prompts: JSON lines, a JSON list, a JSON object with a `prompts` list (every corpus in
    `corpus/`), or a CSV with a header.

    Args:
        path: the file.
        text_field: the field (column) holding the prompt text.
        id_field: the field holding the id; if no record has it, ids are `text_id(text)` (stable across runs
            and orderings). Either every record has an id or none does.
        fields: extra fields to carry (e.g. `reference`, `label`, `tests`); each must be in every record.

    Raises:
        SteerkitError: naming the file and the first bad record (missing text or field, duplicate id, ...).
    """
    source, data, records = _table_records(path, "prompt")
    rows, id_source = prompt_rows(records, str(path), text_field=text_field, id_field=id_field, fields=fields)
    return PromptTable(source.name(data), str(source.file), source.sha256, tuple(rows), id_source)


def prompt_rows(
    records: Sequence[tuple[str, Any]],
    origin: str,
    *,
    text_field: str = "prompt",
    id_field: str = "id",
    fields: Sequence[str] = (),
) -> tuple[list[PromptRow], str]:
    """Validated `PromptRow`s of `(location, record)` pairs and where their ids came from (`field` or
    `text_sha256`); errors name `origin` (a file, or `prompts` for records given in code) and the location."""
    if not records:
        raise SteerkitError(f"prompt file {origin} holds no records")
    has_id = [isinstance(r, dict) and r.get(id_field) not in (None, "") for _, r in records]
    if any(has_id) and not all(has_id):
        where = records[has_id.index(False)][0]
        raise SteerkitError(f"prompt file {origin} {where}: no {id_field!r} (give every record an id, or none)")
    rows, seen = [], set()
    for where, record in records:
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text:
            raise SteerkitError(f"prompt file {origin} {where}: no non-empty text field {text_field!r}")
        missing = [f for f in fields if f not in record]
        if missing:
            raise SteerkitError(f"prompt file {origin} {where}: no field {missing[0]!r}")
        rid = str(record[id_field]) if all(has_id) else text_id(text)
        if rid in seen:
            kind = "id" if all(has_id) else "text (ids are text hashes)"
            raise SteerkitError(f"prompt file {origin} {where}: duplicate {kind} {rid!r}")
        seen.add(rid)
        rows.append(PromptRow(rid, text, {f: record[f] for f in fields}))
    return rows, "field" if all(has_id) else "text_sha256"


__all__ = [
    "CorpusFile",
    "PromptRow",
    "PromptTable",
    "item_list",
    "load_prompt_table",
    "prompt_rows",
    "read_file",
    "read_items",
    "read_json",
    "read_records",
    "text_id",
]
