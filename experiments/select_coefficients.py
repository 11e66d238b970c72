"""Entry point `select_coefficients` (seed 001, phase 4.5): steering coefficient per direction on the hyper split.

One Optuna study per direction (the top correct- and incorrect-preferring features of a find_features run, and
optionally the difference-of-means direction; `steerkit.sae.selection`) steers generation on the hyper split at the
SAE's own layer and hook, runs every program in the sandbox and compares it with the baseline's completion. Runs:
this run -> one child run per direction (its study's parent: Optuna plots, selection) -> one child run per trial
(per-task table, example generations). Selection: maximise correction (correct feature, DoM) or corruption
(incorrect feature) subject to similarity >= `min_similarity` and syntax errors <= `max_syntax_error` (TPE: its
`constraints_func`; grid: on completed trials) among the coefficients that beat the coefficient-0 arm (one-sided
exact McNemar, BH over the direction's coefficients, `steerkit.sae.effect`); none: the direction is tagged "no
effective coefficient" and evaluate_steering refuses it. Each coefficient is also logged relative to the mean
residual norm at the hook. Identity: coefficient 0, same path, `identity_flips` = 0 or FAILED.
Usage: mlflow run . -e select_coefficients --env-manager local -P features_run_id=RUN -P limit=10
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.core.checks import require_identity
from steerkit.core.models import load_model
from steerkit.sae import load_sae, pipeline, reports
from steerkit.sae.arms import Arm, arm_metrics, public
from steerkit.sae.effect import choose, no_effect_tags, selection_metrics
from steerkit.sae.selection import (
    OBJECTIVE,
    POSITIONS,
    CoefficientObjective,
    Context,
    build_arm,
    check_denominators,
    constraints,
    identity_summary,
    n_pruned,
    resolve_options,
    trial_results,
)
from steerkit.search import StudyConfig, run_study, study_name


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("select_coefficients", __doc__)
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
    p.add_argument("--identity", default="true", help="enforce the coefficient-0 identity (the arm always runs)")
    p.add_argument("--alpha", default=0.05, help="BH false discovery rate of the test against coefficient 0")
    p.add_argument("--study-name", default="auto")
    p.add_argument("--storage", default="default", help="Optuna storage URL ('default' = ~/.steerkit/optuna.db)")
    p.add_argument("--seed", default=0)
    p.add_argument("--pruner", default="none", help="none | wilcoxon (per-task reports every prune_every problems)")
    p.add_argument("--prune-every", default=4, help="problems per pruning check")
    cli.add_threads_arg(p)
    cli.add_run_args(p, output=False)
    return p.parse_args(argv)


def identity_check(ctx: Context, arm: Arm) -> dict[str, float]:
    """Coefficient 0 through the same path: must reproduce the baseline (0 flips, identical completions). Its rows
    become `ctx.reference`, the arm every coefficient is tested against."""
    with tracking.child_run("identity-coef0", tags={"steerkit.arm": "identity"}):
        rows = ctx.run(arm, 0.0, "identity")
        tracking.log_table(public(rows), "samples.json")
        metrics = arm_metrics(rows)
        tracking.log_metrics(metrics)
    ctx.reference = rows
    return identity_summary(metrics, len(rows))


def _record_trial(rows: list[dict[str, Any]], examples: str) -> None:
    tracking.log_table(rows, "samples.json")
    tracking.log_text(examples, "examples.md")


def study_config(args: Any, opts: dict[str, Any], direction: str) -> StudyConfig:
    facts = {k: opts[k] for k in sorted(opts)} | {"code": tracking.code_version(), "run": args.features_run_id}
    name = study_name(args.study_name, "select_coefficients", facts, suffix=direction)
    grid, n_trials = opts["sampler"] == "grid", opts["n_trials"] or len(opts["grid"])
    space, trials = ({"coefficient": opts["grid"]}, None) if grid else ({}, n_trials)
    return StudyConfig(name, args.storage, ("maximize",), opts["sampler"], space, opts["seed"], trials, opts["pruner"])


def run_direction(ctx: Context, arm: Arm, args: Any, opts: dict[str, Any]) -> tuple[dict, list]:
    """One study under a child run of this direction; returns (selection, completed trial results)."""
    check_denominators(ctx, arm.name)
    objective = OBJECTIVE[arm.name]
    with tracking.child_run(f"direction-{arm.name}", tags={"steerkit.direction": arm.name}):
        config = study_config(args, opts, arm.name)
        tracking.log_params({"study_name": config.study_name, "objective": objective, **arm.describe()})
        study = run_study(
            CoefficientObjective(ctx, arm, objective, opts["grid"], opts["sampler"], opts, _record_trial),
            config,
            constraints=constraints if opts["sampler"] == "tpe" else None,
            metric_names=[objective],
        )
        results = trial_results(study)
        rule = {k: opts[k] for k in ("min_similarity", "max_syntax_error")}
        norms: dict[str, Any] = {"direction_norm": arm.norm(), "resid_norm": ctx.resid_norm, "not_run": n_pruned(study)}
        choice, results = choose(results, direction=arm.name, objective=objective, alpha=opts["alpha"], **rule, **norms)
        tracking.log_metrics({f"selected_{k}": v for k, v in choice.items() if isinstance(v, int | float)})
    return {**choice, "objective": objective, "study_name": config.study_name, **arm.describe()}, results


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("select_coefficients", vars(args), experiment=args.experiment):
        opts = resolve_options(**cli.kwargs_for(resolve_options, args))
        features = tracking.phase_record(args.features_run_id, "find_features", pipeline.FEATURES_FILE)
        tracking.finished_run_of(features["baseline_run_id"], "baseline")
        bcfg, manifest, base = pipeline.load_baseline(features["baseline_run_id"], tracking.load_jsonl_artifact)
        sae = load_sae(tracking.local_artifact(features["sae_source"], default_artifact="sae"))
        pipeline.hook_point(sae, str(features["layer"]), features["hook"])
        loaded = load_model(bcfg["model"], dtype=bcfg["dtype"], device=bcfg["device"], threads=args.threads)
        tracking.set_tags(pipeline.check_sae_model(sae, loaded))
        tracking.log_params(loaded.params())
        problems = pipeline.load_split(bcfg, manifest, "hyper", opts["limit"])
        ctx = Context(loaded, problems, base, bcfg, POSITIONS[opts["positions"]], tracking.SampleLog)
        arms = [build_arm(features, sae, d) for d in opts["directions"]]
        tracking.log_params({"n_problems": len(problems), "baseline_run_id": features["baseline_run_id"]})
        t0 = time.perf_counter()
        metrics: dict[str, float] = {"resid_norm_mean": ctx.measure_resid_norm(sae.cfg.layer, sae.cfg.hook)}
        metrics.update(identity_check(ctx, arms[0]))
        tracking.log_metrics(metrics)
        require_identity(metrics, ["identity_flips"] if opts["identity"] else [])
        runs = {arm.name: run_direction(ctx, arm, args, opts) for arm in arms}
        selected, results = {k: v[0] for k, v in runs.items()}, {k: v[1] for k, v in runs.items()}
        metrics |= selection_metrics(selected)
        tracking.set_tags(no_effect_tags(selected))
        out = {"features_run_id": args.features_run_id, "baseline_run_id": features["baseline_run_id"]}
        out |= {"positions": opts["positions"], "layer": sae.cfg.layer, "hook": sae.cfg.hook, "alpha": opts["alpha"]}
        out |= {"rule": {k: opts[k] for k in ("min_similarity", "max_syntax_error", "sampler", "grid")}}
        out |= {"selected": selected, "trials": results, "resid_norm_mean": metrics["resid_norm_mean"]}
        tracking.log_text(json.dumps(out), pipeline.SELECTED_FILE)
        tracking.log_figure(reports.plot_metrics(results, selected), "coefficient_metrics.png")
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        print(json.dumps({d: s["coefficient"] for d, s in selected.items()} | metrics))


if __name__ == "__main__":
    tracking.entry_point(main)
