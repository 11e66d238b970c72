"""MLflow tracking: the only module that imports mlflow.

Design note: an entry point opens one run with `tracked_run(...)`; under `mlflow run` it attaches to the run
MLflow created (MLFLOW_RUN_ID), otherwise it starts one. Any exception ends the run FAILED (never left
RUNNING); `entry_point()` turns a `SteerkitError` into a one-line message and exit status 2. Per-sample
results go through `SampleLog`, which appends each record to a local JSONL file and re-logs it as an artifact
after every batch, so a killed run keeps what it computed. Runs are tagged with the git commit and a dirty
flag so a finished run can be found and reused (`find_finished_run`), and with `steerkit.code_version` (commit +
hash of uncommitted changes) so the `main` driver reuses a step only when the code is the same. Resume: a run that
was killed (left RUNNING by a SIGKILL) or FAILED is reopened by `tracked_run(..., resume=RUN_ID)` after
`steerkit.resume.check_resumable` agrees (same entry point, same params, same commit, not FINISHED), and
`SampleLog.resume` hands back the records it had flushed. Scale-out workers open trial runs under a parent run
that is not active in their process (`child_run(..., parent_run_id=...)`).
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
import mlflow.projects
from mlflow.entities import RunStatus

from steerkit.errors import SteerkitError
from steerkit.resume import RunFacts, check_resumable, matches_step, same_param

TAG_ENTRY_POINT = "steerkit.entry_point"
TAG_COMMIT = "steerkit.git_commit"
TAG_DIRTY = "steerkit.git_dirty"
TAG_CODE_VERSION = "steerkit.code_version"
TAG_RESUME_COUNT = "steerkit.resume_count"
TAG_RESUMED_INTO = "steerkit.resumed_into"


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

    Params are logged once (the resolved config), with tags for the entry point and git state. Under
    `mlflow run` the run already holds the entry point's parameters (shell-quoted by MLflow); those keys are
    not logged again, since MLflow refuses to change a logged parameter.

    `resume=RUN_ID` reopens that run instead (see `steerkit.resume.check_resumable` for what is refused;
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
        run = mlflow.start_run(run_name=run_name, nested=nested)
    try:
        if not resume:
            commit, dirty = git_state()
            tags = {TAG_ENTRY_POINT: entry_point, TAG_COMMIT: commit, TAG_DIRTY: str(dirty).lower()}
            mlflow.set_tags(tags | {TAG_CODE_VERSION: code_version()})
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
    run = mlflow.start_run(run_id=run_id)
    count = int(facts.tags.get(TAG_RESUME_COUNT, "0")) + 1
    tags = {TAG_RESUME_COUNT: count, f"steerkit.resume_{count}.status_before": facts.status}
    now = code_version()
    if now != facts.tags.get(TAG_CODE_VERSION):
        tags[f"steerkit.resume_{count}.code_version"] = now
    set_tags(tags)
    return run


def run_facts(run_id: str) -> RunFacts:
    """Status, tags and params of a run, for the checks in `steerkit.resume`."""
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise SteerkitError(f"unknown run id {run_id!r}") from exc
    return RunFacts(run.info.run_id, run.info.status, dict(run.data.tags), dict(run.data.params))


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
    local = download_artifacts(run_id, artifact_path)
    return [json.loads(line) for line in local.read_text().splitlines() if line.strip()]


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
    """A run's per-sample table logged with `log_table`, as a list of row dicts, whatever its experiment.

    Read from the artifact itself (one JSON object `{"columns", "data"}`), not with `mlflow.load_table`, which
    only searches the active experiment and so misses runs logged elsewhere.
    """
    try:
        (table,) = load_jsonl_artifact(run_id, artifact_file)
        return [dict(zip(map(str, table["columns"]), row)) for row in table["data"]]
    except (mlflow.exceptions.MlflowException, OSError, ValueError, KeyError, TypeError) as exc:
        raise SteerkitError(f"run {run_id} has no table {artifact_file!r}") from exc


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


@contextmanager
def child_run(run_name: str, tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None) -> Iterator[str]:
    """A nested run under the active run, in the parent's experiment; yields its id, ends FAILED on exception.

    `parent_run_id` nests it under that run instead, which need not be active here (a scale-out worker's trials
    go under the study's parent run while the worker's own run is active).
    """
    if parent_run_id is None:
        parent = mlflow.active_run()
        if parent is None:
            raise SteerkitError("a child run needs an active parent run")
        run = mlflow.start_run(run_name=run_name, nested=True, experiment_id=parent.info.experiment_id)
    else:
        client = mlflow.MlflowClient()
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        created = client.create_run(experiment_id, run_name=run_name, tags={"mlflow.parentRunId": parent_run_id})
        run = mlflow.start_run(run_id=created.info.run_id, nested=True)
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


# --- Added for the SAE steering pipeline (baseline / find_features / select_coefficients / evaluate_steering) ---


def log_dataset(data: Any, name: str, context: str) -> None:
    """Log a table (a DataFrame or a list of row dicts) as an MLflow dataset input of the active run."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    mlflow.log_input(from_pandas(frame, name=name), context=context)


