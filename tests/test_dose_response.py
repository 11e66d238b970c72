"""steerkit.stats.dose_response: item-clustered GEE against statsmodels itself, a planted effect, a null."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from steerkit.attention.steer import dose_data
from steerkit.errors import SteerkitError
from steerkit.stats.dose_response import dose_response

DOSES = (0.01, 0.03, 0.1, 0.3)


def _clustered(rng: np.random.Generator, n_items: int, slope: float, sd_item: float = 1.5) -> pd.DataFrame:
    """Every item at every dose; a random intercept per item (items differ in difficulty), logit link."""
    item = np.repeat(np.arange(n_items), len(DOSES))
    dose = np.tile(DOSES, n_items)
    eta = -0.5 + rng.normal(0, sd_item, n_items)[item] + slope * dose
    y = (rng.random(len(dose)) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"id": [f"item{i}" for i in item], "dose": dose, "y": y})


@pytest.mark.parametrize(
    "family, cov, sm_family, sm_cov",
    [
        ("binomial", "exchangeable", sm.families.Binomial, sm.cov_struct.Exchangeable),
        ("binomial", "independence", sm.families.Binomial, sm.cov_struct.Independence),
        ("gaussian", "exchangeable", sm.families.Gaussian, sm.cov_struct.Exchangeable),
    ],
)
def test_matches_statsmodels_gee_on_a_hand_built_frame(family, cov, sm_family, sm_cov):
    frame = _clustered(np.random.default_rng(0), 30, slope=6.0)
    if family == "gaussian":
        frame["y"] = frame["y"] + np.random.default_rng(1).normal(0, 0.3, len(frame))
    ref = smf.gee("y ~ dose", groups="id", data=frame, family=sm_family(), cov_struct=sm_cov()).fit()
    fit = dose_response(frame["dose"], frame["y"], frame["id"], family=family, cov_struct=cov)
    low, high = ref.conf_int().loc["dose"]
    assert fit.method == "gee" and fit.n == 120 and fit.n_groups == 30
    assert fit.slope == pytest.approx(ref.params["dose"], rel=1e-6)
    assert fit.se == pytest.approx(ref.bse["dose"], rel=1e-6)  # robust (sandwich), statsmodels' default
    assert (fit.low, fit.high) == (pytest.approx(low, rel=1e-6), pytest.approx(high, rel=1e-6))
    assert fit.p_value == pytest.approx(ref.pvalues["dose"], rel=1e-6)


def test_planted_dose_effect_is_detected():
    frame = _clustered(np.random.default_rng(2), 40, slope=12.0)
    fit = dose_response(frame["dose"], frame["y"], frame["id"])
    assert fit.p_value < 1e-3 and fit.low > 0


def test_null_is_not_systematically_rejected():
    """No dose effect, strongly clustered items: the rejection rate stays near alpha (binomial 99% bound)."""
    rng = np.random.default_rng(3)
    p = [dose_response(f["dose"], f["y"], f["id"]).p_value for f in (_clustered(rng, 40, 0.0) for _ in range(80))]
    p = np.asarray([x for x in p if np.isfinite(x)])
    assert len(p) >= 75 and np.mean(p < 0.05) <= 0.15


def test_constant_outcome_and_bad_input():
    fit = dose_response([0.1, 0.2, 0.3, 0.1], [1, 1, 1, 1], ["a", "a", "b", "b"])
    assert fit.method == "constant_outcome" and fit.slope == 0.0 and fit.p_value == 1.0
    with pytest.raises(SteerkitError, match="family must be one of binomial, gaussian, got 'poisson'"):
        dose_response([0.1, 0.2, 0.3], [0, 1, 1], "abc", family="poisson")  # type: ignore[arg-type]
    with pytest.raises(SteerkitError, match="got 3, 3, 2"):
        dose_response([0.1, 0.2, 0.3], [0, 1, 1], ["a", "b"])
    with pytest.raises(SteerkitError, match="two distinct doses"):
        dose_response([0.1, 0.1, 0.1], [0, 1, 1], "abc")
    with pytest.raises(SteerkitError, match="must be 0/1"):
        dose_response([0.1, 0.2, 0.3], [0, 2, 1], "abc")


def test_dose_data_holds_assigned_doses_only_clustered_by_id():
    """Regression: the baseline's dose used to be each item's natural (measured) share, confounding the slope."""
    plan = {"baseline": ("scale", 1.0), "steered": ("target", 0.2), "level_0.5": ("target", 0.5)}
    recs = lambda q: [{"id": "b", "valid_test": q[0]}, {"id": "a", "valid_test": q[1]}]  # noqa: E731
    results = {"baseline": recs((True, True)), "steered": recs((False, True)), "level_0.5": recs((True, False))}
    assert dose_data(results, plan) == ([0.2, 0.2, 0.5, 0.5], [False, True, True, False], ["b", "a", "b", "a"])
