"""Tests for steerkit.stats: each checks against an independent computation."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar

from steerkit.errors import SteerkitError
from steerkit.stats import (
    BHResult,
    benjamini_hochberg,
    fisher_exact_one_tailed,
    mcnemar_exact,
    paired_outcomes,
    paired_risk_difference,
    risk_difference_independent,
    wilson_interval,
)


def _wilson_closed_form(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson (1927) score interval written out by hand."""
    z = sps.norm.ppf(1 - (1 - confidence) / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


# --- Fisher -----------------------------------------------------------------


def test_fisher_all_vs_none_is_one_over_binomial_coefficient() -> None:
    # 3/3 vs 0/3: the only table at least this extreme has probability 1 / C(6, 3).
    res = fisher_exact_one_tailed(3, 3, 0, 3)
    assert res.p_value == pytest.approx(1 / math.comb(6, 3))
    assert math.isinf(res.odds_ratio)


@pytest.mark.parametrize(("ks", "ns", "kb", "nb"), [(7, 20, 2, 20), (1, 10, 5, 12), (4, 4, 4, 9), (0, 5, 0, 7)])
def test_fisher_matches_hypergeometric_tail(ks: int, ns: int, kb: int, nb: int) -> None:
    res = fisher_exact_one_tailed(ks, ns, kb, nb)
    # P(X >= ks) with X the steered successes given the margins.
    expected = sps.hypergeom.sf(ks - 1, ns + nb, ks + kb, ns)
    assert res.p_value == pytest.approx(expected, rel=1e-9)
    assert (res.k_steered, res.n_steered, res.k_baseline, res.n_baseline) == (ks, ns, kb, nb)


def test_fisher_odds_ratio_is_sample_cross_product() -> None:
    res = fisher_exact_one_tailed(7, 20, 2, 20)
    assert res.odds_ratio == pytest.approx((7 * 18) / (13 * 2))


def test_fisher_rejects_k_above_n_naming_values() -> None:
    with pytest.raises(ValueError, match=r"n_steered must be >= k_steered, got k_steered=5 n_steered=3"):
        fisher_exact_one_tailed(5, 3, 0, 3)


@pytest.mark.parametrize("bad", [-1, 2.5, True, None])
def test_fisher_rejects_non_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="k_baseline"):
        fisher_exact_one_tailed(1, 3, bad, 3)  # type: ignore[arg-type]


def test_fisher_rejects_empty_arm() -> None:
    with pytest.raises(ValueError, match="n_baseline must be >= 1"):
        fisher_exact_one_tailed(1, 3, 0, 0)


# --- McNemar ----------------------------------------------------------------


@pytest.mark.parametrize(("b", "c"), [(0, 1), (1, 0), (3, 3), (7, 2), (2, 11), (15, 9), (0, 20)])
def test_mcnemar_two_sided_matches_statsmodels(b: int, c: int) -> None:
    table = np.array([[10, c], [b, 30]])  # rows: baseline success/fail; cols: steered success/fail
    expected = mcnemar(table, exact=True).pvalue
    res = mcnemar_exact(b, c)
    assert res.p_value == pytest.approx(expected, rel=1e-9)
    assert (res.b, res.c, res.n_discordant) == (b, c, b + c)
    assert res.statistic == pytest.approx(b / (b + c))


def test_mcnemar_greater_is_upper_binomial_tail() -> None:
    # All 5 discordant pairs favour steering: P = (1/2)^5.
    assert mcnemar_exact(5, 0, "greater").p_value == pytest.approx(1 / 32)
    assert mcnemar_exact(9, 4, "greater").p_value == pytest.approx(sps.binom.sf(8, 13, 0.5))


def test_mcnemar_less_is_lower_binomial_tail() -> None:
    assert mcnemar_exact(4, 9, "less").p_value == pytest.approx(sps.binom.cdf(4, 13, 0.5))
    assert mcnemar_exact(9, 4, "less").p_value > 0.9


