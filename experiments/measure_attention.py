"""Entry point `measure_attention` (seed 002, phase 1): do Python doctest markers attend more to the function?

For each matched task, the Python item (`>>>` in the docstring) and the Rust item (`#[test]` after the
function) are run through the model with an `AttentionCapture` on every chosen layer (one forward pass per
batch). Per item, layer and head: the post-softmax attention from the marker tokens to the function's tokens
(`target`), as the mean per-edge weight and as the total mass (summed over target keys, averaged over marker
queries). Per layer, head-averaged, for `metric`: Welch t and Mann-Whitney U (unpaired, reported uncorrected),
the Python/Rust ratio of means with a seeded bootstrap CI, an OLS of attention on language + marker->target
token distance (Rust tests sit further from the function, so the raw difference is confounded by distance), and
a paired Wilcoxon test over tasks. Declared family: per layer two hypotheses, the paired language difference and
the language effect at equal distance; BH over 2 x n_layers p-values (logged as `family_size`). The reference
implementation picked the best of ~20 layers uncorrected; here every layer is reported.

Identity control: the same pass with `AttentionEdit(scale=1.0)` on the measured edges at every measured layer;
the captured weights and logits must equal the unedited pass exactly (`identity_max_abs_weight_diff`).
`reference_levels.json` ({layer: Python level of `metric`}) and `layer_stats.json` (both metrics for both
languages per layer) are read by `calibrate_dose` and `steer_attention` through the run id.

Usage: mlflow run . -e measure_attention --env-manager local -P limit=8
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from steerkit import tracking
from steerkit.attention_measure import METRICS, TARGET_CHOICES, ItemAttention, edge_edit, measure
from steerkit.attention_stats import LAYER_FAMILY, bh_over_layers, compare_languages
from steerkit.cli import as_bool, as_float, as_int
from steerkit.core.models import LoadedModel, load_model
from steerkit.corpora.attention_pairs import AttentionItem, load_attention_corpus, token_distance
from steerkit.errors import SteerkitError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="measure_attention", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", default="all", help="'all' or comma-separated block indices")
    p.add_argument("--metric", default="total_mass", help=", ".join(METRICS))
    p.add_argument("--target", default="function_name", help=", ".join(TARGET_CHOICES))
    p.add_argument("--limit", default=0, help="first N matched tasks (0 = all)")
    p.add_argument("--bootstrap", default=2000, help="bootstrap resamples for the ratio CI (0 = none)")
    p.add_argument("--seed", default=0)
    p.add_argument("--alpha", default=0.05, help="BH false discovery rate")
    p.add_argument("--batch-size", default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--chat", default="false", help="apply the chat template (default: the code as is)")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def parse_layers(value: str, loaded: LoadedModel) -> list[int]:
    """'all' or comma-separated layer indices, each checked against the model."""
    if value == "all":
        return list(range(loaded.n_layers))
    try:
        layers = sorted({int(x) for x in value.split(",") if x.strip()})
    except ValueError as exc:
        raise SteerkitError(f"layers must be 'all' or comma-separated integers, got {value!r}") from exc
    if not layers:
        raise SteerkitError(f"layers must name at least one layer, got {value!r}")
    for layer in layers:
        loaded.check_layer(layer)
    return layers


def choice(name: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise SteerkitError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def load_pairs(corpus_path: str, limit: int) -> tuple[Any, list[tuple[AttentionItem, AttentionItem]]]:
    """The corpus and its first `limit` (python, rust) test pairs (all when 0)."""
    corpus = load_attention_corpus(corpus_path)
    pairs = corpus.pairs()
    return corpus, pairs[:limit] if limit else pairs


def measure_logged(
    loaded: LoadedModel, items: list[AttentionItem], layers: list[int], target: str, chat: bool, batch: int
) -> tuple[list[ItemAttention], dict[str, float]]:
    """Measure batch by batch (rows appended to `samples/attention.jsonl` per batch) with the identity control."""
    log = tracking.SampleLog("attention")
    results: list[ItemAttention] = []
    worst_w, worst_l = 0.0, 0.0
    for b0 in range(0, len(items), batch):
        chunk = items[b0 : b0 + batch]
        plain = measure(loaded, chunk, layers=layers, target=target, chat=chat, batch_size=batch)
        ident_edit = edge_edit(chunk, tuple(layers), value=1.0, target=target, sources="marker")
        ident = measure(
            loaded, chunk, layers=layers, target=target, chat=chat, batch_size=batch, interventions=[ident_edit]
        )
        for layer in layers:
            for a, b in zip(plain.captured[layer], ident.captured[layer]):
                worst_w = max(worst_w, float((a - b).abs().max()))
        worst_l = max(worst_l, float((plain.logits - ident.logits).abs().max()))
        for item, res in zip(chunk, plain.items):
            log.append(_sample_record(item, res))
        log.flush()
        results.extend(plain.items)
    return results, {"identity_max_abs_weight_diff": worst_w, "identity_max_abs_logit_diff": worst_l}


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


def plot_heatmap(diff: np.ndarray, layers: list[int], metric: str) -> Any:
    from steerkit.plots import plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * diff.shape[1], 1.5 + 0.22 * len(layers)))
    bound = float(np.abs(diff).max()) or 1.0
    im = ax.imshow(diff, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{metric}: Python - Rust")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_layers(rows: list[dict[str, Any]], item_rows: list[dict[str, Any]], metric: str) -> Any:
    """Per layer: each language's mean with a 95% t interval, and the ratio with its bootstrap interval."""
    from scipy import stats as sps

    from steerkit.plots import plt

    layers = [r["layer"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for lang, color in (("python", "tab:blue"), ("rust", "tab:orange")):
        means, lows, highs = [], [], []
        for layer in layers:
            v = np.array([r[metric] for r in item_rows if r["layer"] == layer and r["language"] == lang])
            sem = sps.sem(v) if len(v) > 1 else 0.0
            half = float(sem * sps.t.ppf(0.975, len(v) - 1)) if len(v) > 1 else 0.0
            means.append(v.mean())
            lows.append(half)
            highs.append(half)
        ax1.errorbar(layers, means, yerr=[lows, highs], label=lang, color=color, capsize=2, marker="o", ms=3)
    ax1.set_ylabel(metric)
    ax1.legend()
    ratio = np.array([r["ratio"] for r in rows])
    err = np.array([[r["ratio"] - r["ratio_low"], r["ratio_high"] - r["ratio"]] for r in rows]).T
    ax2.errorbar(layers, ratio, yerr=np.nan_to_num(err), capsize=2, marker="o", ms=3, color="black")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set_ylabel("Python / Rust")
    ax2.set_xlabel("layer")
    fig.tight_layout()
    return fig


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


def log_layer_metrics(rows: list[dict[str, Any]]) -> None:
    keys = ("python_mean", "rust_mean", "ratio", "paired_wilcoxon_p", "ols_language_coef", "ols_language_p")
    for r in rows:
        tracking.log_metrics({f"layer_{k}": r[k] for k in keys}, step=int(r["layer"]))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("measure_attention", vars(args), experiment=args.experiment):
        metric = choice("metric", args.metric, METRICS)
        target = choice("target", args.target, TARGET_CHOICES)
        n_boot, seed = as_int("bootstrap", args.bootstrap, 0), as_int("seed", args.seed)
        alpha = as_float("alpha", args.alpha, 0.0)
        batch, chat = as_int("batch_size", args.batch_size, 1), as_bool("chat", args.chat)
        corpus, pairs = load_pairs(args.corpus, as_int("limit", args.limit, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        layers = parse_layers(args.layers, loaded)
        items = [p for p, _ in pairs] + [r for _, r in pairs]
        dist, n_mismatch = distances(loaded, items)
        tracking.log_params(
            {
                "resolved_layers": layers,
                "hook": "attention_post_softmax",
                "n_pairs": len(pairs),
                "corpus_sha256": corpus.sha256,
                "bh_family": "+".join(LAYER_FAMILY) + " per layer",
                **{f"model_{k}": v for k, v in loaded.describe().items()},
            }
        )
        t0 = time.perf_counter()
        results, checks = measure_logged(loaded, items, layers, target, chat, batch)
        by_id = dict(zip((i.id for i in items), results))
        item_rows = item_layer_rows(items, results, dist)
        rows = layer_stats(pairs, by_id, layers, dist, metric, n_boot, seed)
        family = bh_over_layers(rows, LAYER_FAMILY, alpha)
        tracking.log_table(item_rows, "item_layer.json")
        tracking.log_table(rows, "layer_stats.json")
        tracking.log_text(_csv(rows), "layer_stats.csv")
        tracking.log_json({str(r["layer"]): r["python_mean"] for r in rows}, "reference_levels.json")
        tracking.log_figure(plot_heatmap(head_difference(pairs, by_id, metric), layers, metric), "head_heatmap.png")
        tracking.log_figure(plot_layers(rows, item_rows, metric), "layers.png")
        log_layer_metrics(rows)
        summary = summary_metrics(rows, family)
        tracking.log_metrics(
            {**summary, **checks, "distance_mismatches": n_mismatch, "experiment_seconds": time.perf_counter() - t0}
        )
        print(json.dumps(summary | checks))


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


if __name__ == "__main__":
    tracking.entry_point(main)
