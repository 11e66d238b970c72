"""Seed 004's analysis: does the entropy source of the sampling seed change the generated text?

Design note: per run, every non-baseline source is compared with the baseline source on each text metric, paired
by (prompt, sample): one primary paired test per hypothesis (Wilcoxon or t) and a mixed model (statsmodels MixedLM,
prompt as group). BH runs over the declared family only (control sources, whose samples are copies, are reported
outside it); NaN p-values (identical outputs) are left untested, never ranked.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from steerkit.entropy.design import SAMPLES_FILE, TESTED_METRICS
from steerkit.entropy.stats import bh_family, mixed_model, paired_comparison
from steerkit.errors import SteerkitError
from steerkit.metrics.text import text_metrics

METRICS = TESTED_METRICS


def sample_frame(run_id: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-sample text metrics (and token length) of one run's generation records."""
    if not records:
        raise SteerkitError(f"run {run_id!r} has no samples in {SAMPLES_FILE}")
    rows = [
        {"run_id": run_id, "source": r["source"], "prompt": r["prompt"], "sample": r["sample"]}
        | text_metrics(r["text"])
        | {"length_tokens": float(r["n_tokens"])}
        for r in records
    ]
    return pd.DataFrame(rows)


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


def ladder(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scale-ladder table: one row per (model, metric, source) with effect, interval and both p-values."""
    keep: tuple[str, ...] = ("model", "run_id", "metric", "source", "n_pairs", "mean_diff", "ci_low", "ci_high", "dz")
    keep += ("in_family", "wilcoxon_p", "primary_q", "primary_rejected", "mixed_coef", "mixed_p", "mixed_q", "reason")
    return [{k: r.get(k) for k in keep} for r in rows]
