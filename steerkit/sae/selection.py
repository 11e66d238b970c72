"""Seed 001, phase 4.5: the steering coefficient of each direction, chosen on the hyper split.

Design note: an arm (a feature's decoder direction or the difference-of-means direction) is added at the SAE's own
layer and hook; every program is run in the sandbox and compared with the baseline's completion of the same task
(correction, corruption and flip rates, similarity, syntax errors). Selection maximises correction (or corruption
for the incorrect-preferring feature) under a similarity floor and a syntax-error ceiling (`features`). The
identity control, coefficient 0, must reproduce the baseline through the same path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steerkit.cli import as_bool, as_float, as_float_list, as_int
from steerkit.core.arms import generate_arms
from steerkit.core.generation import Generation, Prompt
from steerkit.core.models import LoadedModel
from steerkit.core.positions import ALL, GENERATED, Selector
from steerkit.core.pruning import chunk_ends, report_items
from steerkit.core.records import MemoryLog, RecordLog
from steerkit.corpora.mbpp import Problem
from steerkit.errors import Pruned, SteerkitError
from steerkit.interventions.residual import HookPoint
from steerkit.sae.arms import Arm, arm_metrics, compare, examples_text, public, with_reference
from steerkit.sae.codegen import build_prompt, solve_problems
from steerkit.sae.effect import check_alpha, mean_residual_norm
from steerkit.sae.features import constraint_values
from steerkit.sae.model import SAE
from steerkit.sae.pipeline import execution_limits, generation_config

DIRECTIONS = ("correct", "incorrect", "dom")
OBJECTIVE = {"correct": "correction_rate", "incorrect": "corruption_rate", "dom": "correction_rate"}
POSITIONS: dict[str, Selector] = {"all": ALL, "generated": GENERATED}
METRICS = (
    "correction_rate",
    "corruption_rate",
    "flip_rate",
    "char_similarity",
    "token_similarity",
    "length_ratio",
    "syntax_error_rate",
)


@dataclass
class Context:
    """What every arm evaluation shares: model, problems of one split, baseline records, settings."""

    loaded: LoadedModel
    problems: list[Problem]
    baseline: dict[int, dict[str, Any]]
    bcfg: dict[str, Any]
    positions: Selector
    log: Callable[[str], RecordLog] = lambda name: MemoryLog()  # the script passes tracking.SampleLog
    reference: list[dict[str, Any]] | None = None  # the coefficient-0 arm's rows (`arms.with_reference`)
    resid_norm: float = math.nan  # mean residual norm at the hook on these prompts (`effect.mean_residual_norm`)
    generated: dict[tuple[str, float], list[Generation]] = field(default_factory=dict)  # `pregenerate`'s, until run

    def pregenerate(self, arm: Arm, coefs: Sequence[float]) -> None:
        """Every coefficient of `arm` on every problem in one `generate_arms` pass, decoded as one batch; `run` on
        all problems then executes these. The prefill stays one pass (`split={}`), as `run` generates alone and as
        the baseline was generated, so the tokens are those of one `generate` per coefficient."""
        prompts = [Prompt(str(p.task_id), build_prompt(p)) for p in self.problems]
        arms = {str(c): [arm.intervention(c, self.positions)] for c in coefs}
        got = generate_arms(self.loaded, prompts, arms, config=generation_config(self.bcfg), split={}, progress=False)
        self.generated |= {(arm.name, c): got[str(c)] for c in coefs}

    def measure_resid_norm(self, layer: int, hook: HookPoint) -> float:
        """Set and return `resid_norm`: the mean residual norm at the hook over these problems' prompts."""
        prompts = [Prompt(str(p.task_id), build_prompt(p)) for p in self.problems]
        self.resid_norm = mean_residual_norm(self.loaded, prompts, layer, hook, chat=self.bcfg["chat"])
        return self.resid_norm

    def run(
        self, arm: Arm, coef: float, log_name: str, problems: list[Problem] | None = None, log: RecordLog | None = None
    ) -> list[dict[str, Any]]:
        """Steer, execute, and compare each task with its baseline (per-task rows, in problem order).

        The baseline's program of each task re-runs in the same sandbox batch as the steered one (`compare`).
        `problems` (default: all) and `log` (default: a new `log_name` log) let a pruned search go in chunks.
        """
        log = log if log is not None else self.log(log_name)
        chunk = self.problems if problems is None else problems
        records = solve_problems(
            self.loaded,
            chunk,
            config=generation_config(self.bcfg),
            interventions=[arm.intervention(coef, self.positions)],
            limits=execution_limits(self.bcfg),
            workers=self.bcfg["workers"],
            on_batch=log,
            progress=False,
            companions={p.task_id: str(self.baseline[p.task_id]["code"]) for p in chunk},
            generations=self.generated.pop((arm.name, coef), None) if chunk == self.problems else None,
        )
        rows = [compare(self.baseline[r["task_id"]], r, arm.name, coef) for r in records]
        if self.reference is None:
            return rows
        ids = {p.task_id for p in chunk}
        return with_reference(rows, [r for r in self.reference if r["task_id"] in ids])


