"""Runs compared with a reference run by run: every (run, outcome) test as one row of a table.

Design note: a run is an MLflow run object read only through `info.run_id`, `data.metrics` and `data.params`
(the caller fetches it with `steerkit.tracking`); rows are joined by sample id (`compare.pair_by_id`), and the
whole table is one declared BH family (`compare.adjust_family`). Only runs that measured the same thing are
compared: `match_runs` keeps the runs whose model, corpus hash, edge rule, layer and generation params equal the
reference run's (`DEFAULT_MATCH`) and lists the others with the keys that differ, so one BH family never pools
runs of different models or corpora.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from steerkit.errors import SteerkitError
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


# params that define what a run measured; a key absent from both runs matches (e.g. `edge_rule` of a refusal run)
DEFAULT_MATCH = (
    "model",
    "model_source_sha256",
    "model_dtype",
    "corpus_sha256",
    "edge_rule",
    "resolved_layer",
    "hook",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "chat",
    "generation",
)


@dataclass(frozen=True)
class RunMatch:
    """Runs kept for comparison (`compared`) and the ones left out (`excluded`: run id, keys that differ).

    Attributes:
        reference_run: The run whose params the others must equal.
        keys: The params compared.
        compared: Run objects whose params equal the reference's on every key (the BH family's runs).
        excluded: One dict per left-out run: `run_id`, `keys` (comma-separated differing keys), and per key
            `reference.<key>` / `run.<key>` values.
    """

    reference_run: str
    keys: tuple[str, ...]
    compared: list[Any]
    excluded: list[dict[str, Any]] = field(default_factory=list)


def match_keys(text: str, reference_params: dict[str, str], reference_run: str) -> tuple[str, ...]:
    """`match` param -> keys: `default` = DEFAULT_MATCH, `none` = no matching, else comma-separated param names,
    each of which the reference run must have (a misspelt key would otherwise match everything silently)."""
    value = text.strip().lower()
    if value == "default":
        return DEFAULT_MATCH
    if value in ("none", ""):
        return ()
    keys = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    for key in keys:
        if key not in reference_params:
            raise SteerkitError(f"match key {key!r} is not a param of reference run {reference_run}")
    return keys


def _same(a: str | None, b: str | None) -> bool:
    """Equal as strings, or as numbers ("0" and "0.0" are one temperature)."""
    if a == b:
        return True
    try:
        x, y = float(a), float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return math.isfinite(x) and x == y


def match_runs(
    reference_run: str, reference_params: dict[str, str], runs: list[Any], keys: tuple[str, ...]
) -> RunMatch:
    """Split `runs` into those whose params equal `reference_params` on every key and those that differ."""
    compared, excluded = [], []
    for run in runs:
        params = run.data.params
        differ = [k for k in keys if not _same(reference_params.get(k), params.get(k))]
        if not differ:
            compared.append(run)
            continue
        row: dict[str, Any] = {"run_id": run.info.run_id, "keys": ",".join(differ)}
        for k in differ:
            row[f"reference.{k}"], row[f"run.{k}"] = reference_params.get(k), params.get(k)
        excluded.append(row)
    return RunMatch(reference_run, keys, compared, excluded)


def declared_outcomes(runs: list[Any]) -> list[str]:
    """The primary outcome the runs declared (param `primary_outcome`): the confirmatory family tests it alone;
    secondary outcomes are named with `outcomes=` when wanted (they would enter the same BH family).

    Raises:
        SteerkitError: If a run declares none, or the runs declare different ones (name them with `outcomes=`).
    """
    declared = set()
    for run in runs:
        if "primary_outcome" not in run.data.params:
            raise SteerkitError(f"run {run.info.run_id} declares no primary_outcome: pass outcomes=a,b")
        declared.add(run.data.params["primary_outcome"])
    if len(declared) != 1:
        raise SteerkitError(f"the runs declare different primary outcomes {sorted(declared)}: pass outcomes=a,b")
    return [declared.pop()]


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
