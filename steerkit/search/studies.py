"""Hyperparameter search: studies (`search` is the only package that imports optuna).

Design note: a study lives in an Optuna storage named by URL (a sqlite file by default; a PostgreSQL URL lets
several workers share one study) and is opened with `load_if_exists=True`, so re-running a sweep resumes it. For a
grid, the points already finished are counted first and only the rest are run, so a resumed grid never re-evaluates
a point. Samplers are seeded (`GridSampler` shuffles its order with the seed, `TPESampler` draws with it), so a
sweep is reproducible. Tracking follows one rule: the study runs under one parent MLflow run (the entry point's),
and each trial runs inside a nested child run in the same experiment, opened *before* the objective so that the
objective can log its own artifacts there; `MlflowTrials` (our own small callback; optuna-integration's
MLflowCallback is deprecated and mis-nests runs) then logs the trial's params, value(s), user attrs and final state
onto that child run. At the end Optuna's plots are logged on the parent (matplotlib PNGs and one interactive plotly
page), skipping the ones a study cannot draw; a multi-objective study also logs its Pareto front (`pareto.json`).

A study's name is derived in one place (`study_name`): an explicit name, or a readable label (entry point, model,
layer) plus a hash of every setting fixed across its trials, so a changed setting starts a fresh study and the same
settings resume it. The default storage is one fixed file per user (`default_storage`: `~/.steerkit/optuna.db`, or
`$STEERKIT_OPTUNA_STORAGE`), not the working directory, which `mlflow run` may make a temporary clone. With
`pruner="wilcoxon"` a trial reports per-item values (`steerkit.core.pruning`) and Optuna's WilcoxonPruner stops it
once it is significantly worse than the best trial on the items seen so far.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import itertools
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

from steerkit import tracking
from steerkit.core.progress import progress as progress_bar
from steerkit.errors import Pruned, SteerkitError, optional_import
from steerkit.search.callback import RUN_ID_ATTR, MlflowTrials, value_names

SamplerName = Literal["grid", "tpe"]
PrunerName = Literal["none", "wilcoxon"]
Direction = Literal["minimize", "maximize"]
DEFAULT_STORAGE = "default"  # resolved by `default_storage()`
STORAGE_ENV = "STEERKIT_OPTUNA_STORAGE"


def default_storage() -> str:
    """`$STEERKIT_OPTUNA_STORAGE`, else `sqlite:///~/.steerkit/optuna.db` (expanded): one fixed place per user, so a
    study resumes whatever directory (a temporary clone by `mlflow run`, a notebook) the sweep starts from."""
    return os.environ.get(STORAGE_ENV) or f"sqlite:///{Path.home() / '.steerkit' / 'optuna.db'}"


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
    pruner: PrunerName = "none"
    prune_p: float = 0.1

    def __post_init__(self) -> None:
        if self.storage == DEFAULT_STORAGE:
            object.__setattr__(self, "storage", default_storage())
        if self.pruner not in ("none", "wilcoxon"):
            raise SteerkitError(f"pruner must be 'none' or 'wilcoxon', got {self.pruner!r}")
        if not 0.0 < self.prune_p < 1.0:
            raise SteerkitError(f"prune_p must be in (0, 1), got {self.prune_p!r}")
        if self.pruner != "none" and len(self.directions) > 1:
            raise SteerkitError(f"pruner {self.pruner!r} needs one objective, got directions {list(self.directions)}")
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

    def make_pruner(self) -> Any:
        """Optuna's pruner: `WilcoxonPruner` (paired per-item test against the best trial) or none."""
        if self.pruner == "none":
            return optuna.pruners.NopPruner()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=self.prune_p)

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
        pruner=config.make_pruner(),
        directions=list(config.directions),
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != list(config.directions):
        raise SteerkitError(f"stored study {config.study_name!r} has directions {study.directions!r}")
    n_trials = config.n_trials
    if config.sampler == "grid":
        remaining = _remaining_grid(study, config)
        n_trials = remaining if n_trials is None else min(n_trials, remaining)
    callbacks: list[Any] = []
    objective = prunable(objective)
    if track:
        tracking.set_tags(
            {tracking.TAG_OPTUNA_STUDY: config.study_name, tracking.TAG_OPTUNA_STORAGE: redact_storage(config.storage)}
        )
        trials = MlflowTrials(config.study_name, metric_names)
        objective, callbacks = trials.wrap(objective), [trials]
    if n_trials:
        with progress_bar(desc=f"trials {config.study_name}", total=n_trials, unit="trial") as bar:
            callbacks.append(lambda _study, _trial: bar.update())
            study.optimize(objective, n_trials=n_trials, callbacks=callbacks, gc_after_trial=False)
    if track:
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        tracking.log_metrics({"n_trials_run": n_trials or 0, "n_trials_total": len(study.trials), "n_pruned": pruned})
        if len(config.directions) > 1:
            tracking.log_table(pareto_front(study, metric_names), "pareto.json")
        log_study_plots(study)
    return study