def build_arm(features: dict[str, Any], sae: SAE, direction: str) -> Arm:
    """The steering arm of a direction from a find_features result."""
    if direction == "dom":
        dom = features["dom"]
        if not dom["usable"]:
            raise SteerkitError(f"DoM direction unusable: relative norm {dom['relative_norm']:.3g} below the floor")
        vec = torch.tensor(dom["vector"], dtype=torch.float32)
        return Arm("dom", sae, vector=vec / vec.norm())
    top = features["top"][direction]
    if not top:
        raise SteerkitError(f"find_features run has no {direction}-preferring feature")
    return Arm(direction, sae, feature=int(top[0]["feature"]))


class CoefficientObjective:
    """Optuna objective: steer one arm at the trial's coefficient; `record(rows, examples)` logs the trial's table
    and example generations (markdown) in its child run."""

    def __init__(
        self,
        ctx: Context,
        arm: Arm,
        objective: str,
        grid: list[float],
        sampler: str,
        limits: dict,
        record: Callable[[list[dict[str, Any]], str], None] = lambda rows, examples: None,
    ) -> None:
        self.ctx, self.arm, self.objective, self.grid, self.sampler = ctx, arm, objective, grid, sampler
        self.limits, self.record = limits, record
        self.one_pass = sampler == "grid" and not limits.get("prune_every", 0)  # every grid point generated at once

    def __call__(self, trial: Any) -> float:
        if self.sampler == "grid":
            coef = float(trial.suggest_categorical("coefficient", self.grid))
        else:
            coef = trial.suggest_float("coefficient", min(self.grid), max(self.grid), log=True)
        rows = self._rows(trial, coef)
        metrics = arm_metrics(rows)
        self.record(public(rows), examples_text(rows, self.limits["n_examples"]))
        for key, value in metrics.items():
            trial.set_user_attr(key, float(value))
        cons = constraint_values(
            metrics["char_similarity"],
            metrics["syntax_error_rate"],
            min_similarity=self.limits["min_similarity"],
            max_syntax_error=self.limits["max_syntax_error"],
        )
        trial.set_user_attr("constraints", list(cons))
        return float(metrics[self.objective])

    def _rows(self, trial: Any, coef: float) -> list[dict[str, Any]]:
        """Per-task rows, `limits["prune_every"]` problems at a time (0: all at once), each chunk's tasks in the
        objective's denominator reported to the pruner (1.0 corrected/corrupted, else 0.0; step = problem index),
        so the mean of the reports is the objective."""
        if self.one_pass:
            self.ctx.pregenerate(self.arm, self.grid)
            self.one_pass = False
        problems, log, rows = self.ctx.problems, self.ctx.log("steered"), []
        flip = "corrected" if self.objective == "correction_rate" else "corrupted"
        for start, end in chunk_ends(len(problems), self.limits.get("prune_every", 0)):
            rows += self.ctx.run(self.arm, coef, "steered", problems[start:end], log)
            items = {
                i: float(rows[i][flip])
                for i in range(start, end)
                if rows[i]["baseline_passed"] == (flip == "corrupted")
            }
            try:
                report_items(trial, items, end, len(problems))
            except Pruned:
                self.record(public(rows), examples_text(rows, self.limits["n_examples"]))
                raise
        return rows


