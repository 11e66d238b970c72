"""Scale-out: several worker processes on one grid study in a shared database.

Design note: N worker processes, on one machine or many, share one grid study in a database
(PostgreSQL). Optuna's GridSampler alone can hand the same point to two workers, so the grid is enqueued instead:
the one process whose `create_study` succeeds (the database's unique study name decides) creates the study's
MLflow parent run, stores its id and the grid as study user attrs and enqueues every point; the others wait
for that set-up to be marked done. Each worker then claims WAITING trials one at a time (a trial moves to RUNNING
only if it is still WAITING, checked by the database) and never asks the sampler for a new one, so every point
is evaluated exactly once. Trials are child runs of the shared parent; the worker that finds every trial finished
after its own last one logs the summary and plots on the parent and ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from steerkit import tracking
from steerkit.errors import SteerkitError
from steerkit.search.callback import MlflowTrials
from steerkit.search.studies import StudyConfig, log_study_plots, storage_url

PARENT_ATTR = "mlflow_parent_run_id"


GRID_ATTR = "steerkit_grid"


READY_ATTR = "steerkit_setup_done"


def shared_storage(url: str, attempts: int = 5) -> Any:
    """An Optuna RDB storage, retried: workers starting together race to create its tables on a fresh database."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(storage_url(url))
        except Exception:  # noqa: BLE001 - the loser sees a SQLAlchemy IntegrityError/ProgrammingError
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_grid_study(config: StudyConfig, make_parent: Callable[[], str], wait_s: float = 120.0) -> tuple[Any, bool]:
    """Create the grid study and set it up, or join it once its creator has; returns (study, created_here).

    The creator (the process whose `create_study` wins) calls `make_parent()` for the MLflow parent run id, then
    enqueues every grid point. A joiner waits up to `wait_s` for that, and checks it has the same grid.

    Raises:
        SteerkitError: If the config is not a grid, the stored study has another grid, or its set-up never ends.
    """
    if config.sampler != "grid":
        raise SteerkitError(f"scale-out workers need sampler='grid', got {config.sampler!r}")
    grid = [{k: point[k] for k in sorted(point)} for point in config.grid_points()]
    kwargs: dict[str, Any] = {"study_name": config.study_name, "storage": shared_storage(config.storage)}
    try:
        study = optuna.create_study(**kwargs, directions=list(config.directions), load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        study = None
    if study is None:
        return _join_grid_study(optuna.load_study(**kwargs), grid, wait_s), False
    study.set_user_attr(PARENT_ATTR, make_parent())
    study.set_user_attr(GRID_ATTR, grid)
    for point in grid:
        study.enqueue_trial(point, skip_if_exists=True)
    study.set_user_attr(READY_ATTR, True)
    return study, True


def _join_grid_study(study: Any, grid: list[dict[str, Any]], wait_s: float) -> Any:
    deadline = time.monotonic() + wait_s
    while READY_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            raise SteerkitError(f"study {study.study_name!r} was never set up (its creator stopped?)")
        time.sleep(0.5)
    if study.user_attrs.get(GRID_ATTR) != grid:
        raise SteerkitError(f"study {study.study_name!r} holds grid {study.user_attrs.get(GRID_ATTR)}, not {grid}")
    return study


def claim_waiting_trial(study: Any) -> Any | None:
    """Claim one enqueued trial for this process (WAITING -> RUNNING, decided by the storage), or None if none left.

    Unlike `study.ask()` this never creates a new trial, so a drained queue means the grid is done.
    """
    storage = study._storage  # the claim needs the storage's compare-and-set; Study has no public handle to it
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=optuna.trial.TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def run_grid_worker(
    objective: Callable[[Any], float | Sequence[float]],
    study: Any,
    metric_names: Sequence[str] | None = None,
) -> list[int]:
    """Run claimed trials until none is WAITING, each in a child run of the study's parent; their numbers.

    An objective that raises fails its trial (state FAIL, child run FAILED) and the error propagates.
    """
    trials = MlflowTrials(study.study_name, metric_names, parent_run_id=study.user_attrs[PARENT_ATTR])
    tracked, done = trials.wrap(objective), []
    while (trial := claim_waiting_trial(study)) is not None:
        try:
            value = tracked(trial)
        except Exception:
            trials(study, study.tell(trial, state=optuna.trial.TrialState.FAIL))
            raise
        trials(study, study.tell(trial, value))
        done.append(trial.number)
    return done


def finish_if_complete(study: Any) -> bool:
    """If no trial is WAITING or RUNNING, log the study's summary and plots on its parent run and end it FINISHED.

    Every worker calls this after its last trial; the last one to finish sees the study complete (two that finish
    together may both log the same summary, which is harmless).
    """
    trials = study.get_trials(deepcopy=False)
    if any(not t.state.is_finished() for t in trials):
        return False
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    with tracking.reopened_run(study.user_attrs[PARENT_ATTR]):
        summary: dict[str, float | int | None] = {"n_trials_total": len(trials), "n_trials_complete": len(complete)}
        if complete and len(study.directions) == 1:
            summary["best_value"] = study.best_value
        tracking.log_metrics(summary)
        log_study_plots(study)
    return True
