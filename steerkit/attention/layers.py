"""Seed 002: where does a test marker attend to its function, layer by layer, in Python vs Rust?

Design note: every item is measured with and without the identity edit (scale 1.0 on the marker -> target edges,
the same code path as a real edit): captured weights and logits must be equal bit for bit (the identity control).
Per layer the head-averaged metric of the Python and the Rust item of each task are compared as a pair (paired
Wilcoxon, ratio of means with a bootstrap interval, an OLS on language controlling for the marker -> target token
distance); `attention.stats` holds the tests, this module the tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from steerkit.attention.measure import METRICS, ItemAttention, edge_edit, measure
from steerkit.attention.stats import compare_languages
from steerkit.core.checks import IDENTITY_KEY, max_abs_diff
from steerkit.core.models import LoadedModel
from steerkit.core.progress import progress as progress_bar
from steerkit.core.records import RecordLog
from steerkit.corpora.attention_pairs import AttentionItem, token_distance


def measure_logged(
    loaded: LoadedModel,
    items: list[AttentionItem],
    layers: list[int],
    target: str,
    chat: bool,
    batch: int,
    log: RecordLog,
) -> tuple[list[ItemAttention], dict[str, float]]:
    """Measure batch by batch (a row per item appended to `log`, flushed per batch) with the identity control."""
    results: list[ItemAttention] = []
    worst_w, worst_l = 0.0, 0.0
    for b0 in progress_bar(range(0, len(items), batch), desc="measure attention", unit="batch"):
        chunk = items[b0 : b0 + batch]
        plain = measure(loaded, chunk, layers=layers, target=target, chat=chat, batch_size=batch)
        ident_edit = edge_edit(chunk, tuple(layers), value=1.0, target=target, sources="marker")
        ident = measure(
            loaded, chunk, layers=layers, target=target, chat=chat, batch_size=batch, interventions=[ident_edit]
        )
        for layer in layers:
            for a, b in zip(plain.captured[layer], ident.captured[layer]):
                worst_w = max(worst_w, max_abs_diff(a, b))
        worst_l = max(worst_l, max_abs_diff(plain.logits, ident.logits))
        for item, res in zip(chunk, plain.items):
            log.append(_sample_record(item, res))
        log.flush()
        results.extend(plain.items)
    return results, {"identity_max_abs_weight_diff": worst_w, IDENTITY_KEY: worst_l}


def _sample_record(item: AttentionItem, res: ItemAttention) -> dict[str, Any]:
    return {
        "id": item.id,
        "task": item.task,
        "language": item.language,
        "layers": list(res.layers),
        "mean_edge": res.mean_edge.tolist(),
        "total_mass": res.total_mass.tolist(),
        "n_marker_tokens": res.n_marker_tokens,
        "n_target_tokens": res.n_target_tokens,
    }


def item_layer_rows(items: list[AttentionItem], results: list[ItemAttention], dist: dict[str, int]) -> list[dict]:
    """The long per-item x layer table (head-averaged)."""
    rows = []
    for item, res in zip(items, results):
        for k, layer in enumerate(res.layers):
            rows.append(
                {
                    "id": item.id,
                    "task": item.task,
                    "language": item.language,
                    "layer": layer,
                    "distance": dist[item.id],
                    "mean_edge": float(res.mean_edge[k].mean()),
                    "total_mass": float(res.total_mass[k].mean()),
                    "n_marker_tokens": res.n_marker_tokens,
                    "n_target_tokens": res.n_target_tokens,
                }
            )
    return rows


def layer_stats(
    pairs: list[tuple[AttentionItem, AttentionItem]],
    results: dict[str, ItemAttention],
    layers: list[int],
    dist: dict[str, int],
    metric: str,
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One row per layer: statistics of `metric`, plus both metrics' means per language."""
    py_items, rs_items = [p for p, _ in pairs], [r for _, r in pairs]
    py_d = np.array([dist[i.id] for i in py_items])
    rs_d = np.array([dist[i.id] for i in rs_items])
    rows = []
    for k, layer in enumerate(layers):
        values = {
            (lang, m): np.array([results[i.id].metric(m)[k].mean() for i in group])
            for lang, group in (("python", py_items), ("rust", rs_items))
            for m in METRICS
        }
        idx = [(n, n) for n in range(len(pairs))]
        cmp = compare_languages(
            values[("python", metric)], values[("rust", metric)], py_d, rs_d, idx, n_resamples=n_boot, seed=seed
        )
        extra = {f"{lang}_{m}": float(v.mean()) for (lang, m), v in values.items()}
        rows.append({"layer": layer, "metric": metric, **cmp.to_dict(), **extra})
    return rows


def head_difference(pairs: list[tuple[AttentionItem, AttentionItem]], results: dict[str, ItemAttention], metric: str):
    """`[layers, heads]` mean Python minus mean Rust of `metric`."""
    py = np.stack([results[p.id].metric(metric) for p, _ in pairs]).mean(0)
    rs = np.stack([results[r.id].metric(metric) for _, r in pairs]).mean(0)
    return py - rs


def distances(loaded: LoadedModel, items: list[AttentionItem]) -> tuple[dict[str, int], int]:
    """Marker -> target token distance per item for this model, and how many differ from the stored value."""
    dist = {i.id: token_distance(loaded, i) for i in items}
    return dist, sum(dist[i.id] != i.marker_target_distance for i in items)


def summary_metrics(rows: list[dict[str, Any]], family: int) -> dict[str, Any]:
    sig = [r for r in rows if r["paired_wilcoxon_reject"]]
    sig_ols = [r for r in rows if r["ols_language_reject"]]
    best = max(rows, key=lambda r: r["ratio"] if np.isfinite(r["ratio"]) else -np.inf)
    return {
        "family_size": family,
        "n_layers": len(rows),
        "n_layers_paired_significant": len(sig),
        "n_layers_distance_controlled_significant": len(sig_ols),
        "max_ratio": best["ratio"],
        "max_ratio_layer": best["layer"],
    }
