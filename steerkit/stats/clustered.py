"""A paired binary outcome whose items come in clusters (prompts grouped by action): inference over clusters.

Design note: held-out-action claims generalise over actions, not over prompts. Ten prompts of one action share
wording and intent, so when steering flips them it tends to flip them together; McNemar over prompts then counts
one action's flip as ten independent pieces of evidence (two actions moving 10/10 give p ~ 2e-6 although only two
of ten actions moved). Here the unit of inference is the cluster: per cluster the sum of paired differences
(steered - baseline, each in {-1, 0, 1}) and its size; the estimate is the prompt-weighted mean difference; the
interval is a cluster bootstrap (actions resampled with replacement, `scipy.stats.bootstrap` with paired
(sum, size) data, percentile method); the p-value is the exact sign-flip permutation test on the cluster sums
(`scipy.stats.permutation_test`, one sample, `permutation_type="samples"`; exact up to 2^13 clusters' flips,
seeded random flips beyond). Under the null of no effect, each cluster's sum is symmetric about zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from steerkit.errors import SteerkitError


@dataclass(frozen=True)
class ClusteredDifference:
    """Paired risk difference over clusters.

    Attributes:
        estimate: mean over items of steered - baseline (a risk difference).
        low, high: cluster-bootstrap percentile interval (NaN with fewer than two clusters).
        p_value: two-sided exact sign-flip test on the per-cluster sums of differences.
        n, n_clusters: items and clusters.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    n: int
    n_clusters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(sums: np.ndarray, sizes: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis) / np.sum(sizes, axis=axis)


def _total(sums: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis)


def clustered_paired_difference(
    baseline: Sequence[bool],
    steered: Sequence[bool],
    clusters: Sequence[str],
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> ClusteredDifference:
    """Risk difference steered - baseline of paired binary outcomes, with cluster-level interval and test.

    Args:
        baseline, steered: the outcome of each item in the two arms (already joined by item id).
        clusters: each item's cluster (e.g. its action).
        confidence: interval level.
        n_resamples: bootstrap resamples, and the cap on sign flips (exact when 2^clusters <= n_resamples).
        seed: seeds the bootstrap (and random sign flips when not exact).
    """
    if not len(baseline) == len(steered) == len(clusters) or not len(baseline):
        raise SteerkitError(
            f"need equal, non-zero numbers of items, got {len(baseline)}, {len(steered)}, {len(clusters)}"
        )
    diff = np.asarray(steered, dtype=float) - np.asarray(baseline, dtype=float)
    names = sorted(set(map(str, clusters)))
    labels = np.array([str(c) for c in clusters])
    sums = np.array([diff[labels == c].sum() for c in names])
    sizes = np.array([float((labels == c).sum()) for c in names])
    estimate = float(diff.mean())
    if len(names) < 2:
        return ClusteredDifference(estimate, float("nan"), float("nan"), 1.0, len(diff), len(names))
    if not sums.any():
        # every cluster sums to zero: the sign-flip distribution is a point mass at the observed value
        return ClusteredDifference(estimate, 0.0, 0.0, 1.0, len(diff), len(names))
    boot = sps.bootstrap(
        (sums, sizes),
        _ratio,
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=seed,
    )
    flips = sps.permutation_test(
        (sums,),
        _total,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        random_state=seed,
    )
    ci = boot.confidence_interval
    return ClusteredDifference(estimate, float(ci.low), float(ci.high), float(flips.pvalue), len(diff), len(names))


__all__ = ["ClusteredDifference", "clustered_paired_difference"]
