"""Figures of the entropy experiments (matplotlib through `steerkit.plots`); the scripts log them."""

from __future__ import annotations

from typing import Any

import pandas as pd

from steerkit.entropy.analysis import METRICS


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
