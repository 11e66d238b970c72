"""The active run of an entry point: open it, log params, metrics, tags and artifacts, end it.

Design note: an entry point opens one run with `tracked_run(...)`; under `mlflow run` it attaches to the run
MLflow created (MLFLOW_RUN_ID), otherwise it starts one. Any exception ends the run FAILED (never left
RUNNING); `entry_point()` turns a `SteerkitError` into a one-line message and exit status 2. Per-sample
results go through `SampleLog`, which appends each record to a local JSONL file and re-logs it as an artifact
after every batch, so a killed run keeps what it computed. Runs are tagged with the git commit and a dirty
flag so a finished run can be found and reused (`find_finished_run`), and with `steerkit.code_version` (commit +
hash of uncommitted changes) so the `main` driver reuses a step only when the code is the same. Resume: a run that
was killed (left RUNNING by a SIGKILL) or FAILED is reopened by `tracked_run(..., resume=RUN_ID)` after
`steerkit.tracking.resume.check_resumable` agrees (same entry point, same params, same commit, not FINISHED), and
`SampleLog.resume` hands back the records it had flushed. Scale-out workers open trial runs under a parent run
that is not active in their process (`child_run(..., parent_run_id=...)`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.projects
from mlflow.entities import RunStatus

from steerkit.errors import SteerkitError
from steerkit.tracking import names
from steerkit.tracking.inputs import INPUT_PARAMS, log_corpus_input, mark_experiment_kind
from steerkit.tracking.queries import run_facts
from steerkit.tracking.resume import check_resumable, same_param
from steerkit.tracking.tags import (
    TAG_CODE_VERSION,
    TAG_COMMIT,
    TAG_DIRTY,
    TAG_ENTRY_POINT,
    TAG_METRICS_NOT_COMPUTED,
    TAG_RESUME_COUNT,
    TAG_RESUMED_INTO,
    TAG_RUN_NAME,
    resume_tag,
)


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
    resume: str | None = None,
    resume_ignore: tuple[str, ...] = (),
) -> Iterator[Any]:
    """Open (or attach to) the MLflow run of an entry point; ends FAILED on any exception.

    Params are logged once (the resolved config), with tags for the entry point and git state, a name from
    `steerkit.tracking.names` (unless `run_name`), the corpus param as a dataset input, system metrics. Under
    `mlflow run` the run already holds the entry point's parameters (shell-quoted by MLflow); those keys are
    not logged again, since MLflow refuses to change a logged parameter.

    `resume=RUN_ID` reopens that run instead (see `steerkit.tracking.resume.check_resumable` for what is refused;
    `resume_ignore` names params that may differ, e.g. the `resume` param itself). The refusal happens before
    the run is touched. Under `mlflow run -P resume=RUN_ID` MLflow has created a new run; it is tagged
    `steerkit.resumed_into=RUN_ID` and left empty, and the work continues in RUN_ID.
    """
    if resume:
        run = _reopen(resume, entry_point, params, resume_ignore)
    else:
        if experiment and not os.environ.get("MLFLOW_RUN_ID") and not nested:
            # by id again: when two processes create the experiment at once, MLflow's loser returns it
            # without making it active, and its run would land in Default
            mlflow.set_experiment(experiment_id=mlflow.set_experiment(experiment).experiment_id)
        run = mlflow.start_run(run_name=run_name, nested=nested, log_system_metrics=_system_metrics(nested))
    try:
        if not resume:
            commit, dirty = git_state()
            tags = {TAG_ENTRY_POINT: entry_point, TAG_COMMIT: commit, TAG_DIRTY: str(dirty).lower()}
            # the name as a tag: under `mlflow run` it replaces the random name MLflow gave the run
            name = {TAG_RUN_NAME: run_name or names.run_name(entry_point, params)}
            mlflow.set_tags(tags | {TAG_CODE_VERSION: code_version()} | name)
            mark_experiment_kind(run.info.experiment_id)
            for key in INPUT_PARAMS:
                if params.get(key):
                    log_corpus_input(str(params[key]))
        already = mlflow.get_run(run.info.run_id).data.params
        log_params({k: v for k, v in params.items() if k not in already})
        yield run
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run()


def _reopen(run_id: str, entry_point: str, params: Mapping[str, Any], ignore: tuple[str, ...]) -> Any:
    """Check that `run_id` may be resumed, then make it the active run again (status RUNNING)."""
    facts = run_facts(run_id)
    check_resumable(facts, entry_point, {k: _param_value(v) for k, v in params.items()}, git_state()[0], ignore)
    created = os.environ.get("MLFLOW_RUN_ID")
    if created and created != run_id:  # `mlflow run` made a run for this process: point it at the resumed one
        note = f"This `mlflow run` resumed run {run_id}; its results are there."
        update_run(created, tags={TAG_RESUMED_INTO: run_id, "mlflow.note.content": note})
    run = mlflow.start_run(run_id=run_id, log_system_metrics=_system_metrics(False))
    count = int(facts.tags.get(TAG_RESUME_COUNT, "0")) + 1
    tags = {TAG_RESUME_COUNT: count, resume_tag(count, "status_before"): facts.status}
    now = code_version()
    if now != facts.tags.get(TAG_CODE_VERSION):
        tags[resume_tag(count, "code_version")] = now
    set_tags(tags)
    return run


def log_params(params: Mapping[str, Any]) -> None:
    mlflow.log_params({k: _param_value(v) for k, v in params.items()})


def log_new_params(params: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> None:
    """Log params the active run lacks; one it holds with another value is refused (SteerkitError).

    For a resumed run: the resolved config (layer, corpus hash, model file hash) must be what it was.
    `ignore` names params that may differ (e.g. a load time); their first value stands.
    """
    logged = mlflow.get_run(active_run_id()).data.params
    fresh = {k: _param_value(v) for k, v in params.items() if k not in logged}
    for key, value in params.items():
        if key in logged and key not in ignore and not same_param(logged[key], _param_value(value)):
            raise SteerkitError(
                f"run {active_run_id()} was logged with {key}={logged[key]!r}, now {key}={_param_value(value)!r}"
            )
    if fresh:
        mlflow.log_params(fresh)
    if "resolved_layer" in fresh:  # the name shows the layer once it is known (`n50 scale=3.0 L18`)
        run = mlflow.get_run(active_run_id())
        point = run.data.tags.get(TAG_ENTRY_POINT, "")
        mlflow.set_tag(TAG_RUN_NAME, names.run_name(point, run.data.params))


def _system_metrics(nested: bool) -> bool | None:
    """On for top-level runs (psutil; GPU with pynvml), unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says."""
    return None if nested or os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING") else True


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_metrics(metrics: Mapping[str, float | int | bool | None], step: int | None = None) -> None:
    """Log numeric metrics; None and NaN values are skipped (and listed in a tag) rather than logged."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
    mlflow.log_metrics(clean, step=step)
    missing = sorted(k for k in metrics if k not in clean)
    if missing:
        mlflow.set_tag(TAG_METRICS_NOT_COMPUTED, ",".join(missing))


