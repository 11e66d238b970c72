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

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import layers as layers_
from steerkit.attention import reports
from steerkit.attention.measure import METRICS, TARGET_CHOICES
from steerkit.attention.stats import LAYER_FAMILY, bh_over_layers
from steerkit.core.checks import require_identity
from steerkit.core.models import load_model
from steerkit.corpora.attention_pairs import load_attention_pairs
from steerkit.stats.design import Design


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("measure_attention", __doc__)
    cli.add_model_args(p)
    p.add_argument("--layers", default="all", help="'all' or comma-separated block indices")
    p.add_argument("--metric", default="total_mass", help=", ".join(METRICS))
    p.add_argument("--target", default="function_name", help=", ".join(TARGET_CHOICES))
    p.add_argument("--limit", default=0, help="first N matched tasks (0 = all)")
    p.add_argument("--bootstrap", default=2000, help="bootstrap resamples for the ratio CI (0 = none)")
    p.add_argument("--seed", default=0)
    p.add_argument("--alpha", default=0.05, help="BH false discovery rate")
    p.add_argument("--batch-size", default=8)
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--chat", default="false", help="apply the chat template (default: the code as is)")
    p.add_argument("--experiment", default="steerkit")
    cli.add_design_args(p)
    return p.parse_args(argv)


def log_layer_metrics(rows: list[dict[str, Any]]) -> None:
    keys = ("python_mean", "rust_mean", "ratio", "paired_wilcoxon_p", "ols_language_coef", "ols_language_p")
    for r in rows:
        tracking.log_metrics({f"layer_{k}": r[k] for k in keys}, step=int(r["layer"]))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("measure_attention", vars(args), experiment=args.experiment):
        metric = cli.as_choice("metric", args.metric, METRICS)
        target = cli.as_choice("target", args.target, TARGET_CHOICES)
        n_boot, seed = cli.as_int("bootstrap", args.bootstrap, 0), cli.as_int("seed", args.seed)
        alpha = cli.as_float("alpha", args.alpha, 0.0)
        batch, chat = cli.as_int("batch_size", args.batch_size, 1), cli.as_bool("chat", args.chat)
        corpus, pairs = load_attention_pairs(args.corpus, cli.as_int("limit", args.limit, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        layers = cli.as_layer_set("layers", args.layers, loaded)
        # primary: Python vs Rust `metric` per layer, paired Wilcoxon over tasks; BH over layers x LAYER_FAMILY
        n_tests = len(layers) * len(LAYER_FAMILY)
        design = Design(metric, "wilcoxon_exact", len(pairs), family_size=n_tests, alpha=alpha)
        tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        items = [p for p, _ in pairs] + [r for _, r in pairs]
        dist, n_mismatch = layers_.distances(loaded, items)
        tracking.log_params(
            {
                "resolved_layers": layers,
                "hook": "attention_post_softmax",
                "n_pairs": len(pairs),
                "corpus_sha256": corpus.sha256,
                "bh_family": "+".join(LAYER_FAMILY) + " per layer",
                **loaded.params(),
            }
        )
        t0 = time.perf_counter()
        log = tracking.SampleLog("attention")
        results, checks = layers_.measure_logged(loaded, items, layers, target, chat, batch, log)
        by_id = dict(zip((i.id for i in items), results))
        item_rows = layers_.item_layer_rows(items, results, dist)
        rows = layers_.layer_stats(pairs, by_id, layers, dist, metric, n_boot, seed)
        family = bh_over_layers(rows, LAYER_FAMILY, alpha)
        tracking.log_table(item_rows, "item_layer.json")
        tracking.log_table(rows, "layer_stats.json")
        tracking.log_csv(rows, "layer_stats.csv")
        tracking.log_json({str(r["layer"]): r["python_mean"] for r in rows}, "reference_levels.json")
        tracking.log_figure(
            reports.plot_heatmap(layers_.head_difference(pairs, by_id, metric), layers, metric), "head_heatmap.png"
        )
        tracking.log_figure(reports.plot_layers(rows, item_rows, metric), "layers.png")
        log_layer_metrics(rows)
        summary = layers_.summary_metrics(rows, family)
        tracking.log_metrics(
            {**summary, **checks, "distance_mismatches": n_mismatch, "experiment_seconds": time.perf_counter() - t0}
        )
        require_identity(checks)
        print(json.dumps(summary | checks))


if __name__ == "__main__":
    tracking.entry_point(main)
