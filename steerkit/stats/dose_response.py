"""Dose-response of an outcome on an assigned dose, with samples clustered by item: statsmodels GEE.

Design note: in a dose ladder every prompt is generated at every dose, so the observations of one prompt are not
independent (an easy prompt succeeds at every dose). A plain logistic regression over all (prompt, dose) rows
treats them as independent and understates the slope's standard error. The fit here is a generalised estimating
equation (statsmodels `GEE`) with the prompt id as the cluster: Binomial family (logit link) for binary
outcomes, Gaussian for continuous ones, an exchangeable (or independence) working correlation, and the robust
(sandwich) covariance, which stays valid when the working correlation is wrong. Only *assigned* doses go in:
a dose measured on the unsteered model (e.g. each prompt's natural attention share) depends on the prompt, so
it would confound the slope with prompt difficulty. statsmodels does the fitting; this module only checks the
input, arranges the frame and names the result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from steerkit.errors import SteerkitError

Family = Literal["binomial", "gaussian"]
CovStruct = Literal["exchangeable", "independence"]
FAMILIES: tuple[str, ...] = ("binomial", "gaussian")
COV_STRUCTS: tuple[str, ...] = ("exchangeable", "independence")


@dataclass(frozen=True)
class DoseResponse:
    """Slope of the outcome on the dose (log-odds per unit dose for binomial, outcome units for gaussian).

    `se` is the robust (sandwich) standard error, `[low, high]` the 95% Wald interval, `p_value` two-sided.
    `method` is `gee` when fitted, `constant_outcome` (slope 0, p 1, no interval: the data carry no evidence
    either way) or `not_estimable` (the fit failed or separated; NaN figures).
    """

    method: str
    family: str
    cov_struct: str
    slope: float
    se: float
    low: float
    high: float
    p_value: float
    n: int
    n_groups: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(dose: Sequence[float], outcome: Sequence[float], groups: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(dose, float), np.asarray(outcome, float)
    if not len(x) == len(y) == len(groups) or len(x) < 3:
        raise SteerkitError(
            f"dose_response needs >= 3 equal-length doses, outcomes and groups, got {len(x)}, {len(y)}, {len(groups)}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise SteerkitError("dose_response needs finite doses and outcomes")
    if len(np.unique(x)) < 2:
        raise SteerkitError(f"dose_response needs at least two distinct doses, got {sorted(set(x.tolist()))}")
    return x, y


def dose_response(
    dose: Sequence[float],
    outcome: Sequence[float],
    groups: Sequence[Any],
    *,
    family: Family = "binomial",
    cov_struct: CovStruct = "exchangeable",
) -> DoseResponse:
    """GEE of `outcome ~ dose` with observations clustered by `groups` (the prompt id); robust SE.

    Args:
        dose: The assigned dose of each observation (never a dose measured on the unsteered model).
        outcome: 0/1 (`binomial`) or real values (`gaussian`), aligned with `dose`.
        groups: The cluster of each observation (the prompt id), aligned with `dose`.
        family: `binomial` (logit link) or `gaussian` (identity link).
        cov_struct: The working correlation within a cluster: `exchangeable` or `independence`.

    Raises:
        SteerkitError: On unequal lengths, fewer than 3 observations or 2 distinct doses, a non-finite value, an
            unknown family or correlation, or a binomial outcome that is not 0/1.
    """
    import statsmodels.api as sm

    if family not in FAMILIES:
        raise SteerkitError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if cov_struct not in COV_STRUCTS:
        raise SteerkitError(f"cov_struct must be one of {', '.join(COV_STRUCTS)}, got {cov_struct!r}")
    x, y = _check(dose, outcome, groups)
    if family == "binomial" and not np.all((y == 0) | (y == 1)):
        raise SteerkitError(f"a binomial outcome must be 0/1, got {sorted(set(y.tolist()))[:5]}")
    codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    common: dict[str, Any] = {"family": family, "cov_struct": cov_struct, "n": len(x), "n_groups": int(codes.max()) + 1}
    nan = math.nan
    if len(np.unique(y)) < 2:
        return DoseResponse("constant_outcome", slope=0.0, se=nan, low=nan, high=nan, p_value=1.0, **common)
    fam = sm.families.Binomial() if family == "binomial" else sm.families.Gaussian()
    cov = sm.cov_struct.Exchangeable() if cov_struct == "exchangeable" else sm.cov_struct.Independence()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # separation and non-convergence come as warnings in statsmodels
            res = sm.GEE(y, sm.add_constant(x), groups=codes, family=fam, cov_struct=cov).fit()
        low, high = res.conf_int()[1]
        figures = (float(res.params[1]), float(res.bse[1]), float(low), float(high), float(res.pvalues[1]))
    except (np.linalg.LinAlgError, ValueError, Warning):
        figures = (math.nan,) * 5
    if not all(math.isfinite(v) for v in figures):
        return DoseResponse("not_estimable", slope=nan, se=nan, low=nan, high=nan, p_value=nan, **common)
    slope, se, low, high, p = figures
    return DoseResponse("gee", slope=slope, se=se, low=low, high=high, p_value=p, **common)


__all__ = ["COV_STRUCTS", "FAMILIES", "DoseResponse", "dose_response"]
