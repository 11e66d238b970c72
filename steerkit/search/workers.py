"""Scale-out: several worker processes on one grid study in a shared database.

Design note: N worker processes, on one machine or many, share one grid study in a database (PostgreSQL). Optuna's
GridSampler alone can hand the same point to two workers, so the grid is enqueued instead: the one process whose
`create_study` succeeds (the database's unique study name decides) creates the study's MLflow parent run, stores its
id and the grid as study user attrs and enqueues every point; the others wait for that set-up to be marked done.
Each worker then claims WAITING trials one at a time (a trial moves to RUNNING only if it is still WAITING, checked
by the database) and never asks the sampler for a new one, so every point is evaluated exactly once. With a
heartbeat (`shared_storage(heartbeat_s=...)`) a trial whose worker was killed is failed after the grace period and
re-enqueued (Optuna's `RetryHeartbeatStaleTrialCallback`), so it is still completed exactly once, and its nested
MLflow run, which the dead worker can no longer end, is ended KILLED by the worker that noticed (`RetryStaleTrial`);
only Optuna's public storage API is used. Trials are child runs of the shared parent; the worker that finds every
trial finished after its own last one logs the summary and plots on the parent and ends it."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna

from steerkit import tracking
from steerkit.core.progress import progress as progress_bar
from steerkit.errors import SteerkitError
from steerkit.search.callback import RUN_ID_ATTR, MlflowTrials
from steerkit.search.studies import StudyConfig, log_study_plots, prunable, storage_url

PARENT_ATTR = "mlflow_parent_run_id"


GRID_ATTR = "steerkit_grid"


READY_ATTR = "steerkit_setup_done"


MAX_RETRIES = 3  # a grid point whose worker dies this often is left FAIL: something other than a worker is wrong


class RetryStaleTrial:
    """The heartbeat stale-trial callback: end the dead trial's MLflow child run KILLED, then re-enqueue its point.

    Optuna calls it (from `fail_stale_trials`, in whichever worker looks) with the trial it just failed; the run id
    is the trial's user attr `RUN_ID_ATTR`, set when its child run opened (none: the worker died before that).
    """

    def __init__(self, max_retry: int = MAX_RETRIES) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: Any, trial: Any) -> None:
        self.retry(study, trial)  # first: the point is re-enqueued even if the tracking server is unreachable
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is not None:
            tags = {"steerkit.optuna_state": "FAIL", "steerkit.stale_trial": "no heartbeat: worker gone, point retried"}
            tracking.update_run(run_id, tags=tags, status="KILLED")


def shared_storage(url: str, heartbeat_s: int | None = None, grace_s: int | None = None, attempts: int = 5) -> Any:
    """An Optuna RDB storage, retried: workers starting together race to create its tables on a fresh database.

    With `heartbeat_s` every claimed trial records a heartbeat that often; a RUNNING trial silent for `grace_s`
    (default 2 x heartbeat_s) is failed by the next worker that looks and re-enqueued once per failure
    (`RetryStaleTrial`), so a killed worker's grid point is run again and its MLflow run ends KILLED, neither is
    left RUNNING forever.
    """
    if heartbeat_s is not None and heartbeat_s < 1:
        raise SteerkitError(f"heartbeat_s must be >= 1 second, got {heartbeat_s!r}")
    if grace_s is not None and (heartbeat_s is None or grace_s <= heartbeat_s):
        raise SteerkitError(f"grace_s must exceed heartbeat_s ({heartbeat_s!r}), got {grace_s!r}")
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                beat: dict[str, Any] = {}
                if heartbeat_s is not None:
                    beat = {"heartbeat_interval": heartbeat_s, "grace_period": grace_s}
                    beat["heartbeat_stale_trial_callback"] = RetryStaleTrial()
                return optuna.storages.RDBStorage(storage_url(url), **beat)
        except Exception:  # noqa: BLE001 - the loser sees a SQLAlchemy IntegrityError/ProgrammingError
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_grid_study(
    config: StudyConfig, make_parent: Callable[[], str], wait_s: float = 120.0, storage: Any = None
) -> tuple[Any, bool]:
    """Create the grid study and set it up, or join it once its creator has; returns (study, created_here).

    The creator (the process whose `create_study` wins) calls `make_parent()` for the MLflow parent run id, then
    enqueues every grid point. A joiner waits up to `wait_s` for that, and checks it has the same grid. `storage`
    (from `shared_storage`, e.g. with a heartbeat) defaults to a plain one for `config.storage`; pass the same
    object to `run_grid_worker`.

    Raises:
        SteerkitError: If the config is not a grid, the stored study has another grid, or its set-up never ends.
    """
    if config.sampler != "grid":
        raise SteerkitError(f"scale-out workers need sampler='grid', got {config.sampler!r}")
    grid = [{k: point[k] for k in sorted(point)} for point in config.grid_points()]
    kwargs: dict[str, Any] = {"study_name": config.study_name, "storage": storage or shared_storage(config.storage)}
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


def claim_waiting_trial(study: Any, storage: Any) -> Any | None:
    """Claim one enqueued trial for this process (WAITING -> RUNNING, decided by the storage), or None if none left.

    Unlike `study.ask()` this never creates a new trial, so a drained queue means the grid is done. Only Optuna's
    public storage API is used (`storage` is the study's, from `shared_storage`).
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        if storage.get_heartbeat_interval():
            # Beat before the claim, not after: Optuna fails only RUNNING trials that have a heartbeat, so a worker
            # killed between its claim and its first beat left the trial RUNNING forever and every other worker
            # waiting for it (seen in CI). A beat on a WAITING trial is ignored; two workers beating it at once
            # are fine (Optuna's storage ignores the duplicate insert).
            storage.record_heartbeat(trial_id)
        try:
            if storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.RUNNING):
                return optuna.trial.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


