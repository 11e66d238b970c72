"""The MLflow side of a study: one nested child run per trial, opened before the objective runs.

Design note: optuna-integration's MLflowCallback is deprecated and mis-nests runs, so `MlflowTrials` is our own
small callback: it opens the trial's child run (the objective logs its own artifacts there) and afterwards logs
the trial's params, value(s), user attrs and final state onto it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from steerkit import tracking

RUN_ID_ATTR = "mlflow_run_id"


def value_names(metric_names: Sequence[str] | None, n: int) -> list[str]:
    """What a trial's `n` values are called: `metric_names` when there is one per value, else value / value_i."""
    if metric_names and len(metric_names) == n:
        return list(metric_names)
    return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]


_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


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
            tags = {tracking.TAG_OPTUNA_STUDY: self.study_name, "steerkit.optuna_trial": trial.number}
            name = tracking.trial_run_name(trial.number, trial.params)  # a grid trial's params may be known
            with tracking.child_run(name, tags=tags, parent_run_id=self.parent_run_id) as run_id:
                trial.set_user_attr(RUN_ID_ATTR, run_id)
                return objective(trial)

        return tracked

    def _value_names(self, n: int) -> list[str]:
        return value_names(self.metric_names, n)

    def __call__(self, study: Any, trial: Any) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id is None:
            return  # a trial run without `wrap` (e.g. enqueued by another worker): nothing to attach to
        values = list(trial.values or [])
        metrics: dict[str, float | int | None] = dict(zip(self._value_names(len(values)), values))
        attrs = {k: v for k, v in trial.user_attrs.items() if k != RUN_ID_ATTR}
        metrics.update({k: v for k, v in attrs.items() if isinstance(v, int | float) and not isinstance(v, bool)})
        texts = {f"steerkit.user_attr.{k}": v for k, v in attrs.items() if k not in metrics}
        name = tracking.trial_run_name(trial.number, trial.params)  # `trial 4 coef=50`, now the params are sampled
        tracking.update_run(
            run_id,
            params=trial.params,
            metrics=metrics,
            tags={"steerkit.optuna_state": trial.state.name, tracking.TAG_RUN_NAME: name, **texts},
            status=_STATUS.get(trial.state.name, "FAILED"),
        )
