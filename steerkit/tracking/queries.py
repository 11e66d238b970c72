"""Reading logged runs: finished runs by tags or entry point, artifacts, tables, child runs, `runs:/` URIs.

Design note: `local_artifact` is the one reader of `runs:/<run_id>/<path>` URIs (and of a bare run id standing
for its default artifact); every other module passes it a string and gets a local path back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from steerkit.errors import SteerkitError
from steerkit.tracking.resume import RunFacts, matches_step
from steerkit.tracking.tags import TAG_ENTRY_POINT, TAG_PARENT_RUN

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
ALL_EXPERIMENTS = "all"


def run_facts(run_id: str) -> RunFacts:
    """Status, tags and params of a run, for the checks in `steerkit.tracking.resume`."""
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise SteerkitError(f"unknown run id {run_id!r}") from exc
    return RunFacts(run.info.run_id, run.info.status, dict(run.data.tags), dict(run.data.params))


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


def search_finished_runs(experiment: str, entry_point: str | None = None, filter_string: str = "") -> list[Any]:
    """FINISHED runs of one experiment (by name; `all` = every experiment), optionally of one entry point, oldest
    first.

    `filter_string` is an extra MLflow search clause (e.g. ``params.model = 'tiny-llama'``), ANDed on.
    """
    where: dict[str, Any] = {"search_all_experiments": True}
    if experiment != ALL_EXPERIMENTS:
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            raise SteerkitError(f"unknown MLflow experiment {experiment!r}")
        where = {"experiment_ids": [found.experiment_id]}
    clauses = ["attributes.status = 'FINISHED'"]
    if entry_point:
        clauses.append(f"tags.`{TAG_ENTRY_POINT}` = '{entry_point}'")
    if filter_string.strip():
        clauses.append(filter_string.strip())
    try:
        return list(
            mlflow.search_runs(
                **where,
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


def download_artifacts(run_id: str, artifact_path: str) -> Path:
    """A local copy of one artifact file or directory of a run; a missing one raises SteerkitError."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path))
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise SteerkitError(f"run {run_id} has no artifact {artifact_path!r}") from exc


def find_step_run(experiment_id: str, entry_point: str, params: Mapping[str, str], version: str) -> str | None:
    """The newest FINISHED run in the experiment that `steerkit.tracking.resume.matches_step` accepts, else None."""
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


def child_runs(parent_run_id: str) -> list[Any]:
    """Every run nested under `parent_run_id` (any status), oldest first."""
    parent = mlflow.get_run(parent_run_id)
    return list(
        mlflow.search_runs(
            experiment_ids=[parent.info.experiment_id],
            filter_string=f"tags.`{TAG_PARENT_RUN}` = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"],
            output_format="list",
        )
    )


def parse_runs_uri(uri: str) -> tuple[str, str]:
    """`runs:/<run_id>/<artifact path>` -> (run_id, artifact path)."""
    run_id, _, artifact = uri.removeprefix("runs:/").strip("/").partition("/")
    if not uri.startswith("runs:/") or not run_id or not artifact.strip("/"):
        raise SteerkitError(f"expected runs:/<run_id>/<artifact path>, got {uri!r}")
    return run_id, artifact.strip("/")


def local_artifact(source: str | Path, default_artifact: str | None = None) -> Path:
    """A local path for `source`: a `runs:/` URI is downloaded; with `default_artifact`, a bare run id (not an
    existing path) means that artifact of the run; anything else is returned as a path unchanged."""
    text = str(source)
    if text.startswith("runs:/"):
        return download_artifacts(*parse_runs_uri(text))
    if default_artifact is not None and not Path(text).exists() and RUN_ID.match(text):
        return download_artifacts(text, default_artifact)
    return Path(text)


def finished_run_table(
    run_id: str, entry_point: str, expect: Mapping[str, Any], artifact_file: str
) -> list[dict[str, Any]]:
    """A table of a FINISHED run of `entry_point`, after checking that its params match `expect` (as strings,
    case-insensitively): a later phase reads an earlier phase's results only if they measured the same thing."""
    params = finished_run_of(run_id, entry_point).data.params
    for key, want in expect.items():
        if str(params.get(key, "")).lower() != str(want).lower():
            what = entry_point.split("_")[0]
            raise SteerkitError(f"{what} run {run_id} has {key}={params.get(key)!r}, this run needs {want!r}")
    return load_run_table(run_id, artifact_file)


def finished_run_of(run_id: str, entry_point: str) -> Any:
    """The run with this id; it must be FINISHED and of `entry_point` (a later phase reads an earlier one's)."""
    run = get_finished_run(run_id)
    if run.data.tags.get(TAG_ENTRY_POINT) != entry_point:
        raise SteerkitError(f"run {run_id!r} is not a {entry_point} run")
    return run


def phase_params_and_record(run_id: str, entry_point: str, artifact_file: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The params and the JSON result `artifact_file` of a FINISHED run of `entry_point` (a later phase checks
    what an earlier one measured before using its result, e.g. `scale=from:RUN_ID`)."""
    params = dict(finished_run_of(run_id, entry_point).data.params)
    try:  # `log_json` (mlflow.log_dict) may write indented JSON: read the whole file, not line by line
        return params, json.loads(download_artifacts(run_id, artifact_file).read_text())
    except ValueError as exc:
        raise SteerkitError(f"run {run_id} artifact {artifact_file!r} is not JSON") from exc


def phase_record(run_id: str, entry_point: str, artifact_file: str) -> dict[str, Any]:
    """The JSON result `artifact_file` of a FINISHED run of `entry_point` (e.g. find_features' features.json)."""
    finished_run_of(run_id, entry_point)
    return load_jsonl_artifact(run_id, artifact_file)[0]
