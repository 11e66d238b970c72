"""feature_stats against scipy/statsmodels directly and against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests

from steerkit.errors import SteerkitError
from steerkit.sae.features import (
    constraint_values,
    divergence,
    feature_fisher_tests,
    firing_rates,
    flip_counts,
    length_ratio,
    select_coefficient,
    sequence_similarity,
    syntax_error_rate,
    top_features,
)


@pytest.fixture
def acts() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    passed = rng.random(40) < 0.4
    x = np.maximum(rng.normal(size=(40, 60)), 0) * (rng.random((40, 60)) < 0.3)
    x[:, 0] = passed * 2.0  # fires exactly on the correct samples
    x[:, 1] = (~passed) * 1.0  # exactly on the incorrect ones
    x[:, 2] = 0.0  # never fires: outside the family
    return x, passed


def test_fisher_per_feature_and_bh_match_scipy_and_statsmodels(acts):
    x, passed = acts
    eligible = np.ones(60, dtype=bool)
    eligible[3] = False  # a label-blind filter removes feature 3 from the family
    res = feature_fisher_tests(x, passed, eligible=eligible, alpha=0.1)
    family = [j for j in range(60) if j not in (2, 3) and (x[:, j] > 0).any()]
    assert res.family_size == len(family) and not res.tested[2] and not res.tested[3]
    for j in family:
        a, b = int((x[passed, j] > 0).sum()), int((x[~passed, j] > 0).sum())
        ref = fisher_exact([[a, b], [passed.sum() - a, (~passed).sum() - b]])
        assert res.p_values[j] == pytest.approx(ref.pvalue, rel=1e-12)
        assert res.separation[j] == pytest.approx(a / passed.sum() - b / (~passed).sum())
    reject, q, _, _ = multipletests(res.p_values[family], alpha=0.1, method="fdr_bh")
    np.testing.assert_allclose(res.q_values[family], q, rtol=1e-12)
    assert res.significant[family].tolist() == reject.tolist()
    assert np.isnan(res.p_values[2]) and np.isnan(res.q_values[3])
    assert res.significant[0] and res.significant[1]


def test_top_features_ranking_and_rows(acts):
    x, passed = acts
    res = feature_fisher_tests(x, passed)
    assert top_features(res, 1, prefer="correct") == [0]
    assert top_features(res, 1, prefer="incorrect") == [1]
    assert all(res.separation[j] > 0 for j in top_features(res, 10, prefer="correct"))
    row = res.row(0)
    assert row["separation"] == 1.0 and row["rate_correct"] == 1.0 and row["rate_incorrect"] == 0.0
    assert res.row(2)["p_value"] is None
    with pytest.raises(SteerkitError, match="prefer"):
        top_features(res, 1, prefer="up")


def test_feature_tests_need_both_outcomes_and_matching_shapes():
    with pytest.raises(SteerkitError, match="both outcomes"):
        feature_fisher_tests(np.ones((4, 3)), [True] * 4)
    with pytest.raises(SteerkitError, match="shape"):
        feature_fisher_tests(np.ones((4, 3)), [True, False])
    np.testing.assert_allclose(firing_rates(np.array([[0, 1.0], [2.0, 0.5]])), [0.5, 1.0])


def test_flip_counts_on_hand_built_outcomes():
    base = [True, True, True, False, False, False, False, True]
    steer = [True, False, False, True, False, False, True, True]
    got = flip_counts(base, steer)
    assert (got.n_baseline_pass, got.n_baseline_fail, got.corrected, got.corrupted) == (4, 4, 2, 2)
    assert (got.correction_rate, got.corruption_rate, got.flip_rate) == (0.5, 0.5, 0.5)
    none_failed = flip_counts([True, True], [True, False])
    assert math.isnan(none_failed.correction_rate) and none_failed.corruption_rate == 0.5
    with pytest.raises(SteerkitError):
        flip_counts([True], [True, False])


def test_sequence_metrics_on_hand_strings():
    assert sequence_similarity("abcd", "abxd") == 0.75  # M = 3 matched, T = 8
    assert sequence_similarity([1, 2, 3], [1, 2, 4]) == pytest.approx(4 / 6)
    assert sequence_similarity("", "") == 1.0 and sequence_similarity("abc", "") == 0.0
    long_a, long_b = "ab" * 300, "ab" * 300 + "c"  # autojunk would junk 'a'/'b' here and report ~0
    assert sequence_similarity(long_a, long_b) == pytest.approx(1200 / 1201)
    assert length_ratio("abcdef", "abc") == 2.0 and math.isnan(length_ratio("a", ""))
    assert syntax_error_rate(["def f():\n    return 1\n", "def f(:", ""]) == pytest.approx(2 / 3)
    div = divergence(["abcd", "xy"], ["abxd", "xy"], [[1, 2, 3], [5]], [[1, 2, 4], [5]])
    assert div == pytest.approx({"char_similarity": 0.875, "token_similarity": (4 / 6 + 1) / 2, "length_ratio": 1.0})


def _trial(coef, objective, sim, syntax):
    return {"coefficient": coef, "correction_rate": objective, "char_similarity": sim, "syntax_error_rate": syntax}


def test_selection_rule_constraint_not_binding():
    trials = [_trial(1, 0.0, 0.95, 0.0), _trial(10, 0.3, 0.8, 0.1), _trial(100, 0.2, 0.5, 0.1)]
    got = select_coefficient(trials, objective="correction_rate", min_similarity=0.4, max_syntax_error=0.2)
    assert (got["coefficient"], got["n_feasible"], got["binding"]) == (10.0, 3, False)


def test_selection_rule_constraint_binding_and_ties():
    trials = [
        _trial(1, 0.1, 0.9, 0.0),
        _trial(3, 0.1, 0.85, 0.0),  # tie with 1 on the objective: the smaller coefficient wins
        _trial(300, 0.6, 0.2, 0.1),  # best objective, below the similarity floor
        _trial(1000, 0.7, 0.9, 0.9),  # best objective, above the syntax ceiling
    ]
    got = select_coefficient(trials, objective="correction_rate", min_similarity=0.4, max_syntax_error=0.2)
    assert (got["coefficient"], got["objective_value"], got["n_feasible"], got["binding"]) == (1.0, 0.1, 2, True)
    none = select_coefficient(trials[2:], objective="correction_rate", min_similarity=0.4, max_syntax_error=0.2)
    assert none["coefficient"] is None and not none["feasible"] and none["binding"]
    assert constraint_values(0.5, 0.1, min_similarity=0.4, max_syntax_error=0.2) == pytest.approx((-0.1, -0.1))
    assert constraint_values(math.nan, 0.0, min_similarity=0.4, max_syntax_error=0.2)[0] == math.inf


def _fires(pattern: list[tuple[int, int]], n_c: int = 20, n_i: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Firing matrix where feature j fires on the first a_j correct and the first b_j incorrect samples."""
    passed = np.array([True] * n_c + [False] * n_i)
    x = np.zeros((n_c + n_i, len(pattern)))
    for j, (a, b) in enumerate(pattern):
        x[:a, j] = 1.0
        x[n_c : n_c + b, j] = 1.0
    return x, passed


