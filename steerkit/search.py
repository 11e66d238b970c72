"""Hyperparameter search: the only module that imports optuna.

Design note: a study lives in an Optuna storage named by URL (a sqlite file `optuna.db` in the working directory
by default; a PostgreSQL URL lets several workers share one study) and is opened with `load_if_exists=True`, so
re-running a sweep resumes it. For a grid, the points already finished are counted first and only the rest are
run, so a resumed grid never re-evaluates a point. Samplers are seeded (`GridSampler` shuffles its order with
the seed, `TPESampler` draws with it), so a sweep is reproducible. Tracking follows one rule: the study runs
under one parent MLflow run (the entry point's), and each trial runs inside a nested child run in the same
experiment, opened *before* the objective so that the objective can log its own artifacts there;
`MlflowTrials` (our own small callback; optuna-integration's MLflowCallback is deprecated and mis-nests runs)
then logs the trial's params, value(s), user attrs and final state onto that child run. At the end Optuna's
matplotlib plots are logged as figures on the parent, skipping the ones a study cannot draw.

Scale-out (`run_grid_worker`): N worker processes, on one machine or many, share one grid study in a database
(PostgreSQL). Optuna's GridSampler alone can hand the same point to two workers, so the grid is enqueued instead:
the one process whose `create_study` succeeds (the database's unique study name decides) creates the study's
MLflow parent run, stores its id and the grid as study user attrs and enqueues every point; the others wait
for that set-up to be marked done. Each worker then claims WAITING trials one at a time (a trial moves to RUNNING
only if it is still WAITING, checked by the database) and never asks the sampler for a new one, so every point
is evaluated exactly once. Trials are child runs of the shared parent; the worker that finds every trial finished
after its own last one logs the summary and plots on the parent and ends it.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from steerkit import tracking
from steerkit.errors import SteerkitError

SamplerName = Literal["grid", "tpe"]
Direction = Literal["minimize", "maximize"]
DEFAULT_STORAGE = "sqlite:///optuna.db"
RUN_ID_ATTR = "mlflow_run_id"
PARENT_ATTR = "mlflow_parent_run_id"
GRID_ATTR = "steerkit_grid"
READY_ATTR = "steerkit_setup_done"
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@dataclass(frozen=True)
class StudyConfig:
    """What defines a study: name, storage URL, direction(s), sampler (+ grid space), seed and trial count.

    `n_trials=None` means the whole grid for `sampler="grid"`, and is an error for TPE.
    """

    study_name: str
    storage: str = DEFAULT_STORAGE
    directions: tuple[Direction, ...] = ("maximize",)
    sampler: SamplerName = "tpe"
    search_space: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seed: int = 0
    n_trials: int | None = None

    def __post_init__(self) -> None:
        if not self.study_name.strip():
            raise SteerkitError(f"study_name must be non-empty, got {self.study_name!r}")
        if "://" not in self.storage:
            raise SteerkitError(
                f"storage must be a database URL (sqlite:///..., postgresql://...), got {self.storage!r}"
            )
        bad = [d for d in self.directions if d not in ("minimize", "maximize")]
        if not self.directions or bad:
            raise SteerkitError(f"directions must be 'minimize'/'maximize', got {list(self.directions)!r}")
        if self.sampler not in ("grid", "tpe"):
            raise SteerkitError(f"sampler must be 'grid' or 'tpe', got {self.sampler!r}")
        if self.sampler == "grid" and (not self.search_space or any(len(v) == 0 for v in self.search_space.values())):
            raise SteerkitError(f"a grid sampler needs a non-empty search space, got {dict(self.search_space)!r}")
        if self.n_trials is not None and self.n_trials < 1:
            raise SteerkitError(f"n_trials must be >= 1, got {self.n_trials!r}")
        if self.sampler == "tpe" and self.n_trials is None:
            raise SteerkitError("n_trials is required for the tpe sampler, got None")

    def make_sampler(self, constraints: Callable[[Any], Sequence[float]] | None = None) -> Any:
        """The seeded Optuna sampler."""
        if self.sampler == "grid":
            if constraints is not None:
                raise SteerkitError("constraints need sampler='tpe', got sampler='grid'")
            return optuna.samplers.GridSampler({k: list(v) for k, v in self.search_space.items()}, seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, constraints_func=constraints)

    def grid_points(self) -> list[dict[str, Any]]:
        keys = sorted(self.search_space)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.search_space[k] for k in keys))]


class MlflowTrials:
    """Track each trial in a nested MLflow child run of the active (parent) run.

    `wrap(objective)` opens the child run around the objective (so the objective may log there); the instance
    itself is the Optuna callback that logs params, value(s), user attrs and state after the trial ends.
    """

    def __init__(
        self, study_name: str, metric_names: Sequence[str] | None = None, parent_run_id: str | None = None
    ) -> None:
        self.study_name = study_name
        self.metric_names = list(metric_names) if metric_names else None
        self.parent_run_id = parent_run_id  # None: the active run is the parent

    def wrap(self, objective: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def tracked(trial: Any) -> Any:
            tags = {"steerkit.optuna_study": self.study_name, "steerkit.optuna_trial": trial.number}
            with tracking.child_run(f"trial-{trial.number}", tags=tags, parent_run_id=self.parent_run_id) as run_id:
                trial.set_user_attr(RUN_ID_ATTR, run_id)
                return objective(trial)

        return tracked

    def _value_names(self, n: int) -> list[str]:
        if self.metric_names and len(self.metric_names) == n:
            return self.metric_names
        return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]

    def __call__(self, study: Any, trial: Any) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is None:
            return  # a trial run without `wrap` (e.g. enqueued by another worker): nothing to attach to
        values = list(trial.values or [])
        metrics: dict[str, float | int | None] = dict(zip(self._value_names(len(values)), values))
        attrs = {k: v for k, v in trial.user_attrs.items() if k != RUN_ID_ATTR}
        metrics.update({k: v for k, v in attrs.items() if isinstance(v, int | float) and not isinstance(v, bool)})
        texts = {f"steerkit.user_attr.{k}": v for k, v in attrs.items() if k not in metrics}
        tracking.update_run(
            run_id,
            params=trial.params,
            metrics=metrics,
            tags={"steerkit.optuna_state": trial.state.name, **texts},
            status=_STATUS.get(trial.state.name, "FAILED"),
        )


def redact_storage(url: str) -> str:
    """The storage URL with any password masked, for logging (prefer PGPASSWORD or ~/.pgpass to a password in a URL)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _remaining_grid(study: Any, config: StudyConfig) -> int:
    done = [t.params for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    return sum(point not in done for point in config.grid_points())


def run_study(
    objective: Callable[[Any], float | Sequence[float]],
    config: StudyConfig,
    *,
    constraints: Callable[[Any], Sequence[float]] | None = None,
    track: bool = True,
    metric_names: Sequence[str] | None = None,
) -> Any:
    """Create or resume (`load_if_exists=True`) a study and run the trials it still needs; returns the study.

    With `track=True` an MLflow run must be active: it is the study's parent run, each trial gets a nested
    child run, and the plots are logged on the parent at the end.

    Raises:
        SteerkitError: If the config is invalid, or the stored study has other directions.
    """
    study = optuna.create_study(
        study_name=config.study_name,
        storage=storage_url(config.storage),
        sampler=config.make_sampler(constraints),
        directions=list(config.directions),
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != list(config.directions):
        raise SteerkitError(f"stored study {config.study_name!r} has directions {study.directions!r}")
    n_trials = config.n_trials
    if config.sampler == "grid":
        remaining = _remaining_grid(study, config)
        n_trials = remaining if n_trials is None else min(n_trials, remaining)
    callbacks = []
    if track:
        tracking.set_tags(
            {"steerkit.optuna_study": config.study_name, "steerkit.optuna_storage": redact_storage(config.storage)}
        )
        trials = MlflowTrials(config.study_name, metric_names)
        objective, callbacks = trials.wrap(objective), [trials]
    if n_trials:
        study.optimize(objective, n_trials=n_trials, callbacks=callbacks, gc_after_trial=False)
    if track:
        tracking.log_metrics({"n_trials_run": n_trials or 0, "n_trials_total": len(study.trials)})
        log_study_plots(study)
    return study


def _plots(study: Any) -> dict[str, Callable[[], Any]]:
    vis = optuna.visualization.matplotlib
    if len(study.directions) > 1:
        return {"pareto_front": lambda: vis.plot_pareto_front(study)}
    return {
        "optimization_history": lambda: vis.plot_optimization_history(study),
        "slice": lambda: vis.plot_slice(study),
        "param_importances": lambda: vis.plot_param_importances(study),
    }


def log_study_plots(study: Any, prefix: str = "optuna") -> list[str]:
    """Log Optuna's matplotlib plots as figures `<prefix>/<plot>.png`; plots the study cannot draw are skipped.

    Returns the names logged; the skipped ones are listed in the tag `steerkit.optuna_plots_skipped`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged, skipped = [], []
    for name, draw in _plots(study).items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                drawn = draw()
        except Exception:  # noqa: BLE001 - e.g. importances need >= 2 completed trials with varying params
            skipped.append(name)
            continue
        axes = drawn.flat[0] if hasattr(drawn, "flat") else drawn
        tracking.log_figure(axes.figure, f"{prefix}/{name}.png")
        plt.close(axes.figure)
        logged.append(name)
    if skipped:
        tracking.set_tags({"steerkit.optuna_plots_skipped": ",".join(skipped)})
    return logged


# --- Scale-out: several worker processes on one grid study in a shared database --------------------------------


def storage_url(url: str) -> str:
    """`postgresql://` names SQLAlchemy's psycopg (v3) driver; steerkit ships psycopg2, so use it unless v3 is there."""
    if re.match(r"postgres(ql)?://", url) and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


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
