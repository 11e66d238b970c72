"""Runs other than the active one: child runs, the `main` driver's steps, scale-out parents.

Design note: a step launched by the `main` driver is a child of the driver's run (MLflow tags `mlflow.parentRunId`);
a scale-out worker's trials go under a study parent that no process holds active (`child_run(parent_run_id=)`,
`create_run`, `reopened_run`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import mlflow
import mlflow.projects
from mlflow.entities import RunStatus

from steerkit.errors import SteerkitError
from steerkit.tracking.runs import set_tags
from steerkit.tracking.tags import TAG_PARENT_RUN


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
        created = client.create_run(experiment_id, run_name=run_name, tags={TAG_PARENT_RUN: parent_run_id})
        run = mlflow.start_run(run_id=created.info.run_id, nested=True)
    try:
        if tags:
            set_tags(tags)
        yield str(run.info.run_id)
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run()


def active_experiment_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise SteerkitError("no active MLflow run")
    return str(run.info.experiment_id)


def experiment_name(experiment_id: str) -> str:
    return str(mlflow.MlflowClient().get_experiment(experiment_id).name)


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