def test_mcnemar_no_discordant_pairs_is_p_one() -> None:
    res = mcnemar_exact(0, 0, "greater")
    assert res.p_value == 1.0
    assert res.statistic is None
    assert res.to_dict() == {
        "b": 0,
        "c": 0,
        "n_discordant": 0,
        "statistic": None,
        "p_value": 1.0,
        "alternative": "greater",
    }


def test_mcnemar_rejects_unknown_alternative() -> None:
    with pytest.raises(ValueError, match="'bigger'"):
        mcnemar_exact(3, 1, "bigger")  # type: ignore[arg-type]


def test_mcnemar_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="c must be a non-negative integer, got -2"):
        mcnemar_exact(3, -2)


# --- paired_outcomes --------------------------------------------------------


def test_paired_outcomes_counts_cells() -> None:
    baseline = [True, True, False, False, False, True, False]
    steered = [True, False, True, True, False, True, False]
    counts = paired_outcomes(baseline, steered)
    assert counts.to_dict() == {"n": 7, "both": 2, "baseline_only": 1, "steered_only": 2, "neither": 2}
    assert (counts.b, counts.c) == (2, 1)


def test_paired_outcomes_accepts_numpy_and_ints() -> None:
    counts = paired_outcomes(np.array([1, 0, 0], dtype=bool), [0, 1, 0])  # type: ignore[arg-type, list-item]
    assert (counts.both, counts.baseline_only, counts.steered_only, counts.neither) == (0, 1, 1, 1)


def test_paired_outcomes_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="got 3 and 2"):
        paired_outcomes([True, False, True], [True, False])


def test_paired_outcomes_rejects_non_boolean() -> None:
    with pytest.raises(ValueError, match=r"steered\[1\] must be boolean, got None"):
        paired_outcomes([True, False], [True, None])  # type: ignore[list-item]


# --- paired_risk_difference ---------------------------------------------------


def test_paired_rd_matches_published_example() -> None:
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8:
    # Cavo et al. (2012) table [[59, 6], [16, 80]], Newcombe square-and-add
    # estimate -0.0621, 95% CI -0.1186 to -0.0046 (as in the R package contingencytables).
    res = paired_risk_difference(6, 16, 161, both=59)
    assert round(res.estimate, 4) == -0.0621
    assert (round(res.low, 4), round(res.high, 4)) == (-0.1186, -0.0046)


def _newcombe_paired_brute_force(both: int, b: int, c: int, neither: int) -> tuple[float, float]:
    """Newcombe (1998) method 10 via the correlation of the expanded 0/1 data."""
    steered = np.array([1] * both + [1] * b + [0] * c + [0] * neither, dtype=float)
    baseline = np.array([1] * both + [0] * b + [1] * c + [0] * neither, dtype=float)
    n = len(steered)
    cross = both * neither - b * c
    if steered.std() == 0 or baseline.std() == 0:
        phi = 0.0
    else:
        r = float(np.corrcoef(steered, baseline)[0, 1])  # = cross / sqrt(margins)
        phi = r if cross <= 0 else (r * (cross - n / 2) / cross if cross > n / 2 else 0.0)
    p1, p2 = steered.mean(), baseline.mean()
    l1, u1 = _wilson_closed_form(int(steered.sum()), n)
    l2, u2 = _wilson_closed_form(int(baseline.sum()), n)
    lower_var = (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
    upper_var = (u1 - p1) ** 2 + (p2 - l2) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2)
    return p1 - p2 - math.sqrt(lower_var), p1 - p2 + math.sqrt(upper_var)


@pytest.mark.parametrize(
    ("both", "b", "c", "neither"),
    [(12, 9, 2, 21), (14, 5, 0, 22), (1, 1, 7, 12), (0, 3, 0, 0), (5, 0, 0, 5), (2, 6, 5, 1), (30, 1, 1, 30)],
)
def test_paired_rd_matches_brute_force(both: int, b: int, c: int, neither: int) -> None:
    n = both + b + c + neither
    res = paired_risk_difference(b, c, n, both=both)
    low, high = _newcombe_paired_brute_force(both, b, c, neither)
    assert res.estimate == pytest.approx((b - c) / n)
    assert res.low == pytest.approx(max(-1.0, low), abs=1e-12)
    assert res.high == pytest.approx(min(1.0, high), abs=1e-12)


