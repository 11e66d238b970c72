"""Entry point `knockout` (seed 002, phase 2): do marker -> function attention edges matter for the logits?

One teacher-forced forward pass per item of the attention corpus (Python doctests and Rust `#[test]`s) with
the edges from the test-marker tokens to the function-name (or parameter) tokens knocked out (removed before
softmax) at one layer at a time (`layers=sweep`), a list of layers (each alone), or every layer together
(`layers=all`). Metrics per sample against the baseline: KL, top-1 change and top-k overlap at the last marker
token, mean KL and top-1 change rate over every position from the marker on, and the NLL change of the code
after the marker. Control: random causally valid edges from the same queries whose baseline attention mass is
within `control_tolerance` (relative) of the knocked edges' mass at that layer condition, with the same edge count
when a draw allows it (`seeds` draws, averaged per sample); both masses are logged per row (`target_mass`,
`control_mass`) and a sample whose control could not be matched is left out of the tests (`n_control_unmatched`).
Knockout vs control is a paired design: Wilcoxon signed-rank per layer (paired t
as a secondary), BH over the layers of each metric (the declared family; primary metric `kl_last`), median
paired differences with bootstrap CIs. Identity control: the same edit path at scale 1.0 (the baseline of
every comparison) against the unhooked model, logged as `identity_max_abs_logit_diff` (must be 0).

Usage: mlflow run . -e knockout --env-manager local -P limit=8 -P layers=sweep
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import knockout_sweep as sweep
from steerkit.attention.knockout import TARGET_CHOICES, prepare_sample
from steerkit.attention.reports import plot_knockout_layers
from steerkit.core.checks import require_identity
from steerkit.core.models import load_model
from steerkit.corpora.attention_pairs import load_attention_corpus
from steerkit.stats.design import Design


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("knockout", __doc__)
    cli.add_model_args(p, threads="1")
    p.add_argument("--layers", default="sweep", help="sweep (each layer alone), all (together), or 3,5,7 (each)")
    p.add_argument("--target", default="function_name", help=", ".join(TARGET_CHOICES))
    p.add_argument("--language", default="both", help=", ".join(sweep.LANGUAGES))
    p.add_argument("--limit", default=8, help="first N test items, Python and Rust alternating (0 = all)")
    p.add_argument("--seeds", default=3, help="control draws per sample")
    p.add_argument("--control-tolerance", default=0.1, help="control mass within this fraction of the targets'")
    p.add_argument("--seed", default=0)
    p.add_argument("--k", default=10, help="top-k overlap size")
    p.add_argument("--alpha", default=0.05)
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--experiment", default="steerkit")
    cli.add_design_args(p)
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("knockout", vars(args), experiment=args.experiment):
        limit, seeds, seed = (
            cli.as_int("limit", args.limit, 0),
            cli.as_int("seeds", args.seeds, 1),
            cli.as_int("seed", args.seed),
        )
        k = cli.as_int("k", args.k, 1)
        cli.as_choice("target", args.target, TARGET_CHOICES)
        alpha = cli.as_float("alpha", args.alpha, 0.0)
        corpus = load_attention_corpus(args.corpus)
        items = sweep.select_items(corpus, args.language, limit)
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        conditions = sweep.resolve_layers(args.layers, loaded)
        # primary: knockout vs control kl_last per layer condition (paired Wilcoxon, BH over the layers)
        design = Design("kl_last", "wilcoxon_exact", len(items), family_size=len(conditions), alpha=alpha)
        tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        samples = [prepare_sample(loaded, item, args.target) for item in items]
        tolerance = cli.as_float("control_tolerance", args.control_tolerance, 0.0)
        family = ",".join(sweep.TESTED)
        tracking.log_params(
            {
                "resolved_layers": [label for label, _ in conditions],
                "hook": "attention_pre_softmax_knockout",
                "edges": f"marker tokens -> {args.target} tokens",
                "control": "same queries, random keys in [1, first marker) minus targets and marker, mass-matched",
                "n_samples": len(samples),
                "control_seeds": [seed + j for j in range(seeds)],
                "corpus_sha256": corpus.sha256,
                "test_family": f"layers ({len(conditions)}) per metric; metrics {family}; primary kl_last",
                **loaded.params(),
            }
        )
        t0 = time.perf_counter()
        log = tracking.SampleLog("knockout")
        control_seeds = [seed + j for j in range(seeds)]
        rows, checks = sweep.run_samples(loaded, samples, conditions, control_seeds, k, log, tolerance)
        layer_rows, families = sweep.summarise_layers(rows, alpha, seed)
        tracking.log_table(rows, "knockout_samples.json")
        tracking.log_table(layer_rows, "knockout_layers.json")
        tracking.log_figure(plot_knockout_layers(layer_rows), "kl_knockout_vs_control.png")
        for i, r in enumerate(layer_rows):
            step = int(r["layer"]) if r["layer"] != "all" else i
            keys = ("knockout_kl_last_median", "control_kl_last_median", "kl_last_wilcoxon_p", "kl_last_wilcoxon_q")
            tracking.log_metrics({key: r[key] for key in keys}, step=step)
        primary = [r["kl_last_wilcoxon_q"] for r in layer_rows if r["kl_last_wilcoxon_q"] is not None]
        summary = {
            **checks,
            "n_samples": len(samples),
            "n_layer_conditions": len(conditions),
            "n_control_unmatched": sum(not r["control_mass_matched"] for r in rows),
            **{f"family_size_{m}": v for m, v in families.items()},
            **{f"n_rejected_{m}": sum(bool(r[f"{m}_rejected"]) for r in layer_rows) for m in sweep.TESTED},
            "min_q_kl_last": min(primary) if primary else None,
            "experiment_seconds": time.perf_counter() - t0,
        }
        tracking.log_metrics(summary)
        require_identity(checks)
        print(
            json.dumps(
                {key: summary[key] for key in ("identity_max_abs_logit_diff", "n_samples", "n_rejected_kl_last")}
            )
        )


if __name__ == "__main__":
    tracking.entry_point(main)
