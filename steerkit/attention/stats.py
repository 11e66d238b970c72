"""Statistics for attention comparisons and dose-response: pure functions over arrays (no I/O, no mlflow).

Design note: every test is scipy's or statsmodels' own; this module only arranges the data and names the
results. Python-vs-Rust attention at one layer gets: Welch's t and Mann-Whitney U (unpaired, descriptive), the
ratio of means with a seeded bootstrap interval, an OLS of attention on language + marker->target token distance
(the languages put the test at different distances from the function, so the raw difference is confounded by
distance), and a paired Wilcoxon signed-rank test over tasks (the corpus pairs each Python function with its
Rust version). The multiplicity family is declared by `LAYER_FAMILY`: per layer two hypotheses (the paired
language difference; the language effect at equal distance), one p each, BH over 2 x n_layers. Dose-response
moved to `steerkit.stats.dose_response` (item-clustered GEE); it is re-exported here so old imports work.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from steerkit.stats import benjamini_hochberg
from steerkit.stats.dose_response import DoseResponse, dose_response  # moved; re-exported for old imports

LAYER_FAMILY = ("paired_wilcoxon_p", "ols_language_p")  # one p per hypothesis per layer, BH over all of them


@dataclass(frozen=True)
class LanguageComparison:
    """Python vs Rust attention at one layer (NaN where a test cannot be computed, e.g. constant data)."""

    n_python: int
    n_rust: int
    n_pairs: int
    python_mean: float
    rust_mean: float
    difference: float
    ratio: float
    ratio_low: float
    ratio_high: float
    welch_t: float
    welch_p: float
    mannwhitney_u: float
    mannwhitney_p: float
    ols_language_coef: float
    ols_language_low: float
    ols_language_high: float
    ols_language_p: float
    ols_distance_coef: float
    paired_median_difference: float
    paired_wilcoxon_stat: float
    paired_wilcoxon_p: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: Any) -> float:
    value = float(x)
    return value if math.isfinite(value) else float("nan")


def welch_and_mannwhitney(python: np.ndarray, rust: np.ndarray) -> tuple[float, float, float, float]:
    """(t, p) of Welch's t-test and (U, p) of the two-sided Mann-Whitney U test, Python vs Rust."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        welch = sps.ttest_ind(python, rust, equal_var=False)
        mwu = sps.mannwhitneyu(python, rust, alternative="two-sided")
    return _finite(welch.statistic), _finite(welch.pvalue), _finite(mwu.statistic), _finite(mwu.pvalue)


