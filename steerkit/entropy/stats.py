"""Statistics for entropy-source comparisons: paired tests, a mixed model, BH over a declared family, power.

Design note: the data are long-format rows (`prompt`, `source`, `sample`, one column per metric). Each
hypothesis is "metric m differs between source s and the baseline source"; it gets exactly one primary
p-value (Wilcoxon signed-rank on per-prompt means by default; the paired t-test is reported beside it but
never enters the family, which is how the reference double-counted). A hypothesis whose paired differences
are all zero (identical outputs) is not tested: its p is None with the reason, and BH (`steerkit.stats`)
leaves it out of the family instead of letting a NaN corrupt the ordering. The mixed model is fitted for real
(statsmodels MixedLM, random intercept per prompt, every sample used) and its p-values form a second,
separately corrected family. Power and the minimum detectable effect (Cohen's d_z) are computed a priori for
the number of prompts actually used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from steerkit.errors import SteerkitError
from steerkit.stats import BHResult, benjamini_hochberg
from steerkit.stats.design import simulated_power

PrimaryTest = Literal["wilcoxon", "ttest"]
PRIMARY_TESTS = ("wilcoxon", "ttest")


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


@dataclass(frozen=True)
class PairedComparison:
    """Source vs baseline on one metric over per-prompt means; p-values are None when untested (see `reason`)."""

    metric: str
    source: str
    baseline: str
    n_pairs: int
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    dz: float | None
    wilcoxon_p: float | None
    ttest_p: float | None
    reason: str = ""

    def primary_p(self, test: str) -> float | None:
        return self.wilcoxon_p if test == "wilcoxon" else self.ttest_p

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_columns(df: pd.DataFrame, metric: str) -> None:
    missing = [c for c in ("prompt", "source", metric) if c not in df.columns]
    if missing:
        raise SteerkitError(f"data lack column {missing[0]!r}")


def paired_comparison(df: pd.DataFrame, metric: str, source: str, baseline: str) -> PairedComparison:
    """Paired Wilcoxon and t-test of per-prompt means, source minus baseline, with a 95% t interval."""
    _check_columns(df, metric)
    means = df.groupby(["prompt", "source"])[metric].mean().unstack("source")
    for name in (source, baseline):
        if name not in means.columns:
            raise SteerkitError(f"source {name!r} not in the data ({', '.join(map(str, means.columns))})")
    diff = (means[source] - means[baseline]).dropna().to_numpy(dtype=float)
    n = len(diff)
    empty = PairedComparison(metric, source, baseline, n, None, None, None, None, None, None)
    if n < 2:
        return _with(empty, reason=f"fewer than 2 paired prompts ({n})")
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    described = _with(empty, mean_diff=mean, ci_low=mean - half, ci_high=mean + half, dz=mean / sd if sd else None)
    if np.all(diff == 0):
        return _with(described, reason="identical: every paired difference is zero")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wil = _finite(sps.wilcoxon(diff).pvalue)
        tt = _finite(sps.ttest_1samp(diff, 0.0).pvalue) if sd else None
    return _with(described, wilcoxon_p=wil, ttest_p=tt, reason="" if wil is not None else "wilcoxon undefined")


def _with(base: PairedComparison, **changes: Any) -> PairedComparison:
    return PairedComparison(**{**asdict(base), **changes})


@dataclass(frozen=True)
class MixedEffect:
    """One fixed-effect coefficient (source vs baseline) of `value ~ C(source)` with a random prompt intercept."""

    metric: str
    source: str
    baseline: str
    coef: float | None
    se: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None
    n_obs: int
    n_groups: int
    converged: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mixed_model(df: pd.DataFrame, metric: str, baseline: str) -> list[MixedEffect]:
    """Fit statsmodels MixedLM `value ~ C(source, Treatment(baseline))`, groups = prompt (REML).

    Returns one `MixedEffect` per non-baseline source; when the model cannot be fitted (constant outcome,
    singular design) every effect carries the reason and p_value None.
    """
    import statsmodels.formula.api as smf

    _check_columns(df, metric)
    data = pd.DataFrame({"value": df[metric].astype(float), "source": df["source"], "prompt": df["prompt"]})
    sources = [s for s in dict.fromkeys(data["source"]) if s != baseline]
    if baseline not in set(data["source"]):
        raise SteerkitError(f"baseline source {baseline!r} not in the data")
    n_obs, n_groups = len(data), int(data["prompt"].nunique())

    def failed(reason: str) -> list[MixedEffect]:
        return [
            MixedEffect(metric, s, baseline, None, None, None, None, None, n_obs, n_groups, False, reason)
            for s in sources
        ]

    if data["value"].var() == 0 or n_groups < 2:
        return failed("constant outcome" if data["value"].var() == 0 else "fewer than 2 prompts")
    formula = f"value ~ C(source, Treatment(reference='{baseline}'))"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = smf.mixedlm(formula, data, groups=data["prompt"]).fit(reml=True)
    except (np.linalg.LinAlgError, ValueError) as exc:
        return failed(f"fit failed: {type(exc).__name__}: {exc}".splitlines()[0])
    conf = fit.conf_int()
    out = []
    for s in sources:
        term = f"C(source, Treatment(reference='{baseline}'))[T.{s}]"
        out.append(
            MixedEffect(
                metric,
                s,
                baseline,
                _finite(fit.fe_params[term]),
                _finite(fit.bse_fe[term]),
                _finite(fit.pvalues[term]),
                _finite(conf.loc[term, 0]),
                _finite(conf.loc[term, 1]),
                n_obs,
                n_groups,
                bool(fit.converged),
            )
        )
    return out


def bh_family(p_values: Sequence[float | None], alpha: float = 0.05) -> BHResult:
    """BH over a declared family: one p per hypothesis, None/NaN (untested) excluded from m."""
    return benjamini_hochberg(list(p_values), alpha)


@dataclass(frozen=True)
class PowerReport:
    """A priori power with `n` pairs: of the declared test (exact Wilcoxon, simulated: `wilcoxon_*`) and, kept for
    comparison only, the paired t-test's closed form (`mde_dz*`, `power_at_dz_0_5`; logged as `ttest_*`)."""

    n: int
    alpha: float
    target_power: float
    mde_dz: float | None
    mde_dz_bonferroni: float | None
    family_size: int
    power_at_dz_0_5: float | None
    wilcoxon_power_at_dz_0_5: float | None = None
    wilcoxon_power_at_dz_1: float | None = None
    wilcoxon_power_at_dz_1_bh: float | None = None  # at alpha / family_size: what BH needs of the smallest p

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_t_power(dz: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (paired) t-test at effect d_z with n pairs.

    The same formula as statsmodels' `TTestPower.power` (tested against it), but a NaN from scipy's noncentral
    t in the far lower tail (it happens for large noncentrality) counts as 0 instead of poisoning the sum.
    """
    df, nc = n - 1, dz * math.sqrt(n)
    crit = float(sps.t.isf(alpha / 2, df))
    upper, lower = float(sps.nct.sf(crit, df, nc)), float(sps.nct.cdf(-crit, df, nc))
    return (upper if math.isfinite(upper) else 1.0) + (lower if math.isfinite(lower) else 0.0)


def power_report(
    n: int, alpha: float = 0.05, power: float = 0.8, family_size: int = 1, sims: int = 1000
) -> PowerReport:
    """Power of the declared exact Wilcoxon at d_z 0.5 and 1 (simulated, `sims` draws; d_z 1 also at
    alpha / family_size) and, for comparison, the paired t-test's minimum detectable d_z and power at 0.5."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise SteerkitError(f"alpha and power must lie in (0, 1), got alpha={alpha!r} power={power!r}")
    if n < 2:
        return PowerReport(n, alpha, power, None, None, family_size, None)

    def mde(level: float) -> float | None:
        def gap(d: float) -> float:
            return paired_t_power(d, n, level) - power

        if gap(100.0) < 0:
            return None
        return float(optimize.brentq(gap, 0.0, 100.0, xtol=1e-10))

    at_half = paired_t_power(0.5, n, alpha)
    level = alpha / max(family_size, 1)
    sim = {
        name: simulated_power("wilcoxon_exact", n, effect=dz, alpha=a, sims=sims)
        for name, dz, a in (("0_5", 0.5, alpha), ("1", 1.0, alpha), ("1_bh", 1.0, level))
    }
    return PowerReport(n, alpha, power, mde(alpha), mde(level), family_size, at_half, sim["0_5"], sim["1"], sim["1_bh"])
