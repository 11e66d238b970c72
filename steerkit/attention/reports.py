"""Figures of the attention experiments (matplotlib through `steerkit.plots`); the scripts log them."""

from __future__ import annotations

from typing import Any

import numpy as np


def plot_dose(
    results: dict[str, list[dict]], plan: dict[str, tuple[str, float]], natural: dict[str, float], outcome: str
) -> Any:
    from steerkit.plots import plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in results.items():
        x = sum(natural.values()) / len(natural) if name == "baseline" else plan[name][1]
        ax.scatter([x], [sum(bool(r[outcome]) for r in recs) / len(recs)], label=name)
    ax.set_xlabel("attention share at the layer (marker and later -> function tokens)")
    ax.set_ylabel(f"{outcome} rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_heatmap(diff: np.ndarray, layers: list[int], metric: str) -> Any:
    from steerkit.plots import plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * diff.shape[1], 1.5 + 0.22 * len(layers)))
    bound = float(np.abs(diff).max()) or 1.0
    im = ax.imshow(diff, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{metric}: Python - Rust")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_layers(rows: list[dict[str, Any]], item_rows: list[dict[str, Any]], metric: str) -> Any:
    """Per layer: each language's mean with a 95% t interval, and the ratio with its bootstrap interval."""
    from scipy import stats as sps

    from steerkit.plots import plt

    layers = [r["layer"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for lang, color in (("python", "tab:blue"), ("rust", "tab:orange")):
        means, lows, highs = [], [], []
        for layer in layers:
            v = np.array([r[metric] for r in item_rows if r["layer"] == layer and r["language"] == lang])
            sem = sps.sem(v) if len(v) > 1 else 0.0
            half = float(sem * sps.t.ppf(0.975, len(v) - 1)) if len(v) > 1 else 0.0
            means.append(v.mean())
            lows.append(half)
            highs.append(half)
        ax1.errorbar(layers, means, yerr=[lows, highs], label=lang, color=color, capsize=2, marker="o", ms=3)
    ax1.set_ylabel(metric)
    ax1.legend()
    ratio = np.array([r["ratio"] for r in rows])
    err = np.array([[r["ratio"] - r["ratio_low"], r["ratio_high"] - r["ratio"]] for r in rows]).T
    ax2.errorbar(layers, ratio, yerr=np.nan_to_num(err), capsize=2, marker="o", ms=3, color="black")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set_ylabel("Python / Rust")
    ax2.set_xlabel("layer")
    fig.tight_layout()
    return fig


def plot_knockout_layers(layer_rows: list[dict]) -> Any:
    """Median KL at the last marker token per layer, knockout vs control, with bootstrap 95% CIs."""
    from steerkit.plots import plt

    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(layer_rows) + 3), 4))
    xs = list(range(len(layer_rows)))
    for arm, shift in (("knockout", -0.15), ("control", 0.15)):
        ys = [r[f"{arm}_kl_last_median"] for r in layer_rows]
        err = [[y - r[f"{arm}_kl_last_low"] for y, r in zip(ys, layer_rows)],
               [r[f"{arm}_kl_last_high"] - y for y, r in zip(ys, layer_rows)]]  # fmt: skip
        ax.errorbar([x + shift for x in xs], ys, yerr=err, fmt="o", capsize=3, label=f"{arm} (median, 95% CI)")
    ax.set_xticks(xs, [str(r["layer"]) for r in layer_rows])
    ax.set_yscale("symlog", linthresh=1e-6)  # KL spans orders of magnitude across layers
    ax.set(xlabel="layer", ylabel="KL(baseline || edited) at the marker", title="knockout vs random-edge control")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_patch_heatmaps(cells: list[dict], layers: tuple[int, ...], groups: tuple[str, ...]) -> Any:
    """Median recovered: layer x residual span group, and layer x {residual (all spans), attention row}."""
    from steerkit.plots import plt

    def grid(columns: list[tuple[str, str]]) -> Any:
        lookup = {(c["layer"], c["kind"], c["group"]): c["recovered_median"] for c in cells}
        values = [[lookup.get((layer, *col)) for col in columns] for layer in layers]
        return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)

    panels = [
        ("residual: span group", [("residual", g) for g in groups]),
        ("residual (all spans) vs attention row", [("residual", "all"), ("attention_row", "marker_row")]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, max(4, 0.25 * len(layers) + 2)))
    for ax, (title, cols) in zip(axes, panels):
        image = ax.imshow(grid(cols), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(cols)), [g if k == "residual" else "attn row" for k, g in cols], rotation=30)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set(title=title, xlabel="patched", ylabel="layer")
    fig.colorbar(image, ax=axes, label="median fraction of logit difference recovered")
    return fig
