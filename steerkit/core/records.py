"""Where per-sample records go while an experiment computes them.

Design note: library code (the experiment systems) never opens a log itself; it takes a `RecordLog`, appends each
record as it is computed and flushes after each batch. `steerkit.tracking.SampleLog` is the one the scripts pass
(JSONL re-logged as an MLflow artifact, so a killed run keeps what it computed); tests may pass a `MemoryLog`.
"""

from __future__ import annotations

from typing import Any, Protocol

Record = dict[str, Any]


class RecordLog(Protocol):
    """An append-only record sink: `records` holds what it has (a resumed log starts non-empty)."""

    records: list[Record]

    def append(self, record: Record) -> None: ...

    def flush(self) -> None: ...


class MemoryLog:
    """A `RecordLog` that keeps records in memory only."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append(self, record: Record) -> None:
        self.records.append(record)

    def flush(self) -> None:
        return None


__all__ = ["MemoryLog", "Record", "RecordLog"]
