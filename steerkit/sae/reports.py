"""Figures of the SAE steering pipeline (matplotlib through `steerkit.plots`); the scripts log them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from steerkit.sae.selection import METRICS


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


def plot_rates(metrics: dict[str, float], arms: list[str]) -> Any:
    """Correction and corruption rate of every arm with Wilson 95% intervals."""
    from steerkit.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(arms)), 4.5), sharey=True)
    for ax, name in zip(axes, ("correction", "corruption")):
        rates = [metrics.get(f"{a}_{name}_rate", math.nan) for a in arms]
        low = [r - metrics.get(f"{a}_{name}_low", math.nan) for a, r in zip(arms, rates)]
        high = [metrics.get(f"{a}_{name}_high", math.nan) - r for a, r in zip(arms, rates)]
        ax.bar(range(len(arms)), rates, yerr=np.clip(np.nan_to_num(np.array([low, high])), 0.0, None), capsize=4)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(f"{name} rate (Wilson 95% CI)")
    fig.tight_layout()
    return fig


def plot_training(history: list[dict[str, float]], density: torch.Tensor) -> Any:
    """Training curves (reconstruction error, explained variance, dead fraction) and the held-out firing density."""
    from steerkit.plots import plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [h["step"] for h in history]
    axes[0].plot(steps, [h["mse"] for h in history])
    axes[0].set(xlabel="step", ylabel="reconstruction error (normalised units)", yscale="log")
    axes[1].plot(steps, [h["explained_variance"] for h in history], label="explained variance")
    axes[1].plot(steps, [h["dead_fraction"] for h in history], label="dead fraction")
    axes[1].set(xlabel="step", ylim=(0, 1))
    axes[1].legend()
    axes[2].hist(torch.log10(density.clamp_min(1e-7)).numpy(), bins=50)
    axes[2].set(xlabel="log10 firing frequency (held-out; -7 = never)", ylabel="features")
    fig.tight_layout()
    return fig
