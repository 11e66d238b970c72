"""Figures: matplotlib with the non-interactive Agg backend, selected here once for every experiment.

Design note: entry points run headless (MLflow, CI, a worker over ssh), so the backend is fixed before pyplot is
imported anywhere in steerkit; import `plt` (or call `figure`) from this module instead of importing pyplot.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] | None = None, **kw: Any) -> tuple[Any, Any]:
    """`plt.subplots` with a size of 5 x 4 inches per panel unless `size` is given."""
    return plt.subplots(nrows, ncols, figsize=size or (5.0 * ncols, 4.0 * nrows), **kw)


def close(fig: Any) -> None:
    """Release a figure once it is logged."""
    plt.close(fig)


def plot_rates_vs_dose(rows: list[dict], binary: list[str], reference: str) -> Any:
    """Steered rate with its Wilson 95% CI per run against dose, one panel per binary outcome."""
    fig, axes = plt.subplots(1, max(1, len(binary)), figsize=(5 * max(1, len(binary)), 4), squeeze=False)
    for ax, outcome in zip(axes[0], binary):
        sel = sorted((r for r in rows if r["outcome"] == outcome), key=lambda r: (r["dose"] is None, r["dose"] or 0))
        xs = [r["dose"] if r["dose"] is not None else i for i, r in enumerate(sel)]
        ys = [r["run_rate"] for r in sel]
        err = [[y - r["run_rate_low"] for y, r in zip(ys, sel)], [r["run_rate_high"] - y for y, r in zip(ys, sel)]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=4, label="steered (Wilson 95% CI)")
        label = "baseline (same run)" if reference == "baseline" else f"reference run {reference[:8]}"
        ax.plot(xs, [r["reference_rate"] for r in sel], "--", color="gray", label=label)
        ax.set(title=outcome, xlabel="dose (scale)", ylabel="rate", ylim=(-0.05, 1.05))
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


__all__ = ["close", "figure", "plot_rates_vs_dose", "plt"]
