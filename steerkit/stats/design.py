"""What a design can find before it spends compute: smallest attainable p, power by simulation, the refusal.

Design note: an exact test on n paired items has a floor under its p-value (exact Wilcoxon with 4 prompts never
goes below 0.125; exact McNemar with n discordant pairs never below 2 * 0.5^n). Benjamini-Hochberg over a family of
m rejects the k smallest p-values when p_(k) <= k * alpha / m: with every hypothesis at the floor it rejects all m
once the floor is <= alpha, while one effect alone among nulls needs p <= alpha / m (logged as `threshold_alone`,
a question of power). A design whose floor is above alpha cannot reject whatever the data: it is refused before
generation unless the user allows it, and the run is tagged. Floors come from scipy's own tests applied to the
most extreme data the design allows (not from hand-written formulas), and power is simulated with the declared
test (not a paired t stand-in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from steerkit.errors import SteerkitError

TestName = Literal["mcnemar_exact", "wilcoxon_exact", "fisher_exact", "mann_whitney_exact", "sign_exact"]
TESTS: tuple[str, ...] = ("mcnemar_exact", "wilcoxon_exact", "fisher_exact", "mann_whitney_exact", "sign_exact")
_ALTERNATIVES = ("two-sided", "greater", "less")


def smallest_attainable_p(test: str, n: int, alternative: str = "two-sided", n2: int | None = None) -> float:
    """The smallest p-value `test` can return with `n` items (pairs; for two-sample tests `n` and `n2` per arm).

    Computed by running scipy's test on the most extreme data of that size: all pairs discordant one way
    (McNemar / sign test), all differences positive with distinct ranks (Wilcoxon), all successes in one arm
    (Fisher), complete separation (Mann-Whitney).
    """
    if test not in TESTS:
        raise SteerkitError(f"unknown test {test!r} (choose from {', '.join(TESTS)})")
    if alternative not in _ALTERNATIVES:
        raise SteerkitError(f"unknown alternative {alternative!r} (choose from {', '.join(_ALTERNATIVES)})")
    if not isinstance(n, int) or n < 0:
        raise SteerkitError(f"n must be a non-negative integer, got {n!r}")
    if n == 0:
        return 1.0
    alt = "greater" if alternative == "greater" else "less" if alternative == "less" else "two-sided"
    if test in ("mcnemar_exact", "sign_exact"):
        k = n if alt != "less" else 0
        return float(sps.binomtest(k, n, 0.5, alternative=alt).pvalue)
    if test == "wilcoxon_exact":
        sign = 1.0 if alt != "less" else -1.0
        return float(sps.wilcoxon(sign * np.arange(1.0, n + 1), method="exact", alternative=alt).pvalue)
    m = n2 if n2 is not None else n
    if test == "fisher_exact":
        best = [[n, 0], [0, m]] if alt != "less" else [[0, n], [m, 0]]
        return float(sps.fisher_exact(best, alternative=alt).pvalue)
    x, y = np.arange(n, dtype=float) + m, np.arange(m, dtype=float)  # every x above every y
    if alt == "less":
        x, y = np.arange(n, dtype=float), np.arange(m, dtype=float) + n
    return float(sps.mannwhitneyu(x, y, alternative=alt, method="exact").pvalue)


@dataclass(frozen=True)
class Design:
    """The declared design of one experiment, logged before any generation.

    Attributes:
        primary_outcome: the outcome the headline test is about, e.g. `valid_test`.
        test: the declared test (one of `TESTS`).
        n: items (pairs) in the test.
        family_size: hypotheses corrected together (BH); 1 = no correction.
        alpha: the family's false discovery rate.
        alternative: `two-sided`, `greater` or `less`.
    """

    primary_outcome: str
    test: str
    n: int
    family_size: int = 1
    alpha: float = 0.05
    alternative: str = "two-sided"

    def __post_init__(self) -> None:
        if not isinstance(self.family_size, int) or self.family_size < 1:
            raise SteerkitError(f"family_size must be a positive integer, got {self.family_size!r}")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha) and 0 < self.alpha < 1):
            raise SteerkitError(f"alpha must be in (0, 1), got {self.alpha!r}")
        smallest_attainable_p(self.test, self.n, self.alternative)  # validates test, n, alternative

    @property
    def min_p(self) -> float:
        return smallest_attainable_p(self.test, self.n, self.alternative)

    @property
    def threshold(self) -> float:
        """The largest p BH can reject at: alpha, reached when all m p-values are at most alpha (k = m)."""
        return self.alpha

    @property
    def threshold_alone(self) -> float:
        """The p one hypothesis needs when the other m - 1 are null: alpha / m."""
        return self.alpha / self.family_size

    @property
    def can_reject(self) -> bool:
        return self.min_p <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        facts = {"min_p": self.min_p, "threshold": self.threshold, "threshold_alone": self.threshold_alone}
        return {**asdict(self), **facts, "can_reject": self.can_reject}

    def check(self, allow_underpowered: bool = False) -> bool:
        """Raise unless the design can reject (or the user allowed it); returns whether it is underpowered."""
        if self.can_reject:
            return False
        if not allow_underpowered:
            raise SteerkitError(
                f"design cannot reject: {self.test} with n={self.n} has smallest attainable p {self.min_p:.3g} > "
                f"alpha = {self.alpha} (BH over {self.family_size}: no data rejects) "
                "(more items, or allow_underpowered=true)"
            )
        return True


def simulated_power(
    test: str,
    n: int,
    *,
    effect: float,
    alpha: float = 0.05,
    base_rate: float = 0.5,
    sims: int = 2000,
    seed: int = 0,
) -> float:
    """Power of the declared paired test at `n`, by simulation with scipy's own test.

    `mcnemar_exact`: pairs with baseline success rate `base_rate` and steered rate `base_rate + effect`
    (independent given the item, the least favourable correlation); `wilcoxon_exact`: normal paired differences
    with standardised mean `effect` (dz). Two-sided at `alpha`.
    """
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(sims):
        if test == "mcnemar_exact":
            p1 = min(max(base_rate + effect, 0.0), 1.0)
            a, b = rng.random(n) < base_rate, rng.random(n) < p1
            k01, k10 = int((~a & b).sum()), int((a & ~b).sum())
            p = sps.binomtest(k01, k01 + k10, 0.5).pvalue if k01 + k10 else 1.0
        elif test == "wilcoxon_exact":
            d = rng.normal(effect, 1.0, n)
            p = sps.wilcoxon(d, method="exact").pvalue if np.any(d != 0) else 1.0
        else:
            raise SteerkitError(f"power simulation supports mcnemar_exact and wilcoxon_exact, not {test!r}")
        hits += p <= alpha
    return hits / sims


def no_effect_tags(selected: Mapping[str, Mapping[str, Any]], what: str) -> dict[str, str]:
    """Run tags for the selections (name -> record with `effective` and `reason`) that found no effective `what`
    (`coefficient`, `configuration`): `steerkit.no_effective_<what>` names them, `steerkit.no_effective_reason`
    says why; empty when every selection found one."""
    weak = {name: str(s.get("reason", "")) for name, s in selected.items() if not s.get("effective")}
    if not weak:
        return {}
    reason = "; ".join(f"{name}: {r}" for name, r in weak.items())
    return {f"steerkit.no_effective_{what}": ",".join(weak), "steerkit.no_effective_reason": reason}
