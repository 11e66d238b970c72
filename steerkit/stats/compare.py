"""Paired comparisons between arms of logged runs: pair samples by id, test, correct over the whole family.

Design note: pure functions only (rows in, frozen results out; no mlflow), so a `compare_runs` table can be
recomputed from the per-sample tables alone. A comparison sets a *reference* arm against a *run* arm over the
same prompts: within one run, its baseline against its steered outputs; across runs, one run's steered outputs
against another's. Samples are paired by `id`; ids present on one side only are dropped and counted, never
imputed. Binary outcomes get the exact McNemar test and the paired (Newcombe) risk difference; continuous
outcomes get the Wilcoxon signed-rank test and the median paired difference with a seeded percentile bootstrap
interval. Every comparison made is one hypothesis of the declared family, and Benjamini-Hochberg runs over
all of them at once (`adjust_family`). Sign convention: positive means the run arm is higher than the reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from steerkit.errors import SteerkitError
from steerkit.stats.intervals import paired_risk_difference, wilson_interval
from steerkit.stats.tests import benjamini_hochberg, mcnemar_exact, paired_outcomes

Kind = Literal["binary", "continuous"]


@dataclass(frozen=True)
class Pairing:
    """Values of one column on both arms, aligned by sample id (sorted), plus what could not be paired.

    ``missing_reference`` counts ids present only in the run arm; ``missing_run`` ids present only in the
    reference arm; ``missing_value`` pairs dropped because a value was None/NaN on either side.
    """

    ids: list[str]
    reference: list[Any]
    run: list[Any]
    missing_reference: int = 0
    missing_run: int = 0
    missing_value: int = 0

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_dropped(self) -> int:
        return self.missing_reference + self.missing_run + self.missing_value


@dataclass(frozen=True)
class Comparison:
    """One paired test between a reference arm and a run arm on one outcome (one row of the comparison table).

    ``effect`` is the paired risk difference (binary) or the median paired difference (continuous), run minus
    reference, with its interval ``[effect_low, effect_high]``. ``q_value`` and ``rejected`` are filled by
    :func:`adjust_family`. Rates and their Wilson intervals are for binary outcomes only (None otherwise).
    """

    run_id: str
    reference: str
    outcome: str
    kind: Kind
    test: str
    n_pairs: int
    n_dropped: int
    p_value: float
    effect: float
    effect_low: float
    effect_high: float
    effect_kind: str
    dose: float | None = None
    reference_rate: float | None = None
    run_rate: float | None = None
    run_rate_low: float | None = None
    run_rate_high: float | None = None
    b: int | None = None
    c: int | None = None
    q_value: float | None = None
    rejected: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "continuous"):
            raise SteerkitError(f"kind must be 'binary' or 'continuous', got {self.kind!r}")
        if not (0.0 <= self.p_value <= 1.0):
            raise SteerkitError(f"p_value must be in [0, 1], got {self.p_value!r}")

    def to_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row.update(row.pop("extra"))
        return row


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _index(rows: Sequence[Mapping[str, Any]], side: str, id_column: str) -> dict[str, Mapping[str, Any]]:
    index: dict[str, Mapping[str, Any]] = {}
    for i, row in enumerate(rows):
        if id_column not in row or _is_missing(row[id_column]):
            raise SteerkitError(f"{side} row {i} has no {id_column!r}")
        key = str(row[id_column])
        if key in index:
            raise SteerkitError(f"{side} table has duplicate {id_column} {key!r}")
        index[key] = row
    return index


def pair_by_id(
    reference_rows: Sequence[Mapping[str, Any]],
    run_rows: Sequence[Mapping[str, Any]],
    reference_column: str,
    run_column: str,
    id_column: str = "id",
) -> Pairing:
    """Pair `reference_column` of one table with `run_column` of another by sample id.

    Args:
        reference_rows: The reference arm's per-sample rows (dicts with `id_column`).
        run_rows: The run arm's rows; may be the same rows (baseline vs steered columns of one run).
        reference_column: The outcome column on the reference side, e.g. ``baseline_new_test``.
        run_column: The outcome column on the run side, e.g. ``steered_new_test``.
        id_column: The sample id column.

    Returns:
        Aligned values sorted by id, with counts of ids and values that could not be paired.

    Raises:
        SteerkitError: If an id is missing or repeated in a table, or a column is absent from every row.
    """
    ref, run = _index(reference_rows, "reference", id_column), _index(run_rows, "run", id_column)
    for side, table, column in (("reference", ref, reference_column), ("run", run, run_column)):
        if table and not any(column in row for row in table.values()):
            raise SteerkitError(f"{side} table has no column {column!r}")
    ids, ref_values, run_values, missing_value = [], [], [], 0
    for key in sorted(ref.keys() & run.keys()):
        a, b = ref[key].get(reference_column), run[key].get(run_column)
        if _is_missing(a) or _is_missing(b):
            missing_value += 1
            continue
        ids.append(key)
        ref_values.append(a)
        run_values.append(b)
    return Pairing(
        ids=ids,
        reference=ref_values,
        run=run_values,
        missing_reference=len(run.keys() - ref.keys()),
        missing_run=len(ref.keys() - run.keys()),
        missing_value=missing_value,
    )


def _require_pairs(pairing: Pairing, what: str) -> None:
    if pairing.n < 1:
        raise SteerkitError(f"no paired samples for {what} (dropped {pairing.n_dropped})")


def compare_binary(
    pairing: Pairing, *, run_id: str, reference: str, outcome: str, dose: float | None = None
) -> Comparison:
    """Exact McNemar test (two-sided) and the paired risk difference with Newcombe's interval.

    Raises:
        SteerkitError: If nothing could be paired or a value is not boolean.
    """
    what = f"run {run_id} outcome {outcome!r}"
    _require_pairs(pairing, what)
    try:
        counts = paired_outcomes(pairing.reference, pairing.run)
    except SteerkitError as exc:
        raise SteerkitError(f"{what}: {exc}") from exc
    test = mcnemar_exact(counts.b, counts.c)
    rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
    k_run, k_ref = counts.both + counts.b, counts.both + counts.c
    low, high = wilson_interval(k_run, counts.n)
    return Comparison(
        run_id=run_id,
        reference=reference,
        outcome=outcome,
        kind="binary",
        test="mcnemar_exact",
        n_pairs=counts.n,
        n_dropped=pairing.n_dropped,
        p_value=test.p_value,
        effect=rd.estimate,
        effect_low=rd.low,
        effect_high=rd.high,
        effect_kind="paired_risk_difference",
        dose=dose,
        reference_rate=k_ref / counts.n,
        run_rate=k_run / counts.n,
        run_rate_low=low,
        run_rate_high=high,
        b=counts.b,
        c=counts.c,
    )


def _as_floats(values: Sequence[Any], what: str) -> np.ndarray:
    try:
        array = np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError) as exc:
        raise SteerkitError(f"{what} must be numeric, got {exc}") from exc
    if not np.all(np.isfinite(array)):
        raise SteerkitError(f"{what} must be finite")
    return array


def median_difference_ci(
    diffs: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Median of paired differences with a seeded percentile bootstrap interval: (median, low, high).

    Percentile rather than BCa: BCa is undefined when every resample has the same median (e.g. all differences
    equal), which is common for token counts under a weak intervention.
    """
    data = np.asarray(diffs, dtype=float)
    if data.size < 1:
        raise SteerkitError("median_difference_ci needs at least one difference")
    median = float(np.median(data))
    if data.size == 1 or np.all(data == data[0]):
        return median, median, median
    res = sps.bootstrap(
        (data,),
        np.median,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return median, float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare_continuous(
    pairing: Pairing, *, run_id: str, reference: str, outcome: str, dose: float | None = None, seed: int = 0
) -> Comparison:
    """Wilcoxon signed-rank test (two-sided, zero differences dropped) and the median paired difference.

    With every paired difference zero the data carry no evidence either way: p = 1.0 (as McNemar with no
    discordant pairs), so the hypothesis stays in the family instead of becoming NaN.

    Raises:
        SteerkitError: If nothing could be paired or a value is not a finite number.
    """
    what = f"run {run_id} outcome {outcome!r}"
    _require_pairs(pairing, what)
    ref, run = _as_floats(pairing.reference, f"{what} reference values"), _as_floats(pairing.run, f"{what} values")
    diffs = run - ref
    p_value = 1.0 if np.all(diffs == 0) else float(sps.wilcoxon(diffs, zero_method="wilcox").pvalue)
    median, low, high = median_difference_ci(diffs, seed=seed)
    return Comparison(
        run_id=run_id,
        reference=reference,
        outcome=outcome,
        kind="continuous",
        test="wilcoxon_signed_rank",
        n_pairs=pairing.n,
        n_dropped=pairing.n_dropped,
        p_value=min(1.0, max(0.0, p_value)),
        effect=median,
        effect_low=low,
        effect_high=high,
        effect_kind="median_paired_difference",
        dose=dose,
        extra={"reference_mean": float(ref.mean()), "run_mean": float(run.mean())},
    )


def adjust_family(
    comparisons: Sequence[Comparison], alpha: float = 0.05, not_run: int = 0
) -> tuple[list[Comparison], int]:
    """Benjamini-Hochberg over every comparison given (the declared family); returns (rows, family size).

    `not_run` members of the family were not completed (pruned): they stay in it at p = 1, never rejected."""
    bh = benjamini_hochberg([c.p_value for c in comparisons] + [1.0] * not_run, alpha=alpha)
    rows = [dataclasses.replace(c, q_value=q, rejected=r) for c, q, r in zip(comparisons, bh.q_values, bh.rejected)]
    return rows, bh.family_size


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table of `columns` (floats to 4 significant digits, None as '')."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
