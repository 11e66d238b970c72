"""Entry point `patch_activations` (seed 002, phase 5): transplant Python activations into the Rust context.

For each task of the attention corpus, the Python item is the donor and the Rust item the recipient; both
prompts end right after the test marker. Per layer (a sweep by default): the residual stream (resid_post) at the
recipient's marker / function-name / parameter tokens (each span alone and all together) replaced by the
donor's at the aligned positions, and the recipient's marker attention rows given the donor's weights on the
function-name and parameter keys (definitions in steerkit.attention.patching and steerkit.interventions.position_map).
Metric: the fraction of the donor-vs-recipient logit difference recovered at the last position (and the KL
version). Identity control: the recipient patched with its own activations at every swept layer (KL must be 0;
`recovered` is then undefined, counted). Results are descriptive: medians over pairs with bootstrap 95% CIs,
no hypothesis test.

Usage: mlflow run . -e patch_activations --env-manager local -P limit=4
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import patch_sweep
from steerkit.attention.reports import plot_patch_heatmaps
from steerkit.core.checks import require_identity
from steerkit.core.models import load_model
from steerkit.corpora.attention_pairs import load_attention_corpus
from steerkit.errors import SteerkitError


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("patch_activations", __doc__)
    cli.add_model_args(p, threads="1")
    p.add_argument("--layers", default="sweep", help="sweep (every layer) or a list, e.g. 4,12,20")
    p.add_argument("--limit", default=6, help="first N Python/Rust pairs (0 = all)")
    p.add_argument("--seed", default=0, help="bootstrap seed")
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("patch_activations", vars(args), experiment=args.experiment):
        limit, seed = cli.as_int("limit", args.limit, 0), cli.as_int("seed", args.seed)
        corpus = load_attention_corpus(args.corpus)
        pairs = corpus.pairs()[:limit] if limit else corpus.pairs()
        if not pairs:
            raise SteerkitError(f"corpus {args.corpus!r} has no Python/Rust pair of test items")
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        layers = cli.as_layer_list("layers", args.layers, loaded, every="sweep")
        tracking.log_params({
            "resolved_layers": list(layers), "hook": "resid_post; attention post-softmax rows",
            "donor": "python test item", "recipient": "rust test item of the same task",
            "prompt": "code up to the end of the first test marker", "n_pairs": len(pairs),
            "corpus_sha256": corpus.sha256, **loaded.params(),
        })  # fmt: skip
        t0 = time.perf_counter()
        log = tracking.SampleLog("patches")
        rows, checks = patch_sweep.run_pairs(loaded, pairs, layers, log)
        cells = patch_sweep.cell_table(rows, seed)
        tracking.log_table(rows, "patch_samples.json")
        tracking.log_table(cells, "patch_cells.json")
        tracking.log_figure(plot_patch_heatmaps(cells, layers, patch_sweep.GROUPS), "recovered_heatmap.png")
        undefined = sum(math.isnan(r["recovered"]) for r in rows if r["layer"] == layers[0] and r["group"] == "all")
        metrics = {**checks, "n_pairs": len(pairs), "n_layers": len(layers), "pairs_with_same_top_token": undefined}
        last = [c for c in cells if c["layer"] == layers[-1] and c["kind"] == "residual" and c["group"] == "marker"]
        metrics["last_layer_marker_recovered_median"] = last[0]["recovered_median"] if last else None
        metrics["experiment_seconds"] = time.perf_counter() - t0
        tracking.log_metrics(metrics)
        require_identity(checks)
        print(json.dumps({k: metrics[k] for k in sorted(metrics) if k.startswith("identity") or k == "n_pairs"}))


if __name__ == "__main__":
    tracking.entry_point(main)
