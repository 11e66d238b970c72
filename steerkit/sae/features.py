"""Statistics for the SAE steering pipeline: feature separation tests, flip rates, divergence, selection.

Design note: pure functions (arrays in, frozen results out; no I/O, no mlflow), so every figure an entry point
logs can be recomputed from its logged tables. The reference pipeline ranked ~410k features by a difference in
firing rates and tested nothing; here every feature in a declared family gets a two-sided Fisher exact test of
"fires" x "baseline passed", with Benjamini-Hochberg over the family. Fisher's p depends only on the two firing
counts once the margins (n correct, n incorrect) are fixed, so it is computed once per distinct count pair with
`scipy.stats.fisher_exact` (a few hundred calls for thousands of features) instead of once per feature.

Flip rates follow the seed's definitions on paired outcomes: correction = fail->pass among baseline failures,
corruption = pass->fail among baseline passes, flip = either, over all tasks. Similarities are difflib's
`SequenceMatcher.ratio()` with `autojunk=False` (the default heuristic treats frequent items of sequences
longer than 200 as junk, which makes the ratio of long completions depend on their length).

The coefficient selection rule is shared by the grid (applied to completed trials) and TPE (as Optuna's
`constraints_func`): a trial is feasible when its mean character similarity to the baseline is >= a floor and
its syntax-error rate is <= a ceiling (`constraint_values` <= 0); among feasible trials the highest objective
wins, ties going to the smaller coefficient (the gentler intervention).
"""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from steerkit.errors import SteerkitError
from steerkit.stats import benjamini_hochberg


def _as_bool_matrix(fires: Any) -> np.ndarray:
    arr = np.asarray(fires)
    if arr.ndim != 2:
        raise SteerkitError(f"feature activations must be [n_samples, n_features], got shape {arr.shape}")
    return arr.astype(bool) if arr.dtype == bool else arr > 0


def firing_rates(acts: Any) -> np.ndarray:
    """Share of samples on which each feature is active (> 0): `[n, d_sae]` -> `[d_sae]` float64."""
    fires = _as_bool_matrix(acts)
    if fires.shape[0] == 0:
        raise SteerkitError("firing_rates needs at least one sample, got 0")
    return fires.mean(axis=0, dtype=np.float64)


@dataclass(frozen=True)
class FeatureTests:
    """Per-feature firing counts by outcome, separation and Fisher tests with BH (arrays `[d_sae]`).

    `tested` marks the declared family; `p_values`/`q_values`/`odds_ratios` are NaN outside it.
    `separation` = firing rate on correct - firing rate on incorrect (positive: correct-preferring).
    """

    n_correct: int
    n_incorrect: int
    fires_correct: np.ndarray
    fires_incorrect: np.ndarray
    separation: np.ndarray
    tested: np.ndarray
    p_values: np.ndarray
    q_values: np.ndarray
    odds_ratios: np.ndarray
    significant: np.ndarray
    alpha: float

    @property
    def family_size(self) -> int:
        return int(self.tested.sum())

    def row(self, feature: int) -> dict[str, Any]:
        """One feature's statistics as plain Python values (NaN -> None)."""

        def clean(x: Any) -> Any:
            value = x.item() if hasattr(x, "item") else x
            return None if isinstance(value, float) and math.isnan(value) else value

        return {
            "feature": int(feature),
            "fires_correct": int(self.fires_correct[feature]),
            "fires_incorrect": int(self.fires_incorrect[feature]),
            "rate_correct": self.fires_correct[feature] / max(self.n_correct, 1),
            "rate_incorrect": self.fires_incorrect[feature] / max(self.n_incorrect, 1),
            "separation": float(self.separation[feature]),
            "tested": bool(self.tested[feature]),
            "p_value": clean(self.p_values[feature]),
            "q_value": clean(self.q_values[feature]),
            "odds_ratio": clean(self.odds_ratios[feature]),
            "significant": bool(self.significant[feature]),
        }