def test_paired_rd_properties() -> None:
    grid = itertools.product(range(0, 7, 3), range(0, 7, 2), range(0, 7, 2), range(0, 7, 3))
    for both, b, c, neither in grid:
        n = both + b + c + neither
        if n == 0:
            continue
        res = paired_risk_difference(b, c, n, both=both)
        assert -1.0 <= res.low <= res.estimate <= res.high <= 1.0
        swapped = paired_risk_difference(c, b, n, both=both)
        assert swapped.low == pytest.approx(-res.high) and swapped.high == pytest.approx(-res.low)


def test_paired_rd_narrows_with_n() -> None:
    small = paired_risk_difference(9, 2, 44, both=12)
    large = paired_risk_difference(36, 8, 176, both=48)
    assert large.estimate == pytest.approx(small.estimate)
    assert large.high - large.low < small.high - small.low


def test_paired_rd_confidence_widens() -> None:
    r90 = paired_risk_difference(9, 2, 44, both=12, confidence=0.90)
    r99 = paired_risk_difference(9, 2, 44, both=12, confidence=0.99)
    assert r99.low < r90.low and r99.high > r90.high


def test_paired_rd_rejects_inconsistent_counts() -> None:
    with pytest.raises(ValueError, match="both=12 b=9 c=2 n=20"):
        paired_risk_difference(9, 2, 20, both=12)
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_risk_difference(9, 2, 44, both=12, confidence=95)


# --- risk_difference_independent ------------------------------------------------


def test_independent_rd_matches_published_example() -> None:
    # Fagerland, Lydersen & Laake (2017), ch. 4: Perondi et al. (2004) 7/34 vs 1/34,
    # Newcombe hybrid score estimate 0.1765, 95% CI 0.0189 to 0.3404.
    res = risk_difference_independent(7, 34, 1, 34)
    assert round(res.estimate, 4) == 0.1765
    assert (round(res.low, 4), round(res.high, 4)) == (0.0189, 0.3404)


@pytest.mark.parametrize(("k1", "n1", "k0", "n0"), [(56, 70, 48, 80), (9, 10, 3, 10), (0, 15, 4, 12), (5, 5, 0, 8)])
def test_independent_rd_matches_hand_newcombe(k1: int, n1: int, k0: int, n0: int) -> None:
    p1, p0 = k1 / n1, k0 / n0
    (l1, u1), (l0, u0) = _wilson_closed_form(k1, n1), _wilson_closed_form(k0, n0)
    res = risk_difference_independent(k1, n1, k0, n0)
    assert res.low == pytest.approx(p1 - p0 - math.hypot(p1 - l1, u0 - p0), abs=1e-12)
    assert res.high == pytest.approx(p1 - p0 + math.hypot(u1 - p1, p0 - l0), abs=1e-12)


def test_independent_rd_rejects_k_above_n() -> None:
    with pytest.raises(ValueError, match="n0 must be >= k0, got k0=9 n0=8"):
        risk_difference_independent(1, 5, 9, 8)


# --- Benjamini-Hochberg -----------------------------------------------------------


def test_bh_hand_computed_q_values() -> None:
    # Sorted p: .005 .01 .03 .04 -> p*m/rank: .02 .02 .04 .04 (already monotone).
    res = benjamini_hochberg([0.01, 0.04, 0.03, 0.005], alpha=0.03)
    assert res.q_values == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert res.rejected == [True, False, False, True]
    assert (res.family_size, res.n_tested) == (4, 4)


def test_bh_excludes_missing_p_values_from_family() -> None:
    res = benjamini_hochberg([0.01, None, 0.04, float("nan"), 0.03, 0.005], alpha=0.03)
    # Same q as the 4-test family above: m must be 4, not 6.
    assert res.q_values[1] is None and res.q_values[3] is None
    assert [res.q_values[i] for i in (0, 2, 4, 5)] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert res.rejected == [True, False, False, False, False, True]
    assert res.family_size == 4


