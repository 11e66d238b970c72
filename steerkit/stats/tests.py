"""Significance tests for steered-vs-baseline success rates (intervals: `stats.intervals`).

Design note: every function here is pure (counts in, frozen result out) so that an
experiment's statistics can be recomputed from logged counts alone. The tests
themselves come from scipy/statsmodels; the only hand-written maths is Newcombe's
paired interval, which neither library provides. Steering experiments usually run
the *same* prompts with and without the intervention, so the paired tools
(``paired_outcomes``, ``mcnemar_exact``, ``paired_risk_difference``) are the
default; the independent-sample tools (``fisher_exact_one_tailed``,
``risk_difference_independent``) are for arms that used different prompts.
Sign convention throughout: positive means the steered arm succeeded more often.
Bad input raises ``SteerkitError`` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from steerkit.errors import SteerkitError

Alternative = Literal["two-sided", "greater", "less"]
_ALTERNATIVES: tuple[str, ...] = ("two-sided", "greater", "less")


class _AsDict:
    """Mixin giving frozen result dataclasses a plain-dict view for logging."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class FisherResult(_AsDict):
    """One-tailed Fisher exact test of steered rate > baseline rate.

    ``odds_ratio`` is the sample (unconditional) odds ratio scipy reports; it is
    ``inf`` or ``nan`` when a cell of the table is zero.
    """

    odds_ratio: float
    p_value: float
    k_steered: int
    n_steered: int
    k_baseline: int
    n_baseline: int


@dataclass(frozen=True)
class McNemarResult(_AsDict):
    """Exact (conditional binomial) McNemar test on discordant pairs.

    ``statistic`` is b / (b + c), the share of discordant pairs that favour the
    steered arm, or ``None`` when there are no discordant pairs.
    """

    b: int
    c: int
    n_discordant: int
    statistic: float | None
    p_value: float
    alternative: str


@dataclass(frozen=True)
class PairedCounts(_AsDict):
    """The four cells of a paired 2x2 table (baseline outcome x steered outcome)."""

    n: int
    both: int
    baseline_only: int
    steered_only: int
    neither: int

    @property
    def b(self) -> int:
        """Pairs where the baseline failed and the steered run succeeded (0 -> 1)."""
        return self.steered_only

    @property
    def c(self) -> int:
        """Pairs where the baseline succeeded and the steered run failed (1 -> 0)."""
        return self.baseline_only


@dataclass(frozen=True)
class BHResult(_AsDict):
    """Benjamini-Hochberg outcome, aligned with the input p-values.

    ``family_size`` and ``n_tested`` are both the number of non-missing p-values
    (the m of the procedure); ``len(rejected)`` is the number submitted.
    """

    rejected: list[bool]
    q_values: list[float | None]
    family_size: int
    n_tested: int


def _check_count(name: str, value: object) -> int:
    # bool is an Integral, but a True/False count is always a caller bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise SteerkitError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_k_n(k_name: str, k: object, n_name: str, n: object) -> tuple[int, int]:
    k_int, n_int = _check_count(k_name, k), _check_count(n_name, n)
    if n_int < 1:
        raise SteerkitError(f"{n_name} must be >= 1, got {n_name}={n_int}")
    if k_int > n_int:
        raise SteerkitError(f"{n_name} must be >= {k_name}, got {k_name}={k_int} {n_name}={n_int}")
    return k_int, n_int


def _check_level(name: str, value: float) -> float:
    if not (isinstance(value, numbers.Real) and 0.0 < float(value) < 1.0):
        raise SteerkitError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def fisher_exact_one_tailed(k_steered: int, n_steered: int, k_baseline: int, n_baseline: int) -> FisherResult:
    """Fisher's exact test that the steered success rate exceeds the baseline rate.

    For independent arms (different prompts per arm). For paired runs over the
    same prompts use :func:`mcnemar_exact`, which uses the pairing.

    Args:
        k_steered: Successes in the steered arm.
        n_steered: Trials in the steered arm (>= 1).
        k_baseline: Successes in the baseline arm.
        n_baseline: Trials in the baseline arm (>= 1).

    Returns:
        The odds ratio and one-tailed p-value (H1: steered rate > baseline rate).

    Raises:
        SteerkitError: If a count is negative, non-integer, or exceeds its total.
    """
    k_s, n_s = _check_k_n("k_steered", k_steered, "n_steered", n_steered)
    k_b, n_b = _check_k_n("k_baseline", k_baseline, "n_baseline", n_baseline)
    table = [[k_s, n_s - k_s], [k_b, n_b - k_b]]
    res = sps.fisher_exact(table, alternative="greater")
    return FisherResult(float(res.statistic), float(res.pvalue), k_s, n_s, k_b, n_b)


