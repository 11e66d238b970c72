"""Entry point `select_coefficients` (seed 001, phase 4.5): steering coefficient per direction on the hyper split.

For each direction (the top correct-preferring feature, the top incorrect-preferring feature of a
find_features run, and optionally the difference-of-means direction, as a unit vector) an Optuna study
(`steerkit.search.run_study`: grid over `grid`, or TPE) steers generation on the hyperparameter split by adding
coefficient x direction at the SAE's own layer and hook point (`SAE.steering` / `ResidualAdd`; positions all or
generated only), runs every program in the sandbox and compares it with the baseline run's completion of the
same task: correction rate (fail->pass among baseline failures), corruption rate (pass->fail among baseline
passes), flip rate, character/token SequenceMatcher similarity, length ratio and syntax-error rate.

Runs: this run -> one child run per direction (its study's parent: Optuna plots, selection) -> one child run
per trial (per-task table, example generations). Selection: maximise correction (correct feature, DoM) or
corruption (incorrect feature) subject to similarity >= `min_similarity` and syntax errors <=
`max_syntax_error`: TPE gets the rule as its `constraints_func`, the grid has it applied to its completed
trials (`steerkit.feature_stats.select_coefficient`). Identity control: coefficient 0 through the same path
must reproduce the baseline (0 flips; logged as `identity_*`). Only the hyper split is used here; effects are
reported on the validation split by evaluate_steering.

Usage: mlflow run . -e select_coefficients --env-manager local -P features_run_id=RUN -P limit=10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline as baseline_ep  # noqa: E402
import find_features as features_ep  # noqa: E402

from steerkit import tracking  # noqa: E402
from steerkit.cli import as_bool, as_float, as_float_list, as_int  # noqa: E402
from steerkit.codegen import solve_problems  # noqa: E402
from steerkit.core.models import LoadedModel, load_model  # noqa: E402
from steerkit.core.positions import ALL, GENERATED, Selector  # noqa: E402
from steerkit.corpora.mbpp import Problem  # noqa: E402
from steerkit.errors import SteerkitError  # noqa: E402
from steerkit.feature_stats import (  # noqa: E402
    constraint_values,
    select_coefficient,
)
from steerkit.sae import SAE  # noqa: E402
from steerkit.search import StudyConfig, run_study  # noqa: E402
from steerkit.steering_arms import Arm, arm_metrics, compare, examples_text, public  # noqa: E402

SELECTED_FILE = "selected_coefficients.json"
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="select_coefficients", description=__doc__.splitlines()[0])
    p.add_argument("--features-run-id", required=True)
    p.add_argument("--directions", default="correct,incorrect", help="any of correct,incorrect,dom")
    p.add_argument("--grid", default="1,3,10,30,100,300,1000", help="coefficients (> 0)")
    p.add_argument("--sampler", default="grid", help="grid or tpe")
    p.add_argument("--n-trials", default=0, help="TPE trials per direction (0 = as many as grid points)")
    p.add_argument("--positions", default="all", help="all or generated")
    p.add_argument("--limit", default=0, help="first N problems of the hyper split (0 = all)")
    p.add_argument("--min-similarity", default=0.4, help="floor on mean character similarity to the baseline")
    p.add_argument("--max-syntax-error", default=0.3, help="ceiling on the syntax-error rate")
    p.add_argument("--n-examples", default=3, help="example generations logged per trial")
    p.add_argument("--identity", default="true", help="run the coefficient-0 identity control")
    p.add_argument("--study-name", default="auto")
    p.add_argument("--storage", default="sqlite:///optuna.db")
    p.add_argument("--seed", default=0)
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


@dataclass
class Context:
    """What every arm evaluation shares: model, problems of one split, baseline records, settings."""

    loaded: LoadedModel
    problems: list[Problem]
    baseline: dict[int, dict[str, Any]]
    bcfg: dict[str, Any]
    positions: Selector

    def run(self, arm: Arm, coef: float, log_name: str) -> list[dict[str, Any]]:
        """Steer, execute, and compare each task with its baseline record (per-task rows, in problem order)."""
        log = tracking.SampleLog(log_name)
        records = solve_problems(
            self.loaded,
            self.problems,
            config=baseline_ep.generation_config(self.bcfg),
            interventions=[arm.intervention(coef, self.positions)],
            limits=baseline_ep.execution_limits(self.bcfg),
            workers=self.bcfg["workers"],
            on_batch=log,
            progress=False,
        )
        return [compare(self.baseline[r["task_id"]], r, arm.name, coef) for r in records]


def load_features(run_id: str) -> dict[str, Any]:
    run = tracking.get_finished_run(run_id)
    if run.data.tags.get(tracking.TAG_ENTRY_POINT) != "find_features":
        raise SteerkitError(f"run {run_id!r} is not a find_features run")
    return tracking.load_jsonl_artifact(run_id, features_ep.FEATURES_FILE)[0]


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
    """Optuna objective: steer one arm at the trial's coefficient; logs the trial's tables in its child run."""

    def __init__(self, ctx: Context, arm: Arm, objective: str, grid: list[float], sampler: str, limits: dict) -> None:
        self.ctx, self.arm, self.objective, self.grid, self.sampler = ctx, arm, objective, grid, sampler
        self.limits = limits

    def __call__(self, trial: Any) -> float:
        if self.sampler == "grid":
            coef = float(trial.suggest_categorical("coefficient", self.grid))
        else:
            coef = trial.suggest_float("coefficient", min(self.grid), max(self.grid), log=True)
        rows = self.ctx.run(self.arm, coef, "steered")
        metrics = arm_metrics(rows)
        tracking.log_table(public(rows), "samples.json")
        tracking.log_text(examples_text(rows, self.limits["n_examples"]), "examples.md")
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


def _constraints(trial: Any) -> Sequence[float]:
    return trial.user_attrs.get("constraints", [math.inf, math.inf])


def identity_check(ctx: Context, arm: Arm) -> dict[str, float]:
    """Coefficient 0 through the same path: must reproduce the baseline (0 flips, identical completions)."""
    with tracking.child_run("identity-coef0", tags={"steerkit.arm": "identity"}):
        rows = ctx.run(arm, 0.0, "identity")
        tracking.log_table(public(rows), "samples.json")
        metrics = arm_metrics(rows)
        tracking.log_metrics(metrics)
    return {
        "identity_flips": metrics["corrected"] + metrics["corrupted"],
        "identity_identical": metrics["n_identical"],
        "identity_n": len(rows),
        "identity_char_similarity": metrics["char_similarity"],
    }


def check_denominators(ctx: Context, direction: str) -> None:
    passed = [bool(ctx.baseline[p.task_id]["passed"]) for p in ctx.problems]
    if OBJECTIVE[direction] == "correction_rate" and all(passed):
        raise SteerkitError(f"hyper split has no baseline failures: correction for {direction!r} is undefined")
    if OBJECTIVE[direction] == "corruption_rate" and not any(passed):
        raise SteerkitError(f"hyper split has no baseline passes: corruption for {direction!r} is undefined")


def study_config(args: argparse.Namespace, opts: dict[str, Any], direction: str) -> StudyConfig:
    if args.study_name != "auto":
        name = f"{args.study_name}-{direction}"
    else:
        facts = {k: opts[k] for k in sorted(opts)} | {"code": tracking.code_version(), "run": args.features_run_id}
        name = f"select_coefficients-{hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:12]}-{direction}"
    n_trials = opts["n_trials"] or len(opts["grid"])
    return StudyConfig(
        study_name=name,
        storage=args.storage,
        directions=("maximize",),
        sampler=opts["sampler"],
        search_space={"coefficient": opts["grid"]} if opts["sampler"] == "grid" else {},
        seed=opts["seed"],
        n_trials=None if opts["sampler"] == "grid" else n_trials,
    )


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    if not directions or any(d not in DIRECTIONS for d in directions) or len(set(directions)) != len(directions):
        raise SteerkitError(f"directions must be distinct values of {', '.join(DIRECTIONS)}, got {args.directions!r}")
    grid = as_float_list("grid", args.grid)
    if any(c <= 0 for c in grid):
        raise SteerkitError(f"grid coefficients must be > 0 (0 is the identity control), got {args.grid!r}")
    if args.sampler not in ("grid", "tpe"):
        raise SteerkitError(f"sampler must be 'grid' or 'tpe', got {args.sampler!r}")
    if args.positions not in POSITIONS:
        raise SteerkitError(f"positions must be 'all' or 'generated', got {args.positions!r}")
    return {
        "directions": directions,
        "grid": sorted(set(grid)),
        "sampler": args.sampler,
        "n_trials": as_int("n_trials", args.n_trials, 0),
        "positions": args.positions,
        "limit": as_int("limit", args.limit, 0),
        "min_similarity": as_float("min_similarity", args.min_similarity),
        "max_syntax_error": as_float("max_syntax_error", args.max_syntax_error),
        "n_examples": as_int("n_examples", args.n_examples, 0),
        "identity": as_bool("identity", args.identity),
        "seed": as_int("seed", args.seed, 0),
    }


def trial_results(study: Any) -> list[dict[str, Any]]:
    return [
        {"coefficient": float(t.params["coefficient"]), **t.user_attrs}
        for t in study.trials
        if t.state.name == "COMPLETE"
    ]


def plot_metrics(results: dict[str, list[dict[str, Any]]], selected: dict[str, Any]) -> Any:
    """One panel per metric against the coefficient (log x), a line per direction, the selection marked."""
    from steerkit.plots import plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, metric in zip(axes.flat, METRICS):
        for direction, trials in results.items():
            pts = sorted((t["coefficient"], t.get(metric, math.nan)) for t in trials)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=direction)
            chosen = selected[direction]["coefficient"]
            if chosen is not None:
                ax.axvline(chosen, linestyle=":", alpha=0.5)
        ax.set_xscale("log")
        ax.set_title(metric)
        ax.set_xlabel("coefficient")
    axes.flat[-1].axis("off")
    axes.flat[0].legend()
    fig.tight_layout()
    return fig


def run_direction(ctx: Context, arm: Arm, args: argparse.Namespace, opts: dict[str, Any]) -> tuple[dict, list]:
    """One study under a child run of this direction; returns (selection, completed trial results)."""
    check_denominators(ctx, arm.name)
    objective = OBJECTIVE[arm.name]
    with tracking.child_run(f"direction-{arm.name}", tags={"steerkit.direction": arm.name}):
        config = study_config(args, opts, arm.name)
        tracking.log_params({"study_name": config.study_name, "objective": objective, **arm.describe()})
        study = run_study(
            CoefficientObjective(ctx, arm, objective, opts["grid"], opts["sampler"], opts),
            config,
            constraints=_constraints if opts["sampler"] == "tpe" else None,
            metric_names=[objective],
        )
        results = trial_results(study)
        choice = select_coefficient(
            results,
            objective=objective,
            min_similarity=opts["min_similarity"],
            max_syntax_error=opts["max_syntax_error"],
        )
        tracking.log_metrics({f"selected_{k}": v for k, v in choice.items() if isinstance(v, int | float)})
    return {**choice, "objective": objective, "study_name": config.study_name, **arm.describe()}, results


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("select_coefficients", vars(args), experiment=args.experiment):
        opts = resolve_options(args)
        features = load_features(args.features_run_id)
        bcfg, manifest, base = baseline_ep.load_baseline(features["baseline_run_id"])
        sae = features_ep.resolve_sae(features["sae_source"])
        features_ep.hook_point(sae, str(features["layer"]), features["hook"])
        loaded = load_model(bcfg["model"], dtype=bcfg["dtype"], device=bcfg["device"])
        features_ep.check_sae_model(sae, loaded)
        problems = baseline_ep.load_split(bcfg, manifest, "hyper", opts["limit"])
        ctx = Context(loaded, problems, base, bcfg, POSITIONS[opts["positions"]])
        arms = [build_arm(features, sae, d) for d in opts["directions"]]
        tracking.log_params({"n_problems": len(problems), "baseline_run_id": features["baseline_run_id"]})
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if opts["identity"]:
            metrics.update(identity_check(ctx, arms[0]))
        selected, results = {}, {}
        for arm in arms:
            selected[arm.name], results[arm.name] = run_direction(ctx, arm, args, opts)
            metrics[f"{arm.name}_coefficient"] = selected[arm.name]["coefficient"] or math.nan
        out = {
            "features_run_id": args.features_run_id,
            "baseline_run_id": features["baseline_run_id"],
            "positions": opts["positions"],
            "layer": sae.cfg.layer,
            "hook": sae.cfg.hook,
            "rule": {k: opts[k] for k in ("min_similarity", "max_syntax_error", "sampler", "grid")},
            "selected": selected,
            "trials": results,
        }
        tracking.log_text(json.dumps(out), SELECTED_FILE)
        tracking.log_figure(plot_metrics(results, selected), "coefficient_metrics.png")
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        print(json.dumps({d: s["coefficient"] for d, s in selected.items()} | metrics))


if __name__ == "__main__":
    tracking.entry_point(main)
