"""steerkit.stats.compare: pairing by id, paired tests against scipy/statsmodels, BH over the declared family."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from steerkit.errors import SteerkitError
from steerkit.stats.compare import (
    Comparison,
    adjust_family,
    compare_binary,
    compare_continuous,
    markdown_table,
    median_difference_ci,
    pair_by_id,
)
from steerkit.stats.comparisons import DEFAULT_MATCH, match_keys, match_runs

COMMON = {"run_id": "r1", "reference": "baseline", "outcome": "x"}


def _rows(pairs: dict[str, tuple]) -> list[dict]:
    return [{"id": k, "baseline_x": a, "steered_x": b} for k, (a, b) in pairs.items()]


def test_pair_by_id_aligns_sorted_and_counts_missing_on_each_side():
    ref = [{"id": "b", "v": 1}, {"id": "a", "v": 0}, {"id": "only_ref", "v": 1}, {"id": "nan", "v": float("nan")}]
    run = [{"id": "a", "w": 1}, {"id": "b", "w": 0}, {"id": "only_run", "w": 1}, {"id": "nan", "w": 1}]
    p = pair_by_id(ref, run, "v", "w")
    assert p.ids == ["a", "b"] and p.reference == [0, 1] and p.run == [1, 0]
    assert (p.missing_reference, p.missing_run, p.missing_value, p.n_dropped) == (1, 1, 1, 3)


@pytest.mark.parametrize(
    ("ref", "run", "needle"),
    [
        ([{"id": "a", "v": 1}, {"id": "a", "v": 0}], [{"id": "a", "w": 1}], "duplicate id 'a'"),
        ([{"v": 1}], [{"id": "a", "w": 1}], "has no 'id'"),
        ([{"id": "a", "v": 1}], [{"id": "a", "other": 1}], "no column 'w'"),
    ],
)
def test_pair_by_id_rejects_bad_tables(ref, run, needle):
    with pytest.raises(SteerkitError, match=needle):
        pair_by_id(ref, run, "v", "w")


def test_compare_binary_matches_statsmodels_mcnemar_and_counts():
    rng = np.random.default_rng(3)
    base, steer = rng.random(40) < 0.3, rng.random(40) < 0.6
    rows = _rows({f"s{i}": (bool(a), bool(b)) for i, (a, b) in enumerate(zip(base, steer))})
    c = compare_binary(pair_by_id(rows, rows, "baseline_x", "steered_x"), **COMMON, dose=2.0)
    table = [[int(np.sum(base & steer)), int(np.sum(base & ~steer))], [int(np.sum(~base & steer)), 0]]
    table[1][1] = 40 - table[0][0] - table[0][1] - table[1][0]
    assert c.b == table[1][0] and c.c == table[0][1]
    assert c.p_value == pytest.approx(mcnemar(table, exact=True).pvalue, abs=1e-12)
    assert c.effect == pytest.approx(steer.mean() - base.mean())
    assert c.effect_low <= c.effect <= c.effect_high
    assert c.run_rate == pytest.approx(steer.mean()) and c.reference_rate == pytest.approx(base.mean())
    assert c.run_rate_low <= c.run_rate <= c.run_rate_high and c.dose == 2.0 and c.n_pairs == 40


def test_compare_binary_no_discordant_pairs_is_p_one():
    rows = _rows({"a": (True, True), "b": (False, False)})
    c = compare_binary(pair_by_id(rows, rows, "baseline_x", "steered_x"), **COMMON)
    assert c.p_value == 1.0 and c.effect == 0.0


def test_compare_binary_rejects_non_boolean_and_empty():
    rows = _rows({"a": (2, 1)})
    with pytest.raises(SteerkitError, match="must be boolean"):
        compare_binary(pair_by_id(rows, rows, "baseline_x", "steered_x"), **COMMON)
    with pytest.raises(SteerkitError, match="no paired samples"):
        compare_binary(pair_by_id([{"id": "a", "v": 1}], [{"id": "b", "w": 1}], "v", "w"), **COMMON)


def test_compare_continuous_matches_scipy_wilcoxon_and_is_seeded():
    rng = np.random.default_rng(0)
    base = rng.integers(10, 50, 30).astype(float)
    steer = base + rng.normal(3, 5, 30).round()
    rows = _rows({f"s{i:02d}": (a, b) for i, (a, b) in enumerate(zip(base, steer))})
    pairing = pair_by_id(rows, rows, "baseline_x", "steered_x")
    c = compare_continuous(pairing, **COMMON, seed=1)
    assert c.p_value == pytest.approx(sps.wilcoxon(steer - base, zero_method="wilcox").pvalue, rel=1e-12)
    assert c.effect == pytest.approx(float(np.median(steer - base)))
    assert c.effect_low <= c.effect <= c.effect_high
    again = compare_continuous(pairing, **COMMON, seed=1)
    assert (again.effect_low, again.effect_high) == (c.effect_low, c.effect_high)
    assert c.to_dict()["run_mean"] == pytest.approx(steer.mean())


def test_compare_continuous_identical_arms_is_p_one_not_nan():
    rows = _rows({"a": (5, 5), "b": (7, 7), "c": (1, 1)})
    c = compare_continuous(pair_by_id(rows, rows, "baseline_x", "steered_x"), **COMMON)
    assert c.p_value == 1.0 and (c.effect, c.effect_low, c.effect_high) == (0.0, 0.0, 0.0)


def test_median_difference_ci_brackets_the_median():
    median, low, high = median_difference_ci([1, 2, 3, 4, 100, -3, 2, 2], seed=0)
    assert median == 2.0 and low <= median <= high


def test_adjust_family_is_bh_over_every_comparison():
    ps = [0.001, 0.02, 0.04, 0.3, 1.0]
    comps = [
        Comparison(f"r{i}", "baseline", "x", "binary", "mcnemar_exact", 10, 0, p, 0.0, 0.0, 0.0, "rd")
        for i, p in enumerate(ps)
    ]
    rows, family = adjust_family(comps, alpha=0.05)
    reject, q, _, _ = multipletests(ps, alpha=0.05, method="fdr_bh")
    assert family == 5
    assert [r.q_value for r in rows] == pytest.approx(list(q))
    assert [r.rejected for r in rows] == list(reject)


def test_comparison_validates_and_markdown_renders():
    with pytest.raises(SteerkitError, match="1.5"):
        Comparison("r", "baseline", "x", "binary", "t", 1, 0, 1.5, 0.0, 0.0, 0.0, "rd")
    with pytest.raises(SteerkitError, match="'ordinal'"):
        Comparison("r", "baseline", "x", "ordinal", "t", 1, 0, 0.5, 0.0, 0.0, 0.0, "rd")  # type: ignore[arg-type]
    text = markdown_table([{"a": 0.123456, "b": None, "c": "x|y"}, {"a": math.nan}], ["a", "b", "c"])
    assert text.splitlines()[2] == "| 0.1235 |  | x\\|y |"


def _run(run_id: str, **params: str) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(params=params))


def test_match_runs_keeps_equal_params_and_lists_what_differs():
    ref = {"model": "m", "corpus_sha256": "abc", "temperature": "0.0"}
    runs = [
        _run("same", model="m", corpus_sha256="abc", temperature="0"),  # "0" == "0.0" as a number
        _run("corpus", model="m", corpus_sha256="xyz", temperature="0.0"),
        _run("missing", model="m", temperature="0.0"),  # a key the reference has and the run lacks differs
    ]
    found = match_runs("ref", ref, runs, DEFAULT_MATCH)  # DEFAULT_MATCH keys absent from both runs match
    assert [r.info.run_id for r in found.compared] == ["same"]
    assert found.excluded == [
        {"run_id": "corpus", "keys": "corpus_sha256", "reference.corpus_sha256": "abc", "run.corpus_sha256": "xyz"},
        {"run_id": "missing", "keys": "corpus_sha256", "reference.corpus_sha256": "abc", "run.corpus_sha256": None},
    ]
    assert [r.info.run_id for r in match_runs("ref", ref, runs, ("model",)).compared] == ["same", "corpus", "missing"]


def test_match_keys_parses_default_none_and_refuses_unknown_keys():
    ref = {"model": "m", "corpus_sha256": "abc"}
    assert match_keys("default", ref, "r") == DEFAULT_MATCH and match_keys("none", ref, "r") == ()
    assert match_keys("model, corpus_sha256,model", ref, "r") == ("model", "corpus_sha256")
    with pytest.raises(SteerkitError, match="match key 'modle' is not a param of reference run r"):
        match_keys("modle", ref, "r")