def download_artifacts(run_id: str, artifact_path: str) -> Path:
    """A local copy of one artifact file or directory of a run; a missing one raises SteerkitError."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path))
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise SteerkitError(f"run {run_id} has no artifact {artifact_path!r}") from exc


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log one local file as an artifact of the active run."""
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


# --- The `main` driver (reuse or launch a step) and scale-out workers (a study's shared parent run) -----------


def active_experiment_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise SteerkitError("no active MLflow run")
    return str(run.info.experiment_id)


def experiment_name(experiment_id: str) -> str:
    return str(mlflow.MlflowClient().get_experiment(experiment_id).name)


def find_step_run(experiment_id: str, entry_point: str, params: Mapping[str, str], version: str) -> str | None:
    """The newest FINISHED run in the experiment that `steerkit.resume.matches_step` accepts, else None."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"attributes.status = 'FINISHED' and tags.`{TAG_ENTRY_POINT}` = '{entry_point}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    for run in runs:
        facts = RunFacts(run.info.run_id, run.info.status, dict(run.data.tags), dict(run.data.params))
        if matches_step(facts, entry_point, params, version):
            return str(run.info.run_id)
    return None


def launch_entry_point(project_uri: str, entry_point: str, params: Mapping[str, str], experiment_id: str) -> str:
    """`mlflow run` one entry point of the project in this environment and wait; returns its run id.

    Launched while the driver's run is active, the new run is its child (MLflow tags `mlflow.parentRunId`).
    """
    try:
        submitted = mlflow.projects.run(
            project_uri,
            entry_point=entry_point,
            parameters=dict(params),
            experiment_id=experiment_id,
            env_manager="local",
            synchronous=True,
        )
    except mlflow.exceptions.ExecutionException as exc:
        raise SteerkitError(f"step {entry_point!r} failed: {str(exc).splitlines()[0]}") from exc
    return str(submitted.run_id)


def create_run(experiment: str, run_name: str, tags: Mapping[str, Any]) -> str:
    """A new RUNNING run in the named experiment (created if absent) that this process does not make active."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(experiment)
        except mlflow.exceptions.MlflowException:  # another worker created it first
            experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id  # type: ignore[union-attr]
    run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    return str(run.info.run_id)


def child_runs(parent_run_id: str) -> list[Any]:
    """Every run nested under `parent_run_id` (any status), oldest first."""
    parent = mlflow.get_run(parent_run_id)
    return list(
        mlflow.search_runs(
            experiment_ids=[parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"],
            output_format="list",
        )
    )


@contextmanager
def reopened_run(run_id: str) -> Iterator[None]:
    """Make an existing run active (nested under any active run) for a block; it ends FINISHED (FAILED on error).

    A scale-out worker uses it to log a study's summary onto the study's parent run, which no process holds.
    """
    mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    try:
        yield
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run()
