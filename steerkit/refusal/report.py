"""Refusal-sweep results: per-split summary with Wilson intervals, selection on harm_train, tests, plots.

Design note: everything here is a pure function of the per-sample records (one dict per generated reply, with
its condition, split and judge verdicts), so a summary can be recomputed from the logged tables. Selection uses
harm_train and the benign eval split only, then the chosen condition is reported on harm_test with an exact
McNemar test against the baseline on the same prompts (paired design). Two selections are made, because the
two directions of steering ask different questions: `more_refusal` maximises the harm_train refusal rate among
steered conditions whose benign helpfulness stays within `max_drop` of the baseline; `less_refusal` minimises
it under the same constraint. Control directions (random, label-shuffled) are never selected. The declared
test family for Benjamini-Hochberg is every steered condition (controls included) vs baseline on harm_test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from steerkit.plots import plt
from steerkit.stats import benjamini_hochberg, mcnemar_exact, paired_outcomes, paired_risk_difference, wilson_interval

KEYS = ["condition", "intervention", "layer", "alpha", "direction"]
SPLITS = ("harm_train", "harm_test", "benign")
_RATES = {
    "refusal_rate": ("refusal", "refusal"),
    "compliance_rate": ("refusal", "compliance"),
    "unclear_rate": ("refusal", "unclear"),
    "helpful_rate": ("helpfulness", "helpful"),
    "degenerate_rate": ("degenerate", True),
}


def _rates(group: pd.DataFrame) -> dict[str, Any]:
    n = len(group)
    row: dict[str, Any] = {"n": n}
    for name, (column, value) in _RATES.items():
        k = int((group[column] == value).sum())
        low, high = wilson_interval(k, n)
        row.update({name: k / n, f"{name}_low": low, f"{name}_high": high})
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


def select(summary: pd.DataFrame, max_drop: float) -> dict[str, dict[str, Any] | None]:
    """The `more_refusal` and `less_refusal` conditions, chosen on harm_train under the benign-helpfulness floor."""
    refusal = wide(summary, "refusal_rate")
    helpful = wide(summary, "helpful_rate")[[*KEYS, "helpful_rate_benign"]]
    table = refusal.merge(helpful, on=KEYS)
    base = table[table.condition == "baseline"].iloc[0]
    floor = float(base["helpful_rate_benign"]) - max_drop
    pool = table[(table.direction == "refusal") & (table.helpful_rate_benign >= floor - 1e-12)]
    out: dict[str, dict[str, Any] | None] = {"more_refusal": None, "less_refusal": None}
    if len(pool):
        for name, ascending in (("more_refusal", False), ("less_refusal", True)):
            ordered = pool.sort_values(["refusal_rate_harm_train", "condition"], ascending=[ascending, True])
            pick = ordered.iloc[0].to_dict()
            out[name] = {**pick, "helpfulness_floor": floor}
    return out


def paired_tests(records: Sequence[dict[str, Any]], split: str = "harm_test") -> pd.DataFrame:
    """Exact McNemar (refusal yes/no) of every steered condition vs baseline on `split`, paired by prompt id,
    with the paired risk difference (Newcombe interval) and BH q-values over this declared family."""
    frame = pd.DataFrame(list(records))
    frame = frame[frame.split == split]
    base = frame[frame.condition == "baseline"].set_index("prompt_id")["refusal"] == "refusal"
    rows = []
    for keys, group in frame[frame.condition != "baseline"].groupby(KEYS, sort=False):
        steered = group.set_index("prompt_id")["refusal"].reindex(base.index) == "refusal"
        counts = paired_outcomes(list(base), list(steered))
        rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
        rows.append(
            {
                **dict(zip(KEYS, keys)),
                "split": split,
                "n": counts.n,
                "b_became_refusal": counts.b,
                "c_stopped_refusal": counts.c,
                "mcnemar_p": mcnemar_exact(counts.b, counts.c).p_value,
                "risk_difference": rd.estimate,
                "rd_low": rd.low,
                "rd_high": rd.high,
            }
        )
    table = pd.DataFrame(rows)
    if len(table):
        bh = benjamini_hochberg(list(table["mcnemar_p"]))
        table["bh_q"], table["bh_reject"], table["family_size"] = bh.q_values, bh.rejected, bh.family_size
    return table


def tradeoff_figure(summary: pd.DataFrame) -> Any:
    """Refusal on harm (train and test) against helpfulness on benign, one point per condition."""
    refusal, helpful = wide(summary, "refusal_rate"), wide(summary, "helpful_rate")
    table = refusal.merge(helpful[[*KEYS, "helpful_rate_benign"]], on=KEYS)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    markers = {"none": "*", "refusal": "o", "random": "x", "shuffled": "s"}
    for ax, split in zip(axes, ("harm_train", "harm_test")):
        for (kind, direction), group in table.groupby(["intervention", "direction"]):
            ax.scatter(
                group["helpful_rate_benign"],
                group[f"refusal_rate_{split}"],
                marker=markers.get(direction, "o"),
                label=f"{kind} / {direction}",
            )
            for _, r in group.iterrows():
                ax.annotate(f"L{r.layer} a{r.alpha:g}", (r.helpful_rate_benign, r[f"refusal_rate_{split}"]), fontsize=6)
        ax.set_xlabel("helpfulness on benign (eval split)")
        ax.set_title(f"refusal on {split}")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("refusal rate")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def heatmap_figure(summary: pd.DataFrame, intervention: str) -> Any:
    """Layer x alpha heatmaps (refusal on harm_train, harm_test; helpfulness on benign) for one intervention.

    The alpha-0 column is the shared baseline, repeated for every layer.
    """
    real = summary[(summary.intervention == intervention) & (summary.direction == "refusal")]
    base = summary[summary.condition == "baseline"]
    layers = sorted(real.layer.unique())
    alphas = sorted({0.0, *real.alpha.unique()})
    panels = [("harm_train", "refusal_rate"), ("harm_test", "refusal_rate"), ("benign", "helpful_rate")]
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
    """Metrics of each selected condition (train/test refusal, benign helpfulness, its harm_test test) and the
    tags naming the selected conditions (`steerkit.best_<name>`)."""
    metrics: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for name, pick in picks.items():
        if pick is None:
            continue
        test_row = tests[tests.condition == pick["condition"]].iloc[0]
        metrics.update(
            {
                f"best_{name}_refusal_harm_train": pick["refusal_rate_harm_train"],
                f"best_{name}_refusal_harm_test": pick["refusal_rate_harm_test"],
                f"best_{name}_helpful_benign": pick["helpful_rate_benign"],
                f"best_{name}_mcnemar_p_harm_test": test_row["mcnemar_p"],
                f"best_{name}_bh_q_harm_test": test_row["bh_q"],
                f"best_{name}_rd_harm_test": test_row["risk_difference"],
            }
        )
        tags[f"steerkit.best_{name}"] = pick["condition"]
    return metrics, tags