def set_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_json(obj: Any, artifact_file: str) -> None:
    mlflow.log_dict(obj, artifact_file)


def log_table(rows: list[dict[str, Any]], artifact_file: str) -> None:
    """A per-sample table (`mlflow.load_table` reads it back); `id`, then the outputs, lead: the UI's artifact
    compare view groups by the first column and opens on the second (the steered outputs, run beside run)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    lead = [c for c in ("id", "steered_output", "output", "baseline_output") if c in frame.columns]
    mlflow.log_table(frame[lead + [c for c in frame.columns if c not in lead]], artifact_file=artifact_file)


def log_figure(figure: Any, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


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


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


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


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log one local file as an artifact of the active run."""
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def recorder(
    tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None, table: str | None = None
) -> Callable[[Mapping[str, Any], list[dict[str, Any]]], None]:
    """A `record(metrics, rows)` callback for library code (e.g. a search objective's trial): logs `tags`,
    `params`, the rows as the table artifact `table` (when given) and the metrics, in the active run."""

    def record(metrics: Mapping[str, Any], rows: list[dict[str, Any]]) -> None:
        if tags:
            set_tags(tags)
        if params:
            log_params(params)
        if table is not None:
            log_table(rows, table)
        log_metrics(metrics)

    return record


def log_csv(rows: list[dict[str, Any]], artifact_file: str) -> None:
    """Rows as a CSV text artifact (columns from the first row)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    mlflow.log_text(out.getvalue(), artifact_file)


def log_design(design: Any, allow_underpowered: bool) -> None:
    """Log a `steerkit.stats.design.Design` before generation (params `design_*`) and refuse one that cannot reject.

    A design whose smallest attainable p is above alpha / family raises `SteerkitError` (the run ends FAILED with
    that one line) unless `allow_underpowered`, which tags the run `steerkit.underpowered=true`.
    """
    log_params({f"design_{k}": v for k, v in design.to_dict().items()})
    if design.check(allow_underpowered):
        set_tags({"steerkit.underpowered": "true"})