def feature_fisher_tests(
    acts: Any, passed: Any, *, eligible: Any = None, alpha: float = 0.05, min_fires: int = 1
) -> FeatureTests:
    """Two-sided Fisher exact test per feature of firing vs baseline outcome, BH over the declared family.

    Args:
        acts: `[n, d_sae]` feature activations (or booleans "fires") at the last prompt token.
        passed: `[n]` bools (sequence or array), the baseline outcome per sample (True = the baseline's code passed).
        eligible: optional `[d_sae]` bool mask of label-blind filters (e.g. not firing broadly on generic
            text). The family is the eligible features that fire on at least `min_fires` samples.
        alpha: BH false discovery rate.
        min_fires: label-blind floor on a feature's firing count (both outcomes together); a feature firing on
            fewer samples cannot reach a small Fisher p and would only enlarge the BH family.
    """
    if isinstance(min_fires, bool) or not isinstance(min_fires, int) or min_fires < 1:
        raise SteerkitError(f"min_fires must be an integer >= 1, got {min_fires!r}")
    fires = _as_bool_matrix(acts)
    labels = np.asarray(passed, dtype=bool)
    if labels.shape != (fires.shape[0],):
        raise SteerkitError(f"passed has shape {labels.shape}, expected ({fires.shape[0]},) to match acts")
    n_c, n_i = int(labels.sum()), int((~labels).sum())
    if n_c == 0 or n_i == 0:
        raise SteerkitError(f"feature tests need both outcomes, got {n_c} correct and {n_i} incorrect samples")
    k_c, k_i = fires[labels].sum(axis=0), fires[~labels].sum(axis=0)
    tested = (k_c + k_i) >= min_fires
    if eligible is not None:
        tested &= np.asarray(eligible, dtype=bool)
    p = np.full(fires.shape[1], np.nan)
    odds = np.full(fires.shape[1], np.nan)
    pairs = {(int(a), int(b)) for a, b in zip(k_c[tested], k_i[tested])}
    cache = {}
    for a, b in pairs:
        res = sps.fisher_exact([[a, b], [n_c - a, n_i - b]], alternative="two-sided")
        cache[(a, b)] = (float(res.statistic), float(res.pvalue))
    for j in np.flatnonzero(tested):
        odds[j], p[j] = cache[(int(k_c[j]), int(k_i[j]))]
    q = np.full(fires.shape[1], np.nan)
    significant = np.zeros(fires.shape[1], dtype=bool)
    idx = np.flatnonzero(tested)
    if idx.size:
        bh = benjamini_hochberg(p[idx].tolist(), alpha=alpha)
        q[idx] = np.asarray(bh.q_values, dtype=float)
        significant[idx] = bh.rejected
    sep = k_c / n_c - k_i / n_i
    return FeatureTests(n_c, n_i, k_c, k_i, sep, tested, p, q, odds, significant, alpha)


def top_features(tests: FeatureTests, n: int, *, prefer: str) -> list[int]:
    """The `n` tested features separating towards `prefer` ("correct" or "incorrect"), ranked by the test.

    Ranked by Fisher p-value (smaller first; BH q is monotone in p, so the order is the q order), then by
    separation (larger first), then by feature index, so the order is total. A raw difference in firing rates
    is not a ranking: a feature firing on 3 of 4 rare samples can out-separate one that splits 40 samples.
    """
    if prefer not in ("correct", "incorrect"):
        raise SteerkitError(f"prefer must be 'correct' or 'incorrect', got {prefer!r}")
    sign = 1.0 if prefer == "correct" else -1.0
    idx = [int(j) for j in np.flatnonzero(tests.tested) if sign * tests.separation[j] > 0]
    idx.sort(key=lambda j: (tests.p_values[j], -sign * tests.separation[j], j))
    return idx[:n]


@dataclass(frozen=True)
class FlipCounts:
    """Paired outcome changes of a steered arm against the baseline on the same tasks.

    Rates are NaN when their denominator is 0 (e.g. no baseline failures to correct).
    """

    n: int
    n_baseline_pass: int
    n_baseline_fail: int
    corrected: int
    corrupted: int
    correction_rate: float
    corruption_rate: float
    flip_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flip_counts(baseline: Sequence[bool], steered: Sequence[bool]) -> FlipCounts:
    """Correction (fail->pass | baseline fail), corruption (pass->fail | baseline pass) and flip rates."""
    base, steer = np.asarray(baseline, dtype=bool), np.asarray(steered, dtype=bool)
    if base.shape != steer.shape or base.ndim != 1:
        raise SteerkitError(
            f"baseline and steered outcomes must be equal-length vectors, got {base.shape}, {steer.shape}"
        )
    n_pass, n_fail = int(base.sum()), int((~base).sum())
    corrected, corrupted = int((~base & steer).sum()), int((base & ~steer).sum())
    return FlipCounts(
        n=int(base.size),
        n_baseline_pass=n_pass,
        n_baseline_fail=n_fail,
        corrected=corrected,
        corrupted=corrupted,
        correction_rate=corrected / n_fail if n_fail else math.nan,
        corruption_rate=corrupted / n_pass if n_pass else math.nan,
        flip_rate=(corrected + corrupted) / base.size if base.size else math.nan,
    )