def ratio_of_means_ci(
    python: np.ndarray, rust: np.ndarray, *, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """mean(python) / mean(rust) with a percentile bootstrap interval (independent resampling of each sample).

    Percentile rather than BCa: BCa's jackknife fails on the small, skewed samples a `limit` run gives.
    """
    ratio = float(np.mean(python) / np.mean(rust)) if np.mean(rust) != 0 else float("nan")
    if n_resamples < 1 or len(python) < 2 or len(rust) < 2 or not math.isfinite(ratio):
        return ratio, float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap(
            (np.asarray(python), np.asarray(rust)),
            lambda x, y, axis=-1: np.mean(x, axis=axis) / np.mean(y, axis=axis),
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return ratio, _finite(res.confidence_interval.low), _finite(res.confidence_interval.high)


def language_effect_ols(values: np.ndarray, is_python: np.ndarray, distance: np.ndarray) -> dict[str, float]:
    """OLS `attention ~ python + distance`: the language coefficient (Python minus Rust at equal distance).

    Returns:
        coef, low, high (95% CI), p of the language term, and the distance coefficient; NaN when the design is
        singular or has no residual degrees of freedom.
    """
    import pandas as pd
    import statsmodels.formula.api as smf

    frame = pd.DataFrame({"attention": values, "python": is_python.astype(float), "distance": distance})
    nan = {"coef": float("nan"), "low": float("nan"), "high": float("nan"), "p": float("nan"), "distance": float("nan")}
    if len(frame) < 4 or frame["python"].nunique() < 2 or frame["distance"].nunique() < 2:
        return nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.ols("attention ~ python + distance", data=frame).fit()
    if fit.df_resid < 1 or np.linalg.matrix_rank(fit.model.exog) < 3:
        return nan
    low, high = fit.conf_int().loc["python"]
    return {
        "coef": _finite(fit.params["python"]),
        "low": _finite(low),
        "high": _finite(high),
        "p": _finite(fit.pvalues["python"]),
        "distance": _finite(fit.params["distance"]),
    }


def paired_wilcoxon(python: np.ndarray, rust: np.ndarray) -> tuple[float, float, float]:
    """(median of python - rust, W, two-sided p) of the Wilcoxon signed-rank test over matched pairs."""
    diff = np.asarray(python) - np.asarray(rust)
    if len(diff) < 1 or np.all(diff == 0):
        return _finite(np.median(diff)) if len(diff) else float("nan"), float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.wilcoxon(python, rust)
    return _finite(np.median(diff)), _finite(res.statistic), _finite(res.pvalue)


def compare_languages(
    python: np.ndarray,
    rust: np.ndarray,
    py_distance: np.ndarray,
    rs_distance: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> LanguageComparison:
    """All Python-vs-Rust statistics at one layer.

    Args:
        python, rust: per-item attention `[n_python]`, `[n_rust]`.
        py_distance, rs_distance: per-item marker -> target token distance, aligned with the values.
        pairs: (python index, rust index) of items with the same task.
        n_resamples: bootstrap resamples (0 = no interval).
        seed: bootstrap seed.
    """
    python, rust = np.asarray(python, float), np.asarray(rust, float)
    t, p_t, u, p_u = welch_and_mannwhitney(python, rust)
    ratio, r_low, r_high = ratio_of_means_ci(python, rust, n_resamples=n_resamples, seed=seed)
    ols = language_effect_ols(
        np.concatenate([python, rust]),
        np.r_[np.ones(len(python)), np.zeros(len(rust))],
        np.concatenate([py_distance, rs_distance]).astype(float),
    )
    pi, ri = [p for p, _ in pairs], [r for _, r in pairs]
    med, w, p_w = paired_wilcoxon(python[pi], rust[ri])
    return LanguageComparison(
        n_python=len(python),
        n_rust=len(rust),
        n_pairs=len(pairs),
        python_mean=float(python.mean()),
        rust_mean=float(rust.mean()),
        difference=float(python.mean() - rust.mean()),
        ratio=ratio,
        ratio_low=r_low,
        ratio_high=r_high,
        welch_t=t,
        welch_p=p_t,
        mannwhitney_u=u,
        mannwhitney_p=p_u,
        ols_language_coef=ols["coef"],
        ols_language_low=ols["low"],
        ols_language_high=ols["high"],
        ols_language_p=ols["p"],
        ols_distance_coef=ols["distance"],
        paired_median_difference=med,
        paired_wilcoxon_stat=w,
        paired_wilcoxon_p=p_w,
    )


def bh_over_layers(rows: list[dict[str, Any]], keys: Sequence[str] = LAYER_FAMILY, alpha: float = 0.05) -> int:
    """Add `<key>_q` / `<key>_reject` to each row: one BH over every (row, key) p-value; returns the family size.

    NaN p-values (tests that could not run) are left out of the family and get q None.
    """
    flat = [row[k] for row in rows for k in keys]
    result = benjamini_hochberg(flat, alpha=alpha)
    for n, (row, k) in enumerate((row, k) for row in rows for k in keys):
        q = result.q_values[n]
        row[f"{k.removesuffix('_p')}_q"] = float("nan") if q is None else q
        row[f"{k.removesuffix('_p')}_reject"] = result.rejected[n]
    return result.family_size


__all__ = [
    "LAYER_FAMILY",
    "DoseResponse",
    "LanguageComparison",
    "bh_over_layers",
    "compare_languages",
    "dose_response",
    "language_effect_ols",
    "paired_wilcoxon",
    "ratio_of_means_ci",
    "welch_and_mannwhitney",
]