def test_bh_all_missing() -> None:
    assert benjamini_hochberg([None, float("nan")]) == BHResult([False, False], [None, None], 0, 0)
    assert benjamini_hochberg([]) == BHResult([], [], 0, 0)


def test_bh_matches_step_up_rule() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = np.concatenate([rng.uniform(0, 0.02, rng.integers(0, 5)), rng.uniform(0, 1, rng.integers(1, 15))])
        m, order = len(p), np.argsort(p)
        passing = [i for i in range(1, m + 1) if p[order[i - 1]] <= i * 0.05 / m]
        expected = np.zeros(m, dtype=bool)
        expected[order[: max(passing, default=0)]] = True
        assert benjamini_hochberg(list(p), alpha=0.05).rejected == expected.tolist()


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.2"])
def test_bh_rejects_invalid_p(bad: object) -> None:
    with pytest.raises(ValueError, match=r"p_values\[1\] must be in \[0, 1\]"):
        benjamini_hochberg([0.1, bad])  # type: ignore[list-item]


# --- Wilson -------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n", "conf"), [(0, 10, 0.95), (3, 10, 0.95), (10, 10, 0.9), (47, 113, 0.99)])
def test_wilson_matches_closed_form(k: int, n: int, conf: float) -> None:
    assert wilson_interval(k, n, conf) == pytest.approx(_wilson_closed_form(k, n, conf), abs=1e-12)


def test_wilson_contains_its_estimate_with_exact_ends() -> None:
    """statsmodels leaves round-off at k = 0 and k = n (e.g. high 0.9999999999999999 < 1 = k/n), which made a
    plot's error bars negative; the interval must contain k/n, with ends exactly 0 and 1 there."""
    for n in range(1, 61):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert low <= k / n <= high, (k, n, low, high)
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_wilson_rejects_zero_trials() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        wilson_interval(0, 0)


# --- result objects -------------------------------------------------------------------


def test_results_are_frozen_and_serialisable() -> None:
    res = risk_difference_independent(7, 34, 1, 34)
    assert res.to_dict() == {"estimate": res.estimate, "low": res.low, "high": res.high, "method": res.method}
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.low = 0.0  # type: ignore[misc]
    counts = paired_outcomes([True], [False])
    assert counts.to_dict() == {"n": 1, "both": 0, "baseline_only": 1, "steered_only": 0, "neither": 0}


def test_bad_input_raises_steerkit_error() -> None:
    # Entry points catch SteerkitError (a ValueError) to fail the run with a one-line message.
    with pytest.raises(SteerkitError, match="alpha must be in"):
        benjamini_hochberg([0.1], alpha=0.0)


def test_join_by_id_pairs_by_id_not_position():
    from steerkit.stats import join_by_id

    base = [{"prompt_id": "b", "v": 2}, {"prompt_id": "a", "v": 1}]
    steer = [{"prompt_id": "a", "v": 10}, {"prompt_id": "b", "v": 20}]
    pairs = join_by_id(base, steer, order=["a", "b"])
    assert [(x["v"], y["v"]) for x, y in pairs] == [(1, 10), (2, 20)]
    assert [(x["v"], y["v"]) for x, y in join_by_id(base, steer)] == [(2, 20), (1, 10)]


@pytest.mark.parametrize(
    ("left", "right", "needle"),
    [
        ([{"prompt_id": "a"}], [{"prompt_id": "b"}], "different ids"),
        ([{"prompt_id": "a"}, {"prompt_id": "a"}], [{"prompt_id": "a"}], "duplicate prompt_id 'a'"),
        ([{"id": "a"}], [{"prompt_id": "a"}], "no 'prompt_id'"),
    ],
)
def test_join_by_id_refuses_mismatched_arms(left, right, needle):
    from steerkit.stats import join_by_id

    with pytest.raises(SteerkitError, match=needle):
        join_by_id(left, right)