def test_features_are_ranked_by_the_test_not_by_the_raw_difference():
    # feature 0: 7/20 vs 0/20 (separation 0.35, p 0.008); feature 1: 12/20 vs 4/20 (separation 0.40, p 0.022)
    x, passed = _fires([(7, 0), (12, 4), (0, 9)])
    res = feature_fisher_tests(x, passed)
    p0 = fisher_exact([[7, 0], [13, 20]]).pvalue
    p1 = fisher_exact([[12, 4], [8, 16]]).pvalue
    assert p0 < p1 and res.separation[1] > res.separation[0]
    assert top_features(res, 2, prefer="correct") == [0, 1]
    assert top_features(res, 1, prefer="incorrect") == [2]


def test_min_fires_shrinks_the_declared_family_before_bh():
    x, passed = _fires([(7, 0), (12, 4), (2, 0), (1, 1), (0, 9)])
    res = feature_fisher_tests(x, passed, min_fires=3)
    family = [0, 1, 4]  # features 2 and 3 fire on only 2 samples each
    assert res.tested.tolist() == [j in family for j in range(5)] and res.family_size == 3
    _, q, _, _ = multipletests(
        [fisher_exact([[a, b], [20 - a, 20 - b]]).pvalue for a, b in [(7, 0), (12, 4), (0, 9)]], method="fdr_bh"
    )
    np.testing.assert_allclose(res.q_values[family], q, rtol=1e-12)
    assert np.isnan(res.q_values[2]) and res.row(2)["q_value"] is None
    assert feature_fisher_tests(x, passed).family_size == 5
    with pytest.raises(SteerkitError, match="min_fires"):
        feature_fisher_tests(x, passed, min_fires=0)
