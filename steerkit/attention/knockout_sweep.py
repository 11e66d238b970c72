"""Seed 002, knockout: remove the marker -> function attention edges layer by layer; does the marker care?

Design note: for each test item the edges from the marker tokens to the target (function) tokens are knocked out
before softmax at one layer (`sweep`), all layers (`all`) or listed layers, and the marker's next-token
distribution is compared with the baseline (KL at the last marker token is primary; mean KL and the NLL change
are reported). The control knocks out random keys before the first marker from the same queries, drawn so that
the baseline attention mass they carry is within a tolerance of the targets' mass at that layer condition
(`knockout.matched_control_keys`); both masses are logged per row, and a sample whose control could not be
matched is kept in the table but left out of the tests (`control_mass_matched`). The baseline is the same edit
path at scale 1.0 (checked bit-identical to the unhooked model). Per metric, the paired knockout-vs-control test
over layers is one BH family.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from steerkit.attention.knockout import (
    KnockoutSample,
    knockout_edit,
    layer_tests,
    sample_metrics,
    tail_logits,
)
from steerkit.attention.knockout_controls import key_mass, matched_control_keys
from steerkit.cli import as_int
from steerkit.core.checks import IDENTITY_KEY, max_abs_diff
from steerkit.core.models import LoadedModel
from steerkit.core.progress import progress as progress_bar
from steerkit.core.records import RecordLog
from steerkit.errors import SteerkitError
from steerkit.metrics import kl_divergence
from steerkit.stats.compare import median_difference_ci

METRICS = ("kl_last", "kl_mean", "nll_delta", "top1_changed_last", "topk_overlap_last", "top1_changed_frac")
TESTED = ("kl_last", "kl_mean", "nll_delta")  # one BH family (over layers) each; kl_last is primary
LANGUAGES = ("python", "rust", "both")


def resolve_layers(value: str, loaded: LoadedModel) -> list[tuple[str, tuple[int, ...]]]:
    """(label, layers) conditions: `sweep` = every layer alone, `all` = every layer at once, `3,5` = each alone."""
    if value == "sweep":
        return [(str(i), (i,)) for i in range(loaded.n_layers)]
    if value == "all":
        return [("all", tuple(range(loaded.n_layers)))]
    out: list[tuple[str, tuple[int, ...]]] = []
    for part in value.split(","):
        layer = as_int("layers", part.strip())
        loaded.check_layer(layer)
        out.append((str(layer), (layer,)))
    if len({label for label, _ in out}) != len(out):
        raise SteerkitError(f"layers lists a layer twice: {value!r}")
    return out


def select_items(corpus: Any, language: str, limit: int) -> list[Any]:
    """Test items, Python and Rust of each task alternating (so `limit` takes both languages)."""
    if language not in LANGUAGES:
        raise SteerkitError(f"unknown language {language!r} (choose from {', '.join(LANGUAGES)})")
    if language != "both":
        items = list(corpus.select(language, "test"))
    else:
        items = [item for pair in corpus.pairs() for item in pair]
        paired = {i.id for i in items}
        items += [i for i in corpus.select(None, "test") if i.id not in paired]
    return items[:limit] if limit else items


def run_sample(
    loaded: LoadedModel,
    sample: KnockoutSample,
    conditions: list[tuple[str, tuple[int, ...]]],
    seeds: list[int],
    k: int,
    tolerance: float = 0.1,
) -> tuple[list[dict], dict[str, float]]:
    """Every layer condition for one sample: one row per condition, plus the identity check.

    Per condition and seed, a control key set mass-matched to the targets (the mass averaged over the
    condition's layers); the control metrics are averaged over the seeds.

    The baseline is the same edit path at scale 1.0 on the knocked edges (all swept layers at once); it is
    compared with the unhooked model (`identity_*`, must be 0).
    """
    all_layers = tuple(sorted({x for _, layers in conditions for x in layers}))
    plain, base = tail_logits(loaded, sample, [[], [knockout_edit(sample, all_layers, sample.targets, "scale", 1.0)]])
    checks = {
        IDENTITY_KEY: max_abs_diff(plain, base),
        "identity_kl_max": float(kl_divergence(plain, base).max()),
    }
    masses = key_mass(loaded, sample.encoded, sample, all_layers)
    rows = []
    for label, layers in conditions:
        mass = np.mean([masses[x] for x in layers], axis=0)
        controls = [matched_control_keys(sample, mass, seed, tolerance) for seed in seeds]
        edits = [[knockout_edit(sample, layers, keys)] for keys in (sample.targets, *(c.keys for c in controls))]
        knocked, *ctrl = tail_logits(loaded, sample, edits)
        ko = sample_metrics(sample, base, knocked, k)
        cs = [sample_metrics(sample, base, c, k) for c in ctrl]
        row: dict[str, Any] = {"id": sample.id, "task": sample.item.task, "language": sample.item.language}
        row |= {"layer": label, "n_sources": len(sample.sources), "n_targets": len(sample.targets)}
        row |= {"targets": list(sample.targets), "nll_base": ko["nll_base"]}
        row |= {
            "target_mass": controls[0].target_mass,
            "control_mass": float(np.mean([c.control_mass for c in controls])),
        }
        row |= {"control_mass_matched": all(c.matched for c in controls)}
        row |= {"n_control_keys": float(np.mean([len(c.keys) for c in controls]))}
        row |= {f"knockout_{m}": ko[m] for m in METRICS}
        row |= {f"control_{m}": sum(c[m] for c in cs) / len(cs) for m in METRICS}
        rows.append(row)
    return rows, checks


def summarise_layers(rows: list[dict], alpha: float, seed: int) -> tuple[list[dict], dict[str, int]]:
    """Per-layer table: medians per arm with CIs, and the paired test of each tested metric (BH per metric) over
    the samples whose control was mass-matched."""
    table: dict[str, dict[str, Any]] = {}
    families = {}
    matched = [r for r in rows if r["control_mass_matched"]]
    if not matched:
        raise SteerkitError("no sample's control could be mass-matched to its targets; raise control_tolerance")
    for metric in TESTED:
        tests, size = layer_tests(matched, metric, alpha=alpha, seed=seed)
        families[metric] = size
        for t in tests:
            entry = table.setdefault(t["layer"], {"layer": t["layer"], "n": t["n"]})
            entry |= {f"{metric}_{k}": v for k, v in t.items() if k not in ("layer", "metric", "n")}
    for label, entry in table.items():
        sel = [r for r in matched if r["layer"] == label]
        entry["n_control_unmatched"] = sum(1 for r in rows if r["layer"] == label and not r["control_mass_matched"])
        entry["target_mass_median"] = statistics.median(r["target_mass"] for r in sel)
        entry["control_mass_median"] = statistics.median(r["control_mass"] for r in sel)
        for arm in ("knockout", "control"):
            med, low, high = median_difference_ci([r[f"{arm}_kl_last"] for r in sel], seed=seed)
            entry |= {f"{arm}_kl_last_median": med, f"{arm}_kl_last_low": low, f"{arm}_kl_last_high": high}
            entry[f"{arm}_top1_changed_last_rate"] = sum(r[f"{arm}_top1_changed_last"] for r in sel) / len(sel)
        for lang in ("python", "rust"):
            vals = [r["knockout_kl_last"] for r in sel if r["language"] == lang]
            entry[f"knockout_kl_last_median_{lang}"] = statistics.median(vals) if vals else None
    return list(table.values()), families


def run_samples(
    loaded: LoadedModel,
    samples: list[KnockoutSample],
    conditions: list[tuple[str, tuple[int, ...]]],
    seeds: list[int],
    k: int,
    log: RecordLog,
    tolerance: float = 0.1,
) -> tuple[list[dict], dict[str, float]]:
    """Every sample's rows (appended to `log`, flushed per sample) and the worst identity check over samples."""
    rows: list[dict] = []
    checks = {IDENTITY_KEY: 0.0, "identity_kl_max": 0.0}
    for sample in progress_bar(samples, desc="knockout samples", unit="sample"):
        sample_rows, sample_checks = run_sample(loaded, sample, conditions, seeds, k, tolerance)
        checks = {key: max(checks[key], sample_checks[key]) for key in checks}
        for row in sample_rows:
            log.append(row)
        log.flush()
        rows += sample_rows
    return rows, checks
