"""MLflow tracking: the only module that imports mlflow.

Design note: an entry point opens one run with `tracked_run(...)`; under `mlflow run` it attaches to the run
MLflow created (MLFLOW_RUN_ID), otherwise it starts one. Any exception ends the run FAILED (never left
RUNNING); `entry_point()` turns a `SteerkitError` into a one-line message and exit status 2. Per-sample
results go through `SampleLog`, which appends each record to a local JSONL file and re-logs it as an artifact
after every batch, so a killed run keeps what it computed. Runs are tagged with the git commit and a dirty
flag so a finished run can be found and reused (`find_finished_run`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus

from steerkit.errors import SteerkitError

TAG_ENTRY_POINT = "steerkit.entry_point"
TAG_COMMIT = "steerkit.git_commit"
TAG_DIRTY = "steerkit.git_dirty"


def _git(args: list[str], where: Path) -> str:
    return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, check=True).stdout


def git_state(cwd: str | Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the checkout holding the code, or ("unknown", True) outside git."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = _git(["rev-parse", "HEAD"], where).strip()
        status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return commit, bool(status.strip())


def code_version(cwd: str | Path | None = None) -> str:
    """The commit, plus a hash of uncommitted changes to tracked files: equal strings mean equal code."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    commit, dirty = git_state(where)
    if not dirty:
        return commit
    try:
        diff = _git(["diff", "HEAD"], where)
    except (OSError, subprocess.CalledProcessError):
        return f"{commit}+unknown"
    return f"{commit}+{hashlib.sha256(diff.encode()).hexdigest()[:12]}"


@contextmanager
def tracked_run(
    entry_point: str,
    params: Mapping[str, Any],
    *,
    experiment: str | None = None,
    run_name: str | None = None,
    nested: bool = False,
) -> Iterator[Any]:
    """Open (or attach to) the MLflow run of an entry point; ends FAILED on any exception.

    Params are logged once (the resolved config), with tags for the entry point and git state. Under
    `mlflow run` the run already holds the entry point's parameters (shell-quoted by MLflow); those keys are
    not logged again, since MLflow refuses to change a logged parameter.
    """
    if experiment and not os.environ.get("MLFLOW_RUN_ID") and not nested:
        mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=run_name, nested=nested)
    try:
        commit, dirty = git_state()
        mlflow.set_tags({TAG_ENTRY_POINT: entry_point, TAG_COMMIT: commit, TAG_DIRTY: str(dirty).lower()})
        already = mlflow.get_run(run.info.run_id).data.params
        log_params({k: v for k, v in params.items() if k not in already})
        yield run
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run()


def log_params(params: Mapping[str, Any]) -> None:
    mlflow.log_params({k: _param_value(v) for k, v in params.items()})


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_metrics(metrics: Mapping[str, float | int | bool | None], step: int | None = None) -> None:
    """Log numeric metrics; None and NaN values are skipped (and listed in a tag) rather than logged."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
    mlflow.log_metrics(clean, step=step)
    missing = sorted(k for k in metrics if k not in clean)
    if missing:
        mlflow.set_tag("steerkit.metrics_not_computed", ",".join(missing))


def set_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_json(obj: Any, artifact_file: str) -> None:
    mlflow.log_dict(obj, artifact_file)


def log_table(rows: list[dict[str, Any]], artifact_file: str) -> None:
    """A per-sample table (`mlflow.load_table` reads it back, e.g. for `compare_runs`)."""
    import pandas as pd

    mlflow.log_table(pd.DataFrame(rows), artifact_file=artifact_file)


def log_figure(figure: Any, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


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

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        mlflow.log_artifact(str(self.path), artifact_path=self.artifact_path)


def find_finished_run(tags: Mapping[str, str]) -> Any | None:
    """The newest FINISHED run (any experiment) whose tags all match, from a clean checkout; else None."""
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"]
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def load_jsonl_artifact(run_id: str, artifact_path: str) -> list[dict[str, Any]]:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path)
    return [json.loads(line) for line in Path(local).read_text().splitlines() if line.strip()]


def active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise SteerkitError("no active MLflow run")
    return str(run.info.run_id)


def entry_point(main: Callable[[list[str]], None]) -> None:
    """Run an experiment's `main(argv)`: bad input prints one line to stderr and exits 2."""
    try:
        main(sys.argv[1:])
    except SteerkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


# --- Querying logged runs (compare_runs) and nested child runs (steerkit.search) -------------------------------


def search_finished_runs(experiment: str, entry_point: str | None = None, filter_string: str = "") -> list[Any]:
    """FINISHED runs of one experiment (by name), optionally of one entry point, oldest first.

    `filter_string` is an extra MLflow search clause (e.g. ``params.model = 'tiny-llama'``), ANDed on.
    """
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise SteerkitError(f"unknown MLflow experiment {experiment!r}")
    clauses = ["attributes.status = 'FINISHED'"]
    if entry_point:
        clauses.append(f"tags.`{TAG_ENTRY_POINT}` = '{entry_point}'")
    if filter_string.strip():
        clauses.append(filter_string.strip())
    try:
        return list(
            mlflow.search_runs(
                experiment_ids=[found.experiment_id],
                filter_string=" and ".join(clauses),
                order_by=["attributes.start_time ASC"],
                output_format="list",
            )
        )
    except mlflow.exceptions.MlflowException as exc:
        raise SteerkitError(f"bad run filter {filter_string!r}: {str(exc).splitlines()[0]}") from exc


def get_finished_run(run_id: str) -> Any:
    """The run with this id; it must exist and be FINISHED."""
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise SteerkitError(f"unknown run id {run_id!r}") from exc
    if run.info.status != "FINISHED":
        raise SteerkitError(f"run {run_id!r} is {run.info.status}, not FINISHED")
    return run


def load_run_table(run_id: str, artifact_file: str) -> list[dict[str, Any]]:
    """A run's per-sample table logged with `log_table`, as a list of row dicts."""
    try:
        frame = mlflow.load_table(artifact_file, run_ids=[run_id])
    except mlflow.exceptions.MlflowException as exc:
        raise SteerkitError(f"run {run_id} has no table {artifact_file!r}") from exc
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


@contextmanager
def child_run(run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[str]:
    """A nested run under the active run, in the parent's experiment; yields its id, ends FAILED on exception."""
    parent = mlflow.active_run()
    if parent is None:
        raise SteerkitError("a child run needs an active parent run")
    run = mlflow.start_run(run_name=run_name, nested=True, experiment_id=parent.info.experiment_id)
    try:
        if tags:
            set_tags(tags)
        yield str(run.info.run_id)
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run()


def update_run(
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float | int | None] | None = None,
    tags: Mapping[str, Any] | None = None,
    status: str | None = None,
) -> None:
    """Log to a run by id (it need not be active); `status` (FINISHED/FAILED/KILLED) re-terminates it."""
    client = mlflow.MlflowClient()
    for key, value in (params or {}).items():
        try:
            client.log_param(run_id, key, _param_value(value))
        except mlflow.exceptions.MlflowException:
            pass  # already logged with the same key (a param cannot change); the first value stands
    for key, number in (metrics or {}).items():
        if number is not None and number == number:
            client.log_metric(run_id, key, float(number))
    for key, text in (tags or {}).items():
        client.set_tag(run_id, key, str(text))
    if status is not None:
        client.set_terminated(run_id, status=status)
