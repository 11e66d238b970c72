"""Confidence intervals for proportions and their differences (Wilson, Newcombe).

Design note: pure functions, counts in and frozen results out, so an experiment's intervals can be recomputed from
logged counts. Newcombe's paired interval is the only hand-written maths (no library provides it); the rest comes
from statsmodels. Sign convention: positive means the steered arm succeeded more often.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from steerkit.errors import SteerkitError
from steerkit.stats.tests import _AsDict, _check_count, _check_k_n, _check_level


@dataclass(frozen=True)
class RiskDifference(_AsDict):
    """A difference in proportions (steered - baseline) with its interval."""

    estimate: float
    low: float
    high: float
    method: str


def _newcombe_phi(both: int, b: int, c: int, neither: int) -> float:
    """Newcombe's (1998) corrected phi between the two marginal proportions."""
    n = both + b + c + neither
    margins = (both + b) * (c + neither) * (both + c) * (b + neither)
    if margins == 0:
        return 0.0  # phi is undefined when a margin is empty; Newcombe sets it to 0
    cross = both * neither - b * c
    # Positive association is shrunk by n/2 (continuity-style), negative is kept as is.
    if cross > n / 2:
        return (cross - n / 2) / math.sqrt(margins)
    return min(cross, 0) / math.sqrt(margins)


def paired_risk_difference(b: int, c: int, n: int, *, both: int, confidence: float = 0.95) -> RiskDifference:
    """Paired difference in success rates with Newcombe's hybrid score interval.

    Estimate is p_steered - p_baseline = (b - c) / n. The interval is method 10 of
    Newcombe (1998, Stat Med 17:2635): Wilson limits for each marginal proportion
    combined by square-and-add with a corrected phi correlation. Hand-written
    because neither scipy nor statsmodels has a paired-difference interval; the
    Wilson limits come from statsmodels. The concordant split matters (it sets the
    marginals and phi), so ``both`` is required; ``neither = n - both - b - c``.

    Args:
        b: Pairs where only the steered run succeeded (0 -> 1).
        c: Pairs where only the baseline succeeded (1 -> 0).
        n: Total number of pairs (>= 1).
        both: Pairs where both runs succeeded.
        confidence: Two-sided confidence level in (0, 1).

    Returns:
        The estimate and its interval, clipped to [-1, 1].

    Raises:
        SteerkitError: If a count is invalid or both + b + c exceeds n.
    """
    b_i, c_i, both_i = _check_count("b", b), _check_count("c", c), _check_count("both", both)
    n_i = _check_count("n", n)
    conf = _check_level("confidence", confidence)
    if n_i < 1 or both_i + b_i + c_i > n_i:
        raise SteerkitError(f"n must be >= both + b + c and >= 1, got both={both_i} b={b_i} c={c_i} n={n_i}")
    p_s, p_b = (both_i + b_i) / n_i, (both_i + c_i) / n_i
    l_s, u_s = wilson_interval(both_i + b_i, n_i, conf)
    l_b, u_b = wilson_interval(both_i + c_i, n_i, conf)
    phi = _newcombe_phi(both_i, b_i, c_i, n_i - both_i - b_i - c_i)
    d_ls, d_us, d_lb, d_ub = p_s - l_s, u_s - p_s, p_b - l_b, u_b - p_b
    # max(0, .) guards a rounding-level negative radicand when phi is near 1.
    low = (p_s - p_b) - math.sqrt(max(0.0, d_ls**2 - 2 * phi * d_ls * d_ub + d_ub**2))
    high = (p_s - p_b) + math.sqrt(max(0.0, d_us**2 - 2 * phi * d_us * d_lb + d_lb**2))
    return RiskDifference((b_i - c_i) / n_i, max(-1.0, low), min(1.0, high), "newcombe-paired-hybrid-score")


def risk_difference_independent(k1: int, n1: int, k0: int, n0: int, confidence: float = 0.95) -> RiskDifference:
    """Difference k1/n1 - k0/n0 between independent proportions, Newcombe interval.

    Args:
        k1: Successes in the steered (or treatment) arm.
        n1: Trials in that arm (>= 1).
        k0: Successes in the baseline arm.
        n0: Trials in that arm (>= 1).
        confidence: Two-sided confidence level in (0, 1).

    Returns:
        The estimate with statsmodels' Newcombe hybrid score interval.

    Raises:
        SteerkitError: If a count is invalid or confidence is outside (0, 1).
    """
    k1_i, n1_i = _check_k_n("k1", k1, "n1", n1)
    k0_i, n0_i = _check_k_n("k0", k0, "n0", n0)
    conf = _check_level("confidence", confidence)
    low, high = confint_proportions_2indep(k1_i, n1_i, k0_i, n0_i, method="newcomb", compare="diff", alpha=1 - conf)
    return RiskDifference(k1_i / n1_i - k0_i / n0_i, float(low), float(high), "newcombe-hybrid-score")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a single proportion k / n.

    Args:
        k: Successes.
        n: Trials (>= 1).
        confidence: Two-sided confidence level in (0, 1).

    Returns:
        (low, high), from statsmodels' ``proportion_confint(method="wilson")``.

    Raises:
        SteerkitError: If k or n is invalid or confidence is outside (0, 1).
    """
    k_i, n_i = _check_k_n("k", k, "n", n)
    conf = _check_level("confidence", confidence)
    low, high = proportion_confint(k_i, n_i, alpha=1 - conf, method="wilson")
    # statsmodels' closed form leaves float round-off at the ends (k = 0 gives low 5.6e-17, k = n gives high
    # 0.9999999999999999), so the interval can miss its own estimate; the exact ends are 0 and 1.
    p = k_i / n_i
    return (0.0 if k_i == 0 else min(float(low), p)), (1.0 if k_i == n_i else max(float(high), p))


__all__ = ["RiskDifference", "paired_risk_difference", "risk_difference_independent", "wilson_interval"]