def pareto_front(study: Any, metric_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """A multi-objective study's Pareto front (Optuna's `best_trials`: the complete trials no other complete trial
    dominates), one row per trial: its number, params, values by name and MLflow run id."""
    names = value_names(metric_names, len(study.directions))
    return [
        {"trial": t.number, **t.params, **dict(zip(names, t.values)), "run_id": t.user_attrs.get(RUN_ID_ATTR)}
        for t in study.best_trials
    ]


def prunable(objective: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The objective, its `steerkit.errors.Pruned` raised as `optuna.TrialPruned` (the trial ends PRUNED)."""

    def run(trial: Any) -> Any:
        try:
            return objective(trial)
        except Pruned as exc:
            raise optuna.TrialPruned(str(exc)) from exc

    return run


def _plot_names(study: Any) -> list[str]:
    """The `optuna.visualization` plots that suit the study (the matplotlib module has the same names)."""
    if len(study.directions) > 1:
        return ["plot_pareto_front"]
    names = ["plot_optimization_history", "plot_slice", "plot_param_importances"]
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        names.append("plot_intermediate_values")  # pruning: the per-item reports of every trial
    return names


def _draw(module: Any, name: str, study: Any) -> Any | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(module, name)(study)
    except Exception:  # noqa: BLE001 - e.g. importances need >= 2 completed trials with varying params
        return None


def log_study_plots(study: Any, prefix: str = "optuna") -> list[str]:
    """Log Optuna's plots: matplotlib figures `<prefix>/<plot>.png` and one interactive page `<prefix>/plots.html`
    (plotly, with plotly.js embedded once so it opens offline); plots the study cannot draw are skipped.

    Returns the names logged; the skipped ones are listed in the tag `steerkit.optuna_plots_skipped`.
    """
    from steerkit.plots import plt

    logged, skipped, pages = [], [], []  # type: list[str], list[str], list[str]
    for name in _plot_names(study):
        short = name.removeprefix("plot_")
        drawn = _draw(optuna.visualization.matplotlib, name, study)
        page = _draw(optuna.visualization, name, study)
        if drawn is None or page is None:
            skipped.append(short)
            continue
        axes = drawn.flat[0] if hasattr(drawn, "flat") else drawn
        tracking.log_figure(axes.figure, f"{prefix}/{short}.png")
        plt.close(axes.figure)
        pages.append(page.to_html(full_html=False, include_plotlyjs=not pages))
        logged.append(short)
    if pages:
        title = f"<h1>Optuna study {html.escape(study.study_name)}</h1>"
        tracking.log_text(f"<html><head><meta charset='utf-8'></head><body>{title}{''.join(pages)}</body></html>",
                          f"{prefix}/plots.html")  # fmt: skip
    if skipped:
        tracking.set_tags({"steerkit.optuna_plots_skipped": ",".join(skipped)})
    return logged


def study_name(given: str, prefix: str, facts: Mapping[str, Any], suffix: str = "", label: Sequence[Any] = ()) -> str:
    """The one study-name rule: `given` unless it is 'auto', else `<prefix>-<label...>-<sha256(facts)[:8]>`; `-suffix`
    last.

    'auto' names a study after everything fixed across its trials (model, corpus, layer, code version, ...), so a
    changed setting starts afresh and a re-run with the same settings resumes the same study. `label` is the
    readable part (model, `L18`, ...: `n50-scale-smollm2-135m-instruct-L18-1a2b3c4d`), each part slugged; the hash
    still decides identity.
    """
    if given != "auto":
        name = str(given)
    else:
        digest = hashlib.sha256(json.dumps(dict(facts), sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = "-".join([prefix, *(slug(part) for part in label), digest])
    return f"{name}-{suffix}" if suffix else name


def slug(value: Any, max_len: int = 24) -> str:
    """A short lowercase name part: the last path component of `value`, runs of other characters as one '-'."""
    text = re.sub(r"[^a-z0-9.]+", "-", str(value).rstrip("/").rsplit("/", 1)[-1].lower()).strip("-.")
    return text[:max_len].rstrip("-.") or "x"


def storage_url(url: str) -> str:
    """`postgresql://` names SQLAlchemy's psycopg (v3) driver; steerkit ships psycopg2, so use it unless v3 is there."""
    if re.match(r"postgres(ql)?://", url) and importlib.util.find_spec("psycopg") is None:
        optional_import("psycopg2", "postgres", f"storage {redact_storage(url)}")
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url
