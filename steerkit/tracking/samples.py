"""Per-sample records of a run: `SampleLog` appends JSONL and re-logs it after every batch.

Design note: a killed run keeps every flushed record; `SampleLog.resume` hands them back to the resumed run.
Library code never sees this class: it takes `on_result`-style callbacks (`log.append`, `log.flush`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from steerkit.errors import SteerkitError
from steerkit.tracking.queries import find_finished_run, load_jsonl_artifact
from steerkit.tracking.runs import active_run_id, log_metrics, set_tags
from steerkit.tracking.tags import reuse_key_tag, reuse_source_tag


class SampleLog:
    """Append per-sample records to `<artifact_path>/<name>.jsonl` as they are computed.

    `flush()` re-logs the file as an artifact; call it after each batch so a killed run loses nothing.
    """

    def __init__(self, name: str, artifact_path: str = "samples") -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="steerkit-"))
        self.path = self._dir / f"{name}.jsonl"
        self.path.touch()
        self.artifact_path = artifact_path
        self.records: list[dict[str, Any]] = []

    @classmethod
    def resume(cls, run_id: str, name: str, artifact_path: str = "samples") -> SampleLog:
        """The log of a resumed run: `records` holds what the run had flushed; appends continue the same artifact.

        A last line cut short by a kill during the upload is dropped (its sample is simply computed again).
        """
        log = cls(name, artifact_path)
        artifact = f"{artifact_path}/{name}.jsonl"
        listed = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, artifact_path)}
        if artifact not in listed:
            return log
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact))
        lines = local.read_text().split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if i == len(lines) - 1:  # the unterminated tail of an interrupted write
                    break
                raise SteerkitError(f"run {run_id}: {artifact} line {i + 1} is not JSON") from exc
            log.append(record)
        return log

    @classmethod
    def open(cls, name: str, resume: bool = False, artifact_path: str = "samples") -> SampleLog:
        """A new log, or with `resume` the active run's flushed one (metric `<name>_records_resumed` counts it)."""
        if not resume:
            return cls(name, artifact_path)
        log = cls.resume(active_run_id(), name, artifact_path)
        log_metrics({f"{name}_records_resumed": len(log.records)})
        return log

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def extend(self, records: list[dict[str, Any]]) -> None:
        """Append a batch of records, then flush (an `on_rows`-style callback)."""
        for record in records:
            self.append(record)
        self.flush()

    def flush(self) -> None:
        mlflow.log_artifact(str(self.path), artifact_path=self.artifact_path)


def reuse_samples(name: str, key: str, reuse: bool) -> list[dict[str, Any]] | None:
    """The records of an arm computed once per `key` and reused by later runs (e.g. the baseline every scale shares).

    The active run is tagged `steerkit.<name>_key=key`. With `reuse`, the newest FINISHED run with the same tag
    lends its `samples/<name>.jsonl`, copied into this run, and its records are returned as stored (batch order:
    join them by id); otherwise None (the caller computes the arm). Either way the run is tagged
    `steerkit.<name>_source_run` with the run the records come from.
    """
    set_tags({reuse_key_tag(name): key})
    found = find_finished_run({reuse_key_tag(name): key}) if reuse else None
    if found is None:
        set_tags({reuse_source_tag(name): active_run_id()})
        return None
    records = load_jsonl_artifact(found.info.run_id, f"samples/{name}.jsonl")
    set_tags({reuse_source_tag(name): found.info.run_id})
    log = SampleLog(name)
    for record in records:
        log.append(record)
    log.flush()
    return records
