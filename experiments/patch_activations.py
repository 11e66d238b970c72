"""Entry point `patch_activations` (seed 002, phase 5): transplant Python activations into the Rust context.

For each task of the attention corpus, the Python item is the donor and the Rust item the recipient; both
prompts end right after the test marker. Per layer (a sweep by default): the residual stream (resid_post) at the
recipient's marker / function-name / parameter tokens (each span alone and all together) replaced by the
donor's at the aligned positions, and the recipient's marker attention rows given the donor's weights on the
function-name and parameter keys (definitions in steerkit.activation_patching and steerkit.interventions.position_map).
Metric: the fraction of the donor-vs-recipient logit difference recovered at the last position (and the KL
version). Identity control: the recipient patched with its own activations at every swept layer (KL must be 0;
`recovered` is then undefined, counted). Results are descriptive: medians over pairs with bootstrap 95% CIs,
no hypothesis test.

Usage: mlflow run . -e patch_activations --env-manager local -P limit=4
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

from steerkit import tracking
from steerkit.activation_patching import (
    SPANS,
    PatchScorer,
    attention_row_patch,
    encode_patch_prompt,
    pair_map,
    patched_logits,
    record_run,
    residual_patch,
)
from steerkit.cli import as_int, as_layer_list
from steerkit.core.models import LoadedModel, load_model
from steerkit.corpora.attention_pairs import load_attention_corpus
from steerkit.errors import SteerkitError
from steerkit.interventions.position_map import identity_map
from steerkit.knockout import set_torch_threads
from steerkit.metrics import kl_divergence
from steerkit.stats.compare import median_difference_ci

GROUPS = (*SPANS, "all")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="patch_activations", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", default="sweep", help="sweep (every layer) or a list, e.g. 4,12,20")
    p.add_argument("--limit", default=6, help="first N Python/Rust pairs (0 = all)")
    p.add_argument("--seed", default=0, help="bootstrap seed")
    p.add_argument("--threads", default=1, help="torch intra-op threads (0 = torch default); see README")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def resolve_layers(value: str, loaded: LoadedModel) -> tuple[int, ...]:
    """`sweep` = every layer; otherwise a comma-separated list of layers."""
    return as_layer_list("layers", value, loaded, every="sweep")


def identity_control(loaded: LoadedModel, rec_prompt: Any, recipient: Any, pmap: Any, layers: tuple[int, ...]) -> dict:
    """The recipient patched with its own residuals and attention rows at every layer: must equal the unpatched."""
    own = identity_map(pmap)
    out = {}
    for kind, patches in (
        ("residual", [residual_patch(layer, recipient, own, SPANS) for layer in layers]),
        ("attention_row", [attention_row_patch(layer, recipient, own) for layer in layers]),
    ):
        logits = patched_logits(loaded, rec_prompt, patches)
        out[f"identity_{kind}_max_abs_logit_diff"] = float((logits - recipient.logits).abs().max())
        out[f"identity_{kind}_kl"] = float(kl_divergence(recipient.logits, logits))
        scorer = PatchScorer(recipient.logits, recipient.logits)
        out[f"identity_{kind}_recovered_defined"] = not math.isnan(scorer.score(logits)["recovered"])
    return out


def run_pair(loaded: LoadedModel, donor_item: Any, rec_item: Any, layers: tuple[int, ...]) -> tuple[list[dict], dict]:
    """Every (layer, patch) of one pair: rows of scores, plus the pair's identity checks."""
    donor_prompt, rec_prompt = encode_patch_prompt(loaded, donor_item), encode_patch_prompt(loaded, rec_item)
    pmap = pair_map(donor_item, donor_prompt, rec_item, rec_prompt)
    donor, recipient = record_run(loaded, donor_prompt, layers), record_run(loaded, rec_prompt, layers)
    scorer = PatchScorer(donor.logits, recipient.logits)
    checks = identity_control(loaded, rec_prompt, recipient, pmap, layers)
    t_d, t_r = scorer.tokens
    base = {"task": rec_item.task, "donor": donor_item.id, "recipient": rec_item.id, "donor_top": t_d}
    base |= {"recipient_top": t_r, "donor_top_text": loaded.tokenizer.decode([t_d])}
    base |= {"recipient_top_text": loaded.tokenizer.decode([t_r]), "position_map": json.dumps(pmap.to_dict())}
    rows = []
    for layer in layers:
        patches: dict[tuple[str, str], Any] = {
            ("residual", g): residual_patch(layer, donor, pmap, SPANS if g == "all" else (g,)) for g in GROUPS
        }
        patches[("attention_row", "marker_row")] = attention_row_patch(layer, donor, pmap)
        for (kind, group), patch in patches.items():
            score = scorer.score(patched_logits(loaded, rec_prompt, [patch]))
            rows.append({**base, "layer": layer, "kind": kind, "group": group, **score})
    return rows, checks


