"""Hyperparameter search: studies (`search` is the only package that imports optuna).

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

A study's name is derived in one place (`study_name`): an explicit name, or the entry point plus a hash of every
setting fixed across its trials, so a changed setting starts a fresh study and the same settings resume it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from steerkit import tracking
from steerkit.errors import SteerkitError
from steerkit.search.callback import MlflowTrials

SamplerName = Literal["grid", "tpe"]
Direction = Literal["minimize", "maximize"]
DEFAULT_STORAGE = "sqlite:///optuna.db"


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
            {tracking.TAG_OPTUNA_STUDY: config.study_name, tracking.TAG_OPTUNA_STORAGE: redact_storage(config.storage)}
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
    from steerkit.plots import plt

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


def study_name(given: str, prefix: str, facts: Mapping[str, Any], suffix: str = "") -> str:
    """The one study-name rule: `given` unless it is 'auto', else `<prefix>-<sha256(facts)[:12]>`; `-suffix` last.

    'auto' names a study after everything fixed across its trials (model, corpus, layer, code version, ...), so a
    changed setting starts afresh and a re-run with the same settings resumes the same study.
    """
    if given != "auto":
        name = str(given)
    else:
        digest = hashlib.sha256(json.dumps(dict(facts), sort_keys=True, default=str).encode()).hexdigest()[:12]
        name = f"{prefix}-{digest}"
    return f"{name}-{suffix}" if suffix else name


def storage_url(url: str) -> str:
    """`postgresql://` names SQLAlchemy's psycopg (v3) driver; steerkit ships psycopg2, so use it unless v3 is there."""
    if re.match(r"postgres(ql)?://", url) and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url
