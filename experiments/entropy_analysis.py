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

import argparse
import json
import time
from typing import Any

import pandas as pd

from steerkit import tracking
from steerkit.cli import as_float
from steerkit.entropy_design import SAMPLES_FILE
from steerkit.entropy_stats import PRIMARY_TESTS, bh_family, mixed_model, paired_comparison, power_report
from steerkit.errors import SteerkitError
from steerkit.metrics.text import TEXT_METRICS, text_metrics

METRICS = (*TEXT_METRICS, "length_tokens")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="entropy_analysis", description=__doc__.splitlines()[0])
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
    return p.parse_args(argv)


def load_samples(run_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-sample metrics of one run and facts about it (model, entry point)."""
    run = tracking.get_finished_run(run_id)
    records = tracking.load_jsonl_artifact(run_id, SAMPLES_FILE)
    if not records:
        raise SteerkitError(f"run {run_id!r} has no samples in {SAMPLES_FILE}")
    rows = [
        {"run_id": run_id, "source": r["source"], "prompt": r["prompt"], "sample": r["sample"]}
        | text_metrics(r["text"])
        | {"length_tokens": float(r["n_tokens"])}
        for r in records
    ]
    facts = {
        "run_id": run_id,
        "model": run.data.params.get("model", "?"),
        "entry_point": run.data.tags.get(tracking.TAG_ENTRY_POINT, "?"),
        "n_layers": run.data.params.get("model_n_layers", ""),
        "d_model": run.data.params.get("model_d_model", ""),
    }
    return pd.DataFrame(rows), facts


def analyse_run(df: pd.DataFrame, facts: dict[str, Any], baseline: str, controls: set[str]) -> list[dict[str, Any]]:
    """One row per (metric, non-baseline source): paired tests and the mixed-model coefficient."""
    if baseline not in set(df["source"]):
        raise SteerkitError(
            f"baseline source {baseline!r} not in run {facts['run_id']} ({', '.join(set(df['source']))})"
        )
    sources = [s for s in dict.fromkeys(df["source"]) if s != baseline]
    rows = []
    for metric in METRICS:
        mixed = {m.source: m for m in mixed_model(df, metric, baseline)}
        for source in sources:
            paired = paired_comparison(df, metric, source, baseline).to_dict()
            mx = mixed[source]
            rows.append(
                {"model": facts["model"], "run_id": facts["run_id"], "entry_point": facts["entry_point"]}
                | {"in_family": source not in controls}
                | paired
                | {
                    "mixed_coef": mx.coef,
                    "mixed_p": mx.p_value,
                    "mixed_ci_low": mx.ci_low,
                    "mixed_ci_high": mx.ci_high,
                    "mixed_converged": mx.converged,
                    "mixed_reason": mx.reason,
                }
            )
    return rows


def correct(rows: list[dict[str, Any]], primary: str, alpha: float) -> dict[str, float]:
    """BH over the declared families (primary paired p; MixedLM p), written into the rows; summary metrics."""
    primary_key = "wilcoxon_p" if primary == "wilcoxon" else "ttest_p"
    out: dict[str, float] = {}
    declared = [r for r in rows if r["in_family"]]
    for r in rows:
        r["primary_q"] = r["primary_rejected"] = r["mixed_q"] = r["mixed_rejected"] = None
    for family, key in (("primary", primary_key), ("mixed", "mixed_p")):
        res = bh_family([r[key] for r in declared], alpha)
        for r, q, rej in zip(declared, res.q_values, res.rejected):
            r[f"{family}_q"], r[f"{family}_rejected"] = q, rej
        out[f"bh_{family}_family_size"] = res.family_size
        out[f"bh_{family}_n_rejected"] = sum(res.rejected)
        out[f"bh_{family}_n_untested"] = len(declared) - res.family_size
        tested = [p for p in (r[key] for r in declared) if p is not None]
        out[f"{family}_min_p"] = min(tested) if tested else float("nan")
    out["n_hypotheses_declared"] = len(declared)
    out["n_control_comparisons"] = len(rows) - len(declared)
    return out


def plot_metrics(df: pd.DataFrame, title: str) -> Any:
    """Box plots of every metric by source."""
    from steerkit.plots import plt

    sources = list(dict.fromkeys(df["source"]))
    fig, axes = plt.subplots(2, (len(METRICS) + 1) // 2, figsize=(4 * ((len(METRICS) + 1) // 2), 7))
    for ax, metric in zip(axes.flat, METRICS):
        ax.boxplot([df.loc[df["source"] == s, metric] for s in sources], tick_labels=sources)
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_effects(rows: list[dict[str, Any]]) -> Any:
    """Paired mean differences (source - baseline) with 95% intervals, one panel per metric."""
    from steerkit.plots import plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 4), sharey=True)
    labels = list(dict.fromkeys(f"{r['model']}:{r['source']}" for r in rows))
    for ax, metric in zip(axes, METRICS):
        for y, label in enumerate(labels):
            r = next((r for r in rows if r["metric"] == metric and f"{r['model']}:{r['source']}" == label), None)
            if r and r["mean_diff"] is not None and r["ci_low"] is not None:
                ax.errorbar(
                    r["mean_diff"], y, xerr=[[r["mean_diff"] - r["ci_low"]], [r["ci_high"] - r["mean_diff"]]], fmt="o"
                )
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(metric, fontsize=9)
    axes[0].set_yticks(range(len(labels)), labels)
    fig.tight_layout()
    return fig


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("entropy_analysis", vars(args), experiment=args.experiment):
        run_ids = [r.strip() for r in args.run_ids.split(",") if r.strip()]
        if not run_ids:
            raise SteerkitError(f"run_ids must name at least one run, got {args.run_ids!r}")
        if args.primary_test not in PRIMARY_TESTS:
            raise SteerkitError(f"unknown primary_test {args.primary_test!r} (choose from {', '.join(PRIMARY_TESTS)})")
        controls = {c.strip() for c in args.controls.split(",") if c.strip()}
        alpha = as_float("alpha", args.alpha)
        target_power = as_float("power", args.power)
        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []
        n_prompts: list[int] = []
        for run_id in run_ids:
            df, facts = load_samples(run_id)
            n_prompts.append(int(df["prompt"].nunique()))
            rows += analyse_run(df, facts, args.baseline, controls)
            tracking.log_table(df.to_dict("records"), f"sample_metrics/{run_id}.json")
            tracking.log_figure(
                plot_metrics(df, f"{facts['model']} ({facts['entry_point']})"), f"plots/metrics_{run_id}.png"
            )
        summary = correct(rows, args.primary_test, alpha)
        power = power_report(min(n_prompts), alpha, target_power, int(summary["bh_primary_family_size"]))
        tracking.log_table(rows, "hypotheses.json")
        tracking.log_table(ladder(rows), "scale_ladder.json")
        tracking.log_json(power.to_dict(), "power.json")
        tracking.log_figure(plot_effects(rows), "plots/effects.png")
        logged: dict[str, float | None] = {**summary}
        logged |= {
            "n_runs": len(run_ids),
            "n_prompts_min": min(n_prompts),
            "mde_dz": power.mde_dz,
            "mde_dz_bonferroni": power.mde_dz_bonferroni,
            "power_at_dz_0_5": power.power_at_dz_0_5,
            "experiment_seconds": time.perf_counter() - t0,
        }
        tracking.log_metrics(logged)
        print(json.dumps(logged))


def ladder(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scale-ladder table: one row per (model, metric, source) with effect, interval and both p-values."""
    keep: tuple[str, ...] = ("model", "run_id", "metric", "source", "n_pairs", "mean_diff", "ci_low", "ci_high", "dz")
    keep += ("in_family", "wilcoxon_p", "primary_q", "primary_rejected", "mixed_coef", "mixed_p", "mixed_q", "reason")
    return [{k: r.get(k) for k in keep} for r in rows]


if __name__ == "__main__":
    tracking.entry_point(main)