@contextlib.contextmanager
def heartbeat(storage: Any, study: Any, number: int) -> Iterator[None]:
    """Record the trial's heartbeat every `storage.get_heartbeat_interval()` seconds while the block runs.

    `study.optimize` does this itself; a claimed trial runs outside it, so the worker beats here (a small thread
    on the storage's public `record_heartbeat`). Without a heartbeat interval this does nothing.
    """
    interval = storage.get_heartbeat_interval()
    if not interval:
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _next_trial(study: Any, storage: Any, poll_s: float) -> Any | None:
    """The next claimable trial; with a heartbeat, waits while others run (a stale one is failed and re-enqueued)."""
    while True:
        if storage.get_heartbeat_interval():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        if (trial := claim_waiting_trial(study, storage)) is not None:
            return trial
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running or not storage.get_heartbeat_interval():
            return None
        time.sleep(poll_s)


def run_grid_worker(
    objective: Callable[[Any], float | Sequence[float]],
    study: Any,
    storage: Any,
    metric_names: Sequence[str] | None = None,
    poll_s: float = 1.0,
) -> list[int]:
    """Run claimed trials until none is WAITING, each in a child run of the study's parent; their numbers.

    With a heartbeat storage the worker also waits while other workers' trials are RUNNING, so that a trial whose
    worker died (no heartbeat for the grace period) is failed, re-enqueued and run here. An objective that raises
    fails its trial (state FAIL, child run FAILED) and the error propagates.
    """
    trials = MlflowTrials(study.study_name, metric_names, parent_run_id=study.user_attrs[PARENT_ATTR])
    tracked, done = trials.wrap(prunable(objective)), []
    bar = progress_bar(desc=f"trials {study.study_name}", unit="trial")
    while (trial := _next_trial(study, storage, poll_s)) is not None:
        bar.update()
        with heartbeat(storage, study, trial.number):
            try:
                value = tracked(trial)
            except optuna.TrialPruned:
                trials(study, study.tell(trial, state=optuna.trial.TrialState.PRUNED))
                done.append(trial.number)
                continue
            except Exception:
                trials(study, study.tell(trial, state=optuna.trial.TrialState.FAIL))
                raise
        trials(study, study.tell(trial, value))
        done.append(trial.number)
    bar.close()
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
