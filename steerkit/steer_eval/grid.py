"""`GridObjective`: a search objective over an `EvalSession`'s coefficients, one trial per coefficient.

Design note: like the seed experiments' objectives (`attention.n50.NewTestGain`) it takes an Optuna-style trial
without importing optuna (`steerkit.search` runs the study and tracks each trial in a nested MLflow run; the caller
passes `record` to log there). A trial's value is the coefficient's paired effect (risk difference for a binary
scorer, which is the mean of the per-prompt differences the pruner saw; the median difference for a continuous
one, what the pruner's signed-rank test is about); with `objectives=("effect", "kl")` it is `(effect, mean KL)`,
for a study that maximises the effect and minimises the divergence from the unsteered model (its Pareto front).

A pruned coefficient is no result, but it stays a member of the family declared before the data: `finish` runs
Benjamini-Hochberg over every coefficient of the grid, a pruned one at p = 1 (never rejected), and names the pruned
ones, so the caller can log both (dropping them would shrink the family after seeing the data).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from steerkit.core.records import RecordLog
from steerkit.errors import SteerkitError
from steerkit.steer_eval.evaluation import CoefResult, EvalSession, adjust_grid

OBJECTIVES = ("effect", "kl")
DIRECTIONS: dict[str, Literal["minimize", "maximize"]] = {"effect": "maximize", "kl": "minimize"}
METRICS = {"effect": "effect", "kl": "kl_mean"}
Record = Callable[[Mapping[str, Any], list[dict[str, Any]]], None]


def parse_objectives(text: str) -> tuple[str, ...]:
    """`effect` or `effect,kl` -> the objective names, checked (the effect always comes first)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if names not in (("effect",), ("effect", "kl")):
        raise SteerkitError(f"objectives must be 'effect' or 'effect,kl', got {text!r}")
    return names


class GridObjective:
    """The objective of a grid study over `session.coefs`: generate, score and test one coefficient per trial.

    Args:
        session: the evaluation (its baseline is generated once and shared by every trial).
        objectives: `("effect",)` or `("effect", "kl")`.
        prune_every: prompts per pruning check (0: report once, at the end; the pruner never stops a trial then).
        arm_log: a new per-trial log of the steered generations (written as they finish).
        record: `record(metrics, table)` in the trial's run: the completed coefficient's figures and per-sample
            table, or, for a pruned one, what it saw before it stopped (`pruned` = 1).
    """

    def __init__(
        self,
        session: EvalSession,
        *,
        objectives: Sequence[str] = ("effect",),
        prune_every: int = 0,
        arm_log: Callable[[], RecordLog] | None = None,
        record: Record | None = None,
    ) -> None:
        self.session, self.objectives, self.prune_every = session, tuple(objectives), prune_every
        self.arm_log, self.record = arm_log, record
        self.completed: dict[float, tuple[CoefResult, int]] = {}  # coef -> (result, trial number)
        self.pruned: dict[float, int] = {}  # coef -> trial number

    @property
    def metric_names(self) -> list[str]:
        return [METRICS[name] for name in self.objectives]

    def _log(self, metrics: Mapping[str, Any], result: CoefResult) -> None:
        if self.record is not None:
            self.record({k: v for k, v in {**result.metrics(), **metrics}.items() if k != "q_value"}, result.table)

    def evaluate(self, coef: float, trial: Any = None) -> CoefResult:
        """The coefficient's result, its steered generations written to a new `arm_log` as they finish; with a
        `trial`, reported to its pruner (a pruned one is recorded, then `steerkit.errors.Pruned` propagates)."""
        log = self.arm_log() if self.arm_log is not None else None
        on_result = (lambda g: log.append(g.to_dict())) if log is not None else None

        def pruned(partial: CoefResult) -> None:
            self.pruned[coef] = trial.number
            self._log({"pruned": 1, "n_prompts_seen": len(partial.table)}, partial)

        try:
            return self.session.coefficient(
                coef, on_result, trial=trial, prune_every=self.prune_every, on_pruned=pruned
            )
        finally:
            if log is not None:
                log.flush()

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        coef = float(trial.suggest_categorical("coef", self.session.coefs))
        result = self.evaluate(coef, trial if len(self.objectives) == 1 else None)  # Optuna: no reports with two
        extra = {"kl_mean": self.session.divergence(coef)} if "kl" in self.objectives else {}
        self.completed[coef] = (result, trial.number)
        self._log({"pruned": 0, **extra}, result)
        if "kl" in self.objectives:
            return result.test.effect, extra["kl_mean"]
        return result.test.effect

    def finish(self, alpha: float) -> tuple[list[tuple[CoefResult, int]], list[float]]:
        """BH over the grid, a pruned coefficient at p = 1: `([(result with q, trial number)], pruned coefs)`.

        Raises:
            SteerkitError: If a coefficient was not run here (the study already held its trial).
        """
        missing = [c for c in self.session.coefs if c not in self.completed and c not in self.pruned]
        if missing:
            raise SteerkitError(
                f"coefficients {missing} were not run here (the study already held them): new study_name"
            )
        done = [c for c in self.session.coefs if c in self.completed]
        pruned = [c for c in self.session.coefs if c in self.pruned]
        adjusted = adjust_grid([self.completed[c][0] for c in done], alpha, not_run=len(pruned)) if done else []
        return [(r, self.completed[c][1]) for r, c in zip(adjusted, done)], pruned
