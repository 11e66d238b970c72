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


__all__ = ["close", "figure", "plt"]
