"""Runs compared with a reference run by run: every (run, outcome) test as one row of a table.

Design note: a run is an MLflow run object read only through `info.run_id`, `data.metrics` and `data.params`
(the caller fetches it with `steerkit.tracking`); rows are joined by sample id (`compare.pair_by_id`), and the
whole table is one declared BH family (`compare.adjust_family`).
"""

from __future__ import annotations

from typing import Any

from steerkit.stats.compare import Comparison, compare_binary, compare_continuous, pair_by_id

TABLE_COLUMNS = (
    "run_id",
    "dose",
    "reference",
    "outcome",
    "test",
    "n_pairs",
    "n_dropped",
    "reference_rate",
    "run_rate",
    "run_rate_low",
    "run_rate_high",
    "b",
    "c",
    "effect_kind",
    "effect",
    "effect_low",
    "effect_high",
    "p_value",
    "q_value",
    "rejected",
)


def run_dose(run: Any) -> float | None:
    """The run's dose: its `dose` metric, else its `scale` param, else None."""
    if "dose" in run.data.metrics:
        return float(run.data.metrics["dose"])
    try:
        return float(run.data.params["scale"])
    except (KeyError, ValueError):
        return None


def compare_run(
    run: Any,
    rows: list[dict],
    ref_rows: list[dict],
    reference: str,
    binary: list[str],
    continuous: list[str],
    seed: int,
) -> list[Comparison]:
    """Every outcome test of one run against the reference (its own baseline, or another run's steered arm)."""
    ref_prefix = "baseline" if reference == "baseline" else "steered"
    run_id, dose = run.info.run_id, run_dose(run)
    out = []
    for outcome in binary + continuous:
        pairing = pair_by_id(ref_rows, rows, f"{ref_prefix}_{outcome}", f"steered_{outcome}")
        common = {"run_id": run_id, "reference": reference, "outcome": outcome, "dose": dose}
        if outcome in binary:
            out.append(compare_binary(pairing, **common))
        else:
            out.append(compare_continuous(pairing, **common, seed=seed))
    return out


def comparison_metrics(rows: list[dict], family: int, n_runs: int) -> dict[str, float | int | None]:
    """Flat metrics of a comparison table: family size, rejections, dropped samples, and per (run, outcome) the
    test's p, q, effect with its interval and pair counts (keys `<run id[:8]>.<outcome>.<name>`)."""
    metrics: dict[str, float | int | None] = {"family_size": family, "n_runs": n_runs}
    metrics["n_rejected"] = sum(bool(r["rejected"]) for r in rows)
    metrics["n_dropped_samples"] = sum(r["n_dropped"] for r in rows)
    for r in rows:
        key = f"{r['run_id'][:8]}.{r['outcome']}"
        for name in ("p_value", "q_value", "effect", "effect_low", "effect_high", "n_pairs", "n_dropped"):
            metrics[f"{key}.{name}"] = r[name]
        metrics[f"{r['run_id'][:8]}.dose"] = r["dose"]
    return metrics
