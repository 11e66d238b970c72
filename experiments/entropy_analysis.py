"""Entry point `entropy_analysis` (seed 004): do entropy sources differ on text metrics, with honest statistics?

Reads the per-sample artifact (`samples/generations.jsonl`) of one or more `entropy_seeds` / `direct_injection`
runs (`run_ids`, comma-separated: one per model gives the scale ladder) and computes per sample: character and
word Shannon entropy (Miller-Madow), TTR, MTLD, distinct-2, repeated-trigram ratio, length in words and in
tokens. Per run, metric and non-baseline source: paired tests on per-prompt means (Wilcoxon and paired t; one
declared primary test per hypothesis) and a fitted MixedLM (random intercept per prompt, every sample).
The declared family is every (run, metric, non-control source) hypothesis; control sources (`controls`,
default `fixed`: its samples are copies, which a mixed model would count as replicates) are compared and
reported outside the family: BH-FDR over the primary p-values, with
untestable hypotheses (identical outputs) left out and reported. A second family holds the MixedLM p-values.
A priori power and the minimum detectable d_z are logged for the number of prompts used.
Artifacts: `hypotheses.json` (table), `scale_ladder.json` (table), `power.json`, per-sample metrics, plots.

Usage: mlflow run . -e entropy_analysis --env-manager local -P run_ids=<run id>[,<run id>...]
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd

from steerkit import cli, tracking
from steerkit.entropy import analysis, reports
from steerkit.entropy.analysis import METRICS
from steerkit.entropy.design import SAMPLES_FILE
from steerkit.entropy.stats import PRIMARY_TESTS, power_report
from steerkit.errors import SteerkitError
from steerkit.stats.design import Design


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("entropy_analysis", __doc__)
    p.add_argument("--run-ids", required=True, help="comma-separated run ids of entropy_seeds/direct_injection runs")
    p.add_argument("--baseline", default="mt", help="the source every other source is compared with")
    p.add_argument(
        "--controls",
        default="fixed",
        help="comma-separated control sources: compared and reported, but outside the family (their samples are "
        "copies, not replicates)",
    )
    p.add_argument("--primary-test", default="wilcoxon", help="wilcoxon or ttest: the one p per hypothesis")
    p.add_argument("--alpha", default=0.05, help="FDR level")
    p.add_argument("--power", default=0.8, help="target power for the minimum detectable effect")
    p.add_argument("--experiment", default="steerkit")
    cli.add_design_args(p)
    return p.parse_args(argv)


def load_samples(run_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-sample metrics of one run and facts about it (model, entry point)."""
    run = tracking.get_finished_run(run_id)
    frame = analysis.sample_frame(run_id, tracking.load_jsonl_artifact(run_id, SAMPLES_FILE))
    facts = {
        "run_id": run_id,
        "model": run.data.params.get("model", "?"),
        "entry_point": run.data.tags.get(tracking.TAG_ENTRY_POINT, "?"),
        "n_layers": run.data.params.get("model_n_layers", ""),
        "d_model": run.data.params.get("model_d_model", ""),
    }
    return frame, facts


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("entropy_analysis", vars(args), experiment=args.experiment):
        run_ids = [r.strip() for r in args.run_ids.split(",") if r.strip()]
        if not run_ids:
            raise SteerkitError(f"run_ids must name at least one run, got {args.run_ids!r}")
        if args.primary_test not in PRIMARY_TESTS:
            raise SteerkitError(f"unknown primary_test {args.primary_test!r} (choose from {', '.join(PRIMARY_TESTS)})")
        controls = {c.strip() for c in args.controls.split(",") if c.strip()}
        alpha = cli.as_float("alpha", args.alpha)
        target_power = cli.as_float("power", args.power)
        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []
        frames = [load_samples(run_id) for run_id in run_ids]
        n_prompts = [int(df["prompt"].nunique()) for df, _ in frames]
        tested = sum(len(set(df["source"]) - controls - {args.baseline}) for df, _ in frames)
        if args.primary_test == "wilcoxon":  # a t-test has no floor under its p-value
            design = Design("text metrics vs baseline", "wilcoxon_exact", min(n_prompts), max(tested * len(METRICS), 1))
            tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        for run_id, (df, facts) in zip(run_ids, frames):
            rows += analysis.analyse_run(df, facts, args.baseline, controls)
            tracking.log_table(df.to_dict("records"), f"sample_metrics/{run_id}.json")
            tracking.log_figure(
                reports.plot_metrics(df, f"{facts['model']} ({facts['entry_point']})"), f"plots/metrics_{run_id}.png"
            )
        summary = analysis.correct(rows, args.primary_test, alpha)
        power = power_report(min(n_prompts), alpha, target_power, int(summary["bh_primary_family_size"]))
        tracking.log_table(rows, "hypotheses.json")
        tracking.log_table(analysis.ladder(rows), "scale_ladder.json")
        tracking.log_json(power.to_dict(), "power.json")
        tracking.log_figure(reports.plot_effects(rows), "plots/effects.png")
        logged: dict[str, float | None] = {**summary}
        logged |= {
            "n_runs": len(run_ids),
            "n_prompts_min": min(n_prompts),
            "wilcoxon_power_at_dz_0_5": power.wilcoxon_power_at_dz_0_5,
            "wilcoxon_power_at_dz_1": power.wilcoxon_power_at_dz_1,
            "wilcoxon_power_at_dz_1_bh": power.wilcoxon_power_at_dz_1_bh,
            "ttest_mde_dz": power.mde_dz,  # the paired t stand-in, for comparison only
            "ttest_mde_dz_bonferroni": power.mde_dz_bonferroni,
            "ttest_power_at_dz_0_5": power.power_at_dz_0_5,
            "experiment_seconds": time.perf_counter() - t0,
        }
        tracking.log_metrics(logged)
        print(json.dumps(logged))


if __name__ == "__main__":
    tracking.entry_point(main)