def cell_table(rows: list[dict], seed: int) -> list[dict]:
    """Median `recovered` (and recovered_kl) per (layer, kind, group) over pairs, with bootstrap 95% CIs."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["layer"], r["kind"], r["group"]), []).append(r)
    out = []
    for (layer, kind, group), sel in cells.items():
        entry: dict[str, Any] = {"layer": layer, "kind": kind, "group": group, "n_pairs": len(sel)}
        for metric in ("recovered", "recovered_kl"):
            vals = [r[metric] for r in sel if not math.isnan(r[metric])]
            med, low, high = median_difference_ci(vals, seed=seed) if vals else (None, None, None)
            entry |= {f"{metric}_median": med, f"{metric}_low": low, f"{metric}_high": high, f"{metric}_n": len(vals)}
        out.append(entry)
    return out


def heatmaps(cells: list[dict], layers: tuple[int, ...]) -> Any:
    """Median recovered: layer x residual span group, and layer x {residual (all spans), attention row}."""
    import numpy as np

    from steerkit.plots import plt

    def grid(columns: list[tuple[str, str]]) -> Any:
        lookup = {(c["layer"], c["kind"], c["group"]): c["recovered_median"] for c in cells}
        values = [[lookup.get((layer, *col)) for col in columns] for layer in layers]
        return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)

    panels = [
        ("residual: span group", [("residual", g) for g in GROUPS]),
        ("residual (all spans) vs attention row", [("residual", "all"), ("attention_row", "marker_row")]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, max(4, 0.25 * len(layers) + 2)))
    for ax, (title, cols) in zip(axes, panels):
        image = ax.imshow(grid(cols), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(cols)), [g if k == "residual" else "attn row" for k, g in cols], rotation=30)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set(title=title, xlabel="patched", ylabel="layer")
    fig.colorbar(image, ax=axes, label="median fraction of logit difference recovered")
    return fig


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("patch_activations", vars(args), experiment=args.experiment):
        limit, seed = as_int("limit", args.limit, 0), as_int("seed", args.seed)
        corpus = load_attention_corpus(args.corpus)
        pairs = corpus.pairs()[:limit] if limit else corpus.pairs()
        if not pairs:
            raise SteerkitError(f"corpus {args.corpus!r} has no Python/Rust pair of test items")
        set_torch_threads(as_int("threads", args.threads, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        layers = resolve_layers(args.layers, loaded)
        tracking.log_params({
            "resolved_layers": list(layers), "hook": "resid_post; attention post-softmax rows",
            "donor": "python test item", "recipient": "rust test item of the same task",
            "prompt": "code up to the end of the first test marker", "n_pairs": len(pairs),
            "corpus_sha256": corpus.sha256, **{f"model_{k}": v for k, v in loaded.describe().items()},
        })  # fmt: skip
        t0 = time.perf_counter()
        log = tracking.SampleLog("patches")
        rows: list[dict] = []
        checks: dict[str, Any] = {}
        for donor_item, rec_item in pairs:
            pair_rows, pair_checks = run_pair(loaded, donor_item, rec_item, layers)
            for key, value in pair_checks.items():
                checks[key] = (
                    max(checks.get(key, value), value) if not isinstance(value, bool) else checks.get(key, 0) + value
                )
            for row in pair_rows:
                log.append(row)
            log.flush()
            rows += pair_rows
        cells = cell_table(rows, seed)
        tracking.log_table(rows, "patch_samples.json")
        tracking.log_table(cells, "patch_cells.json")
        tracking.log_figure(heatmaps(cells, layers), "recovered_heatmap.png")
        undefined = sum(math.isnan(r["recovered"]) for r in rows if r["layer"] == layers[0] and r["group"] == "all")
        metrics = {**checks, "n_pairs": len(pairs), "n_layers": len(layers), "pairs_with_same_top_token": undefined}
        last = [c for c in cells if c["layer"] == layers[-1] and c["kind"] == "residual" and c["group"] == "marker"]
        metrics["last_layer_marker_recovered_median"] = last[0]["recovered_median"] if last else None
        metrics["experiment_seconds"] = time.perf_counter() - t0
        tracking.log_metrics(metrics)
        print(json.dumps({k: metrics[k] for k in sorted(metrics) if k.startswith("identity") or k == "n_pairs"}))


if __name__ == "__main__":
    tracking.entry_point(main)