def sequence_similarity(a: Sequence[Any], b: Sequence[Any]) -> float:
    """difflib ratio 2M/T in [0, 1] of two sequences (strings: characters; lists: e.g. token ids); 1 if both empty."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def length_ratio(steered: Sequence[Any], baseline: Sequence[Any]) -> float:
    """len(steered) / len(baseline); NaN when the baseline is empty (excluded from means)."""
    return len(steered) / len(baseline) if len(baseline) else math.nan


def syntax_error_rate(codes: Sequence[str]) -> float:
    """Share of programs that `ast.parse` rejects (an empty program counts as an error); NaN for no programs."""
    if not codes:
        return math.nan
    bad = 0
    for code in codes:
        try:
            ok = bool(code.strip()) and ast.parse(code) is not None
        except (SyntaxError, ValueError):
            ok = False
        bad += not ok
    return bad / len(codes)


def divergence(
    base_texts: Sequence[str],
    steer_texts: Sequence[str],
    base_tokens: Sequence[Sequence[int]],
    steer_tokens: Sequence[Sequence[int]],
) -> dict[str, float]:
    """Mean character and token similarity and mean length ratio (characters) of steered vs baseline."""
    if not (len(base_texts) == len(steer_texts) == len(base_tokens) == len(steer_tokens)) or not base_texts:
        raise SteerkitError("divergence needs equal, non-zero numbers of baseline and steered completions")
    ratios = [length_ratio(s, b) for s, b in zip(steer_texts, base_texts)]
    finite = [r for r in ratios if not math.isnan(r)]
    return {
        "char_similarity": float(np.mean([sequence_similarity(b, s) for b, s in zip(base_texts, steer_texts)])),
        "token_similarity": float(
            np.mean([sequence_similarity(list(b), list(s)) for b, s in zip(base_tokens, steer_tokens)])
        ),
        "length_ratio": float(np.mean(finite)) if finite else math.nan,
    }


def constraint_values(
    similarity: float, syntax_rate: float, *, min_similarity: float, max_syntax_error: float
) -> tuple[float, float]:
    """Optuna-style constraints (feasible iff every value <= 0): floor on similarity, ceiling on syntax errors.

    NaN metrics are infeasible (+inf).
    """
    sim = min_similarity - similarity if not math.isnan(similarity) else math.inf
    syn = syntax_rate - max_syntax_error if not math.isnan(syntax_rate) else math.inf
    return sim, syn


def select_coefficient(
    trials: Sequence[Mapping[str, Any]],
    *,
    objective: str,
    min_similarity: float,
    max_syntax_error: float,
) -> dict[str, Any]:
    """Apply the selection rule to trial results (each a mapping with `coefficient`, `objective`,
    `char_similarity`, `syntax_error_rate`).

    Returns:
        `{"coefficient", "objective_value", "feasible", "n_feasible", "n_trials", "binding"}`; `coefficient` is
        None when no trial is feasible. `binding` says whether the constraints excluded a trial whose objective
        beats the selected one (the constraint decided the choice).
    """
    if not trials:
        raise SteerkitError("select_coefficient needs at least one trial result, got none")

    def feasible(t: Mapping[str, Any]) -> bool:
        values = constraint_values(
            float(t["char_similarity"]),
            float(t["syntax_error_rate"]),
            min_similarity=min_similarity,
            max_syntax_error=max_syntax_error,
        )
        return all(v <= 0 for v in values) and not math.isnan(float(t[objective]))

    def key(t: Mapping[str, Any]) -> tuple[float, float]:
        return (-float(t[objective]), float(t["coefficient"]))

    ok = sorted((t for t in trials if feasible(t)), key=key)
    best_any = min((t for t in trials if not math.isnan(float(t[objective]))), key=key, default=None)
    chosen = ok[0] if ok else None
    binding = best_any is not None and (chosen is None or float(best_any[objective]) > float(chosen[objective]))
    return {
        "coefficient": None if chosen is None else float(chosen["coefficient"]),
        "objective_value": None if chosen is None else float(chosen[objective]),
        "feasible": chosen is not None,
        "n_feasible": len(ok),
        "n_trials": len(trials),
        "binding": bool(binding),
    }