def constraints(trial: Any) -> Sequence[float]:
    return trial.user_attrs.get("constraints", [math.inf, math.inf])


def check_denominators(ctx: Context, direction: str) -> None:
    passed = [bool(ctx.baseline[p.task_id]["passed"]) for p in ctx.problems]
    if OBJECTIVE[direction] == "correction_rate" and all(passed):
        raise SteerkitError(f"hyper split has no baseline failures: correction for {direction!r} is undefined")
    if OBJECTIVE[direction] == "corruption_rate" and not any(passed):
        raise SteerkitError(f"hyper split has no baseline passes: corruption for {direction!r} is undefined")


def trial_results(study: Any) -> list[dict[str, Any]]:
    """The completed trials' coefficients and user attrs (their metrics)."""
    return [
        {"coefficient": float(t.params["coefficient"]), **t.user_attrs}
        for t in study.trials
        if t.state.name == "COMPLETE"
    ]


def n_pruned(study: Any) -> int:
    """The trials a pruner stopped: they stay in the BH family at p = 1 (`effect.choose(not_run=...)`)."""
    return sum(t.state.name == "PRUNED" for t in study.trials)


def resolve_options(
    *,
    directions: str,
    grid: str,
    sampler: str,
    n_trials: str | int,
    positions: str,
    limit: str | int,
    min_similarity: str | float,
    max_syntax_error: str | float,
    n_examples: str | int,
    identity: str | bool,
    alpha: str | float,
    seed: str | int,
    pruner: str = "none",
    prune_every: str | int = 4,
) -> dict[str, Any]:
    """The validated options of a selection (parameters as MLflow passes them: strings)."""
    chosen = [d.strip() for d in directions.split(",") if d.strip()]
    if not chosen or any(d not in DIRECTIONS for d in chosen) or len(set(chosen)) != len(chosen):
        raise SteerkitError(f"directions must be distinct values of {', '.join(DIRECTIONS)}, got {directions!r}")
    coefficients = as_float_list("grid", grid)
    if any(c <= 0 for c in coefficients):
        raise SteerkitError(f"grid coefficients must be > 0 (0 is the identity control), got {grid!r}")
    if sampler not in ("grid", "tpe"):
        raise SteerkitError(f"sampler must be 'grid' or 'tpe', got {sampler!r}")
    if pruner not in ("none", "wilcoxon"):
        raise SteerkitError(f"pruner must be 'none' or 'wilcoxon', got {pruner!r}")
    if positions not in POSITIONS:
        raise SteerkitError(f"positions must be 'all' or 'generated', got {positions!r}")
    return {
        "directions": chosen,
        "grid": sorted(set(coefficients)),
        "sampler": sampler,
        "n_trials": as_int("n_trials", n_trials, 0),
        "positions": positions,
        "limit": as_int("limit", limit, 0),
        "min_similarity": as_float("min_similarity", min_similarity),
        "max_syntax_error": as_float("max_syntax_error", max_syntax_error),
        "n_examples": as_int("n_examples", n_examples, 0),
        "identity": as_bool("identity", identity),
        "alpha": check_alpha(as_float("alpha", alpha)),
        "seed": as_int("seed", seed, 0),
        "pruner": pruner,
        "prune_every": as_int("prune_every", prune_every, 1) if pruner != "none" else 0,
    }


def identity_summary(metrics: dict[str, Any], n: int) -> dict[str, float]:
    """The identity control's metrics (coefficient 0): flips (must be 0), identical completions, similarity."""
    return {
        "identity_flips": metrics["corrected"] + metrics["corrupted"],
        "identity_identical": metrics["n_identical"],
        "identity_n": n,
        "identity_char_similarity": metrics["char_similarity"],
    }
