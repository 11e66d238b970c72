"""steerkit.stats.design against closed forms: floors of exact tests, the refusal, simulated power."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.multitest import multipletests

from steerkit.errors import SteerkitError
from steerkit.stats.design import Design, simulated_power, smallest_attainable_p


@pytest.mark.parametrize(
    ("test", "n", "alternative", "expected"),
    [
        ("wilcoxon_exact", 4, "two-sided", 2 / 2**4),  # the example: 0.125
        ("wilcoxon_exact", 4, "greater", 1 / 2**4),
        ("wilcoxon_exact", 4, "less", 1 / 2**4),
        ("mcnemar_exact", 5, "two-sided", 2 * 0.5**5),
        ("mcnemar_exact", 5, "greater", 0.5**5),
        ("sign_exact", 10, "two-sided", 2 * 0.5**10),
        ("fisher_exact", 3, "greater", 1 / math.comb(6, 3)),
        ("mann_whitney_exact", 3, "two-sided", 2 / math.comb(6, 3)),
        ("mann_whitney_exact", 3, "less", 1 / math.comb(6, 3)),
        ("mcnemar_exact", 0, "two-sided", 1.0),
    ],
)
def test_smallest_attainable_p_closed_forms(test, n, alternative, expected):
    assert smallest_attainable_p(test, n, alternative) == pytest.approx(expected, rel=1e-12)


def test_design_refuses_what_cannot_reject_unless_allowed():
    small = Design("quality", "wilcoxon_exact", n=4)
    assert not small.can_reject and small.to_dict()["min_p"] == pytest.approx(0.125)
    with pytest.raises(SteerkitError, match=r"smallest attainable p 0.125 > alpha = 0.05"):
        small.check()
    assert small.check(allow_underpowered=True) is True
    assert Design("x", "mcnemar_exact", n=6).check() is False


@pytest.mark.parametrize("n", [4, 5, 6, 7, 8, 9])
@pytest.mark.parametrize("family", [1, 3, 20, 60])
def test_can_reject_is_whether_bh_rejects_a_family_at_the_floor(n, family):
    # statsmodels' own BH on m copies of the design's floor: the most extreme data the design allows. Six pairs
    # (floor 0.03125) cannot reach alpha / 3 alone, but three hypotheses all at the floor are all rejected.
    design = Design("x", "mcnemar_exact", n=n, family_size=family)
    rejected, _, _, _ = multipletests([design.min_p] * family, alpha=0.05, method="fdr_bh")
    assert design.can_reject == bool(rejected.any())
    assert design.threshold_alone == pytest.approx(0.05 / family)


@pytest.mark.parametrize("bad", [{"test": "t_test"}, {"n": -1}, {"alpha": 1.5}, {"family_size": 0}])
def test_design_bad_values_name_themselves(bad):
    args = {"primary_outcome": "x", "test": "mcnemar_exact", "n": 10, **bad}
    with pytest.raises(SteerkitError, match=str(next(iter(bad.values())))):
        Design(**args)


def test_simulated_power_null_and_large_effect():
    assert simulated_power("mcnemar_exact", 30, effect=0.0, sims=400) <= 0.05 + 0.03
    assert simulated_power("mcnemar_exact", 30, effect=0.5, base_rate=0.2, sims=400) > 0.9
    assert simulated_power("wilcoxon_exact", 4, effect=5.0, sims=200) == 0.0  # the floor 0.125 > 0.05
    assert simulated_power("wilcoxon_exact", 20, effect=1.0, sims=300) > 0.8


def test_require_identity_fails_on_any_nonzero_figure():
    from steerkit.core.checks import require_identity

    require_identity({"identity_max_abs_logit_diff": 0.0, "kl": 0.3})
    with pytest.raises(SteerkitError, match=r"identity_max_abs_logit_diff = 1e-07 \(must be exactly 0\)"):
        require_identity({"identity_max_abs_logit_diff": 1e-7})
    with pytest.raises(SteerkitError, match="identity_flips = nan"):
        require_identity({"identity_flips": float("nan")})
    with pytest.raises(SteerkitError, match="identity_x was not computed"):
        require_identity({}, keys=["identity_x"])


def test_log_design_logs_params_and_refuses_or_tags(tracking_dir):
    import mlflow

    from steerkit import tracking

    with mlflow.start_run() as run:
        tracking.log_design(Design("quality", "wilcoxon_exact", n=4), allow_underpowered=True)
    got = mlflow.get_run(run.info.run_id).data
    assert got.params["design_min_p"] == "0.125" and got.tags["steerkit.underpowered"] == "true"
    with mlflow.start_run(), pytest.raises(SteerkitError, match="design cannot reject"):
        tracking.log_design(Design("quality", "wilcoxon_exact", n=4), allow_underpowered=False)
