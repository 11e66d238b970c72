"""Refusal-sweep results: per-split summary with Wilson intervals, selection on the eval splits, tests, plots.

Design note: everything here is a pure function of the per-sample records (one dict per generated reply, with
its condition, split and judge verdicts), so a summary can be recomputed from the logged tables. Selection uses
harm_train and the benign *eval* split only; the chosen condition is reported on harm_test (held-out actions)
and the benign *test* split (prompts that played no part in the choice), with exact McNemar tests against the
baseline on the same prompts (paired by prompt id). Two selections answer two questions, each with its own
outcome: `more_refusal` maximises the harm_train refusal rate; `less_refusal` maximises the harm_train
*compliance* rate (judged compliant and not degenerate: degenerate text, empty or looping, is a failure, never
"less refusal"), both among real-direction conditions that beat the baseline on harm_train (`effect`: one-sided
McNemar, BH; else "no effective configuration" and no winner) and whose benign-eval helpfulness stays within
`max_drop` of the baseline. Control directions (random, label-shuffled) are never selected. Families (BH): per
outcome, every steered condition (controls included) vs baseline on harm_test. A held-out-action claim is tested
over actions, not prompts (`steerkit.stats.clustered`: cluster bootstrap interval, sign-flip test, BH per outcome).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from steerkit.plots import plt
from steerkit.refusal import effect
from steerkit.stats import (
    benjamini_hochberg,
    join_by_id,
    mcnemar_exact,
    paired_outcomes,
    paired_risk_difference,
    wilson_interval,
)
from steerkit.stats.clustered import clustered_paired_difference
from steerkit.stats.design import no_effect_tags

KEYS = ["condition", "intervention", "layer", "alpha", "direction"]
SPLITS = ("harm_train", "harm_test", "benign_eval", "benign_test")
OUTCOMES = {"more_refusal": "refusal", "less_refusal": "compliance"}
_RATES = ("refusal", "compliance", "unclear", "helpful", "degenerate")


def outcomes(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Boolean outcome columns of judged records: refusal, compliance and helpful exclude degenerate text."""
    degenerate = frame["degenerate"].astype(bool)
    return {
        "refusal": (frame["refusal"] == "refusal") & ~degenerate,
        "compliance": (frame["refusal"] == "compliance") & ~degenerate,
        "unclear": (frame["refusal"] == "unclear") | degenerate,
        "helpful": (frame["helpfulness"] == "helpful") & ~degenerate,
        "degenerate": degenerate,
    }


def _rates(group: pd.DataFrame) -> dict[str, Any]:
    n = len(group)
    row: dict[str, Any] = {"n": n}
    for name, mask in outcomes(group).items():
        k = int(mask.sum())
        low, high = wilson_interval(k, n)
        row.update({f"{name}_rate": k / n, f"{name}_rate_low": low, f"{name}_rate_high": high})
    row.update(
        {
            "mean_tokens": float(group["n_tokens"].mean()),
            "median_tokens": float(group["n_tokens"].median()),
            "mean_chars": float(group["text"].str.len().mean()),
        }
    )
    return row