def mcnemar_exact(b: int, c: int, alternative: Alternative = "two-sided") -> McNemarResult:
    """Exact McNemar test for paired binary outcomes.

    Conditional on the b + c discordant pairs, b ~ Binomial(b + c, 1/2) under H0,
    so the test is ``scipy.stats.binomtest(b, b + c, 0.5)``.

    Args:
        b: Pairs where the baseline failed and the steered run succeeded (0 -> 1).
        c: Pairs where the baseline succeeded and the steered run failed (1 -> 0).
        alternative: ``"greater"`` means steering helps (b > c), ``"less"`` that it
            hurts, ``"two-sided"`` either.

    Returns:
        The test result. With no discordant pairs (b + c == 0) the data carry no
        evidence either way, so p_value is 1.0 and statistic is None.

    Raises:
        SteerkitError: If b or c is not a non-negative integer, or alternative is unknown.
    """
    b_int, c_int = _check_count("b", b), _check_count("c", c)
    if alternative not in _ALTERNATIVES:
        raise SteerkitError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    n_disc = b_int + c_int
    if n_disc == 0:
        return McNemarResult(b_int, c_int, 0, None, 1.0, alternative)
    res = sps.binomtest(b_int, n_disc, 0.5, alternative=alternative)
    return McNemarResult(b_int, c_int, n_disc, float(res.statistic), float(res.pvalue), alternative)


def paired_outcomes(baseline: Sequence[bool], steered: Sequence[bool]) -> PairedCounts:
    """Cross-tabulate paired success flags (item i of each sequence is one prompt).

    Args:
        baseline: Success flags of the unsteered runs; bools or 0/1.
        steered: Success flags of the steered runs, in the same prompt order.

    Returns:
        The four cells of the paired table.

    Raises:
        SteerkitError: If the lengths differ or a flag is not boolean.
    """
    if len(baseline) != len(steered):
        raise SteerkitError(f"baseline and steered must have equal length, got {len(baseline)} and {len(steered)}")
    cells = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for i, (base, steer) in enumerate(zip(baseline, steered, strict=True)):
        for name, flag in (("baseline", base), ("steered", steer)):
            # `in (0, 1)` accepts bool, numpy bool and 0/1 but rejects None, "yes", 0.5.
            if flag not in (0, 1):
                raise SteerkitError(f"{name}[{i}] must be boolean, got {flag!r}")
        cells[(bool(base), bool(steer))] += 1
    return PairedCounts(
        n=len(baseline),
        both=cells[(True, True)],
        baseline_only=cells[(True, False)],
        steered_only=cells[(False, True)],
        neither=cells[(False, False)],
    )


def benjamini_hochberg(p_values: Sequence[float | None], alpha: float = 0.05) -> BHResult:
    """Benjamini-Hochberg FDR control over a caller-declared family of tests.

    The caller declares the family by what it passes: every non-missing p-value
    here is one hypothesis of the family, and nothing else is. Missing p-values
    (None or NaN, e.g. a test that could not be run) are excluded before the
    correction, so they neither count toward m nor get rejected.

    Args:
        p_values: One p-value per hypothesis, None/NaN where untested.
        alpha: Target false discovery rate in (0, 1).

    Returns:
        Rejections and BH-adjusted q-values aligned with ``p_values`` (q is None
        where the p-value was missing).

    Raises:
        SteerkitError: If a p-value is outside [0, 1] or alpha is outside (0, 1).
    """
    level = _check_level("alpha", alpha)
    tested: list[int] = []
    for i, p in enumerate(p_values):
        if p is None or (isinstance(p, numbers.Real) and math.isnan(p)):
            continue
        if not (isinstance(p, numbers.Real) and 0.0 <= p <= 1.0):
            raise SteerkitError(f"p_values[{i}] must be in [0, 1], got {p!r}")
        tested.append(i)
    rejected = [False] * len(p_values)
    q_values: list[float | None] = [None] * len(p_values)
    if tested:
        reject, q, _, _ = multipletests([p_values[i] for i in tested], alpha=level, method="fdr_bh")
        for i, r, q_i in zip(tested, reject, q, strict=True):
            rejected[i], q_values[i] = bool(r), float(q_i)
    return BHResult(rejected, q_values, len(tested), len(tested))