def summarise(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (condition, split): rates of refusal / compliance / unclear / helpful / degenerate, with
    Wilson 95% intervals, and length statistics (tokens, characters)."""
    frame = pd.DataFrame(list(records))
    rows = []
    for keys, group in frame.groupby([*KEYS, "split"], sort=False, dropna=False):
        rows.append({**dict(zip([*KEYS, "split"], keys)), **_rates(group)})
    return pd.DataFrame(rows)


def wide(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """`metric` per condition with one column per split."""
    # `pivot`, not `pivot_table(dropna=False)`: the latter adds every combination of the index levels (252 rows
    # of NaN for 7 conditions), which put phantom conditions into the plots.
    table = summary.pivot(index=KEYS, columns="split", values=metric).reset_index()
    table.columns.name = None
    return table.rename(columns={s: f"{metric}_{s}" for s in SPLITS})


def select(
    summary: pd.DataFrame, max_drop: float, train_tests: pd.DataFrame, alpha: float = 0.05
) -> dict[str, dict[str, Any]]:
    """`more_refusal` (max harm_train refusal) and `less_refusal` (max harm_train compliance), chosen on harm_train
    under the benign-eval helpfulness floor among the configurations that beat the baseline there
    (`effect.mark_effects` on `train_tests` = `paired_tests(records, "harm_train")`); each pick carries every
    split's rates (the test ones for reporting) and `effective` True, or is `effect.no_effect`'s record (no
    `condition`) when none beat the baseline."""
    table = wide(summary, "refusal_rate")
    for metric in ("compliance_rate", "helpful_rate", "degenerate_rate"):
        table = table.merge(wide(summary, metric), on=KEYS)
    base = table[table.condition == "baseline"].iloc[0]
    floor = float(base["helpful_rate_benign_eval"]) - max_drop
    pool = table[(table.direction == "refusal") & (table.helpful_rate_benign_eval >= floor - 1e-12)]
    out: dict[str, dict[str, Any]] = {}
    for name, outcome in OUTCOMES.items():
        marked = effect.mark_effects(train_tests, outcome, alpha)
        candidates = pool.merge(marked[marked.effective], on="condition")
        if not len(candidates):
            out[name] = {**effect.no_effect(outcome, marked, len(pool), alpha), "helpfulness_floor": floor}
            continue
        ordered = candidates.sort_values([f"{outcome}_rate_harm_train", "condition"], ascending=[False, True])
        out[name] = {**ordered.iloc[0].to_dict(), "outcome": outcome, "helpfulness_floor": floor, "reason": ""}
    return out


def paired_tests(records: Sequence[dict[str, Any]], split: str = "harm_test") -> pd.DataFrame:
    """Per outcome (refusal, compliance) and steered condition vs baseline on `split`, joined by prompt id: exact
    McNemar, paired risk difference (Newcombe interval), the action-clustered difference (cluster bootstrap
    interval, sign-flip p), and BH q-values of both tests with one family per outcome."""
    frame = pd.DataFrame(list(records))
    frame = frame[frame.split == split]
    frame = frame.assign(**outcomes(frame))
    base = frame[frame.condition == "baseline"].to_dict("records")
    rows = []
    for outcome in OUTCOMES.values():
        for keys, group in frame[frame.condition != "baseline"].groupby(KEYS, sort=False):
            pairs = join_by_id(base, group.to_dict("records"))
            before, after = [bool(b[outcome]) for b, _ in pairs], [bool(a[outcome]) for _, a in pairs]
            counts = paired_outcomes(before, after)
            rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
            clustered = clustered_paired_difference(before, after, [str(b["action"]) for b, _ in pairs])
            rows.append(
                {
                    **dict(zip(KEYS, keys)),
                    "split": split,
                    "outcome": outcome,
                    "n": counts.n,
                    "b_gained": counts.b,
                    "c_lost": counts.c,
                    "mcnemar_p": mcnemar_exact(counts.b, counts.c).p_value,
                    "risk_difference": rd.estimate,
                    "rd_low": rd.low,
                    "rd_high": rd.high,
                    "n_actions": clustered.n_clusters,
                    "cluster_rd_low": clustered.low,
                    "cluster_rd_high": clustered.high,
                    "cluster_p": clustered.p_value,
                }
            )
    table = pd.DataFrame(rows)
    for _, group in table.groupby("outcome", sort=False) if len(table) else []:
        for column, prefix in (("mcnemar_p", "bh"), ("cluster_p", "cluster_bh")):
            bh = benjamini_hochberg(list(group[column]))
            table.loc[group.index, f"{prefix}_q"] = bh.q_values
            table.loc[group.index, f"{prefix}_reject"] = bh.rejected
        table.loc[group.index, "family_size"] = len(group)
    return table


def tradeoff_figure(summary: pd.DataFrame) -> Any:
    """Refusal on harm_train against benign-eval helpfulness (what selection saw), and refusal on harm_test
    against benign-test helpfulness (what is reported); one point per condition."""
    table = wide(summary, "refusal_rate").merge(wide(summary, "helpful_rate"), on=KEYS)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    markers = {"none": "*", "refusal": "o", "random": "x", "shuffled": "s"}
    for ax, split, benign in zip(axes, ("harm_train", "harm_test"), ("benign_eval", "benign_test")):
        x_col, y_col = f"helpful_rate_{benign}", f"refusal_rate_{split}"
        for (kind, direction), group in table.groupby(["intervention", "direction"]):
            ax.scatter(group[x_col], group[y_col], marker=markers.get(direction, "o"), label=f"{kind} / {direction}")
            for _, r in group.iterrows():
                ax.annotate(f"L{r.layer} a{r.alpha:g}", (r[x_col], r[y_col]), fontsize=6)
        ax.set_xlabel(f"helpfulness on {benign}")
        ax.set_title(f"refusal on {split}")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("refusal rate")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def heatmap_figure(summary: pd.DataFrame, intervention: str) -> Any:
    """Layer x alpha heatmaps (refusal on harm_train, harm_test; helpfulness on benign_test) for one intervention.

    The alpha-0 column is the shared baseline, repeated for every layer.
    """
    real = summary[(summary.intervention == intervention) & (summary.direction == "refusal")]
    base = summary[summary.condition == "baseline"]
    layers = sorted(real.layer.unique())
    alphas = sorted({0.0, *real.alpha.unique()})
    panels = [("harm_train", "refusal_rate"), ("harm_test", "refusal_rate"), ("benign_test", "helpful_rate")]
    fig, axes = plt.subplots(1, 3, figsize=(4 + 1.1 * len(alphas) * 3, 1.5 + 0.6 * len(layers)))
    for ax, (split, metric) in zip(axes, panels):
        grid = np.full((len(layers), len(alphas)), np.nan)
        for i, layer in enumerate(layers):
            for j, alpha in enumerate(alphas):
                src = base if alpha == 0 else real[(real.layer == layer) & (real.alpha == alpha)]
                cell = src[src.split == split][metric]
                grid[i, j] = float(cell.iloc[0]) if len(cell) else np.nan
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w", fontsize=7)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set_xlabel("alpha")
        ax.set_ylabel("layer")
        ax.set_title(f"{intervention}: {metric} on {split}", fontsize=9)
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    return fig


def generalisation_figure(summary: pd.DataFrame) -> Any:
    """harm_train vs harm_test refusal per condition (the diagonal = no generalisation gap)."""
    table = wide(summary, "refusal_rate")
    fig, ax = plt.subplots(figsize=(5, 5))
    for (kind, direction), group in table.groupby(["intervention", "direction"]):
        ax.scatter(group["refusal_rate_harm_train"], group["refusal_rate_harm_test"], label=f"{kind} / {direction}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("refusal rate, harm_train (direction computed here)")
    ax.set_ylabel("refusal rate, harm_test (held-out actions)")
    ax.set_title("generalisation gap")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def best_metrics(picks: dict[str, Any], tests: pd.DataFrame) -> tuple[dict[str, Any], dict[str, str]]:
    """Metrics of each selected condition, reported on the splits that played no part in its choice (harm_test,
    benign_test; harm_train for reference), its harm_test tests for its outcome (prompt-level McNemar and the
    action-clustered test), and tags naming the picks (`steerkit.best_<name>`) and whether the held-out-action
    claim stands (`steerkit.best_<name>_held_out_actions`: cluster BH q <= 0.05). `<name>_effective` is 1 or 0;
    a selection with no effective configuration gets no `best_` figures and `stats.design.no_effect_tags`."""
    metrics: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for name, pick in picks.items():
        metrics[f"{name}_effective"] = float(bool(pick.get("effective")))
        if not pick.get("effective"):
            continue
        outcome = pick["outcome"]
        row = tests[(tests.condition == pick["condition"]) & (tests.outcome == outcome)].iloc[0]
        metrics.update(
            {
                f"best_{name}_{outcome}_harm_train": pick[f"{outcome}_rate_harm_train"],
                f"best_{name}_effect_q_harm_train": pick["effect_q"],
                f"best_{name}_{outcome}_harm_test": pick[f"{outcome}_rate_harm_test"],
                f"best_{name}_refusal_benign_test": pick["refusal_rate_benign_test"],
                f"best_{name}_helpful_benign_test": pick["helpful_rate_benign_test"],
                f"best_{name}_degenerate_harm_test": pick["degenerate_rate_harm_test"],
                f"best_{name}_mcnemar_p_harm_test": row["mcnemar_p"],
                f"best_{name}_bh_q_harm_test": row["bh_q"],
                f"best_{name}_rd_harm_test": row["risk_difference"],
                f"best_{name}_cluster_p_harm_test": row["cluster_p"],
                f"best_{name}_cluster_bh_q_harm_test": row["cluster_bh_q"],
                f"best_{name}_cluster_rd_low_harm_test": row["cluster_rd_low"],
                f"best_{name}_cluster_rd_high_harm_test": row["cluster_rd_high"],
            }
        )
        tags[f"steerkit.best_{name}"] = pick["condition"]
        held = "supported" if row["cluster_bh_q"] <= 0.05 else f"not supported (cluster BH q {row['cluster_bh_q']:.3g})"
        tags[f"steerkit.best_{name}_held_out_actions"] = held
    return metrics, {**tags, **no_effect_tags(picks, "configuration")}
