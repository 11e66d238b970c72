"""Entry point `knockout` (seed 002, phase 2): do marker -> function attention edges matter for the logits?

One teacher-forced forward pass per item of the attention corpus (Python doctests and Rust `#[test]`s) with
the edges from the test-marker tokens to the function-name (or parameter) tokens knocked out (removed before
softmax) at one layer at a time (`layers=sweep`), a list of layers (each alone), or every layer together
(`layers=all`). Metrics per sample against the baseline: KL, top-1 change and top-k overlap at the last marker
token, mean KL and top-1 change rate over every position from the marker on, and the NLL change of the code
after the marker. Control: the same number of random causally valid edges from the same queries (`seeds`
draws, averaged per sample). Knockout vs control is a paired design: Wilcoxon signed-rank per layer (paired t
as a secondary), BH over the layers of each metric (the declared family; primary metric `kl_last`), median
paired differences with bootstrap CIs. Identity control: the same edit path at scale 1.0 (the baseline of
every comparison) against the unhooked model, logged as `identity_max_abs_logit_diff` (must be 0).

Usage: mlflow run . -e knockout --env-manager local -P limit=8 -P layers=sweep
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from steerkit import tracking
from steerkit.cli import as_float, as_int
from steerkit.core.models import LoadedModel, load_model
from steerkit.corpora.attention_pairs import load_attention_corpus
from steerkit.errors import SteerkitError
from steerkit.knockout import (
    TARGET_CHOICES,
    KnockoutSample,
    control_keys,
    knockout_edit,
    layer_tests,
    prepare_sample,
    sample_metrics,
    set_torch_threads,
    tail_logits,
)
from steerkit.metrics import kl_divergence
from steerkit.stats.compare import median_difference_ci

METRICS = ("kl_last", "kl_mean", "nll_delta", "top1_changed_last", "topk_overlap_last", "top1_changed_frac")
TESTED = ("kl_last", "kl_mean", "nll_delta")  # one BH family (over layers) each; kl_last is primary
LANGUAGES = ("python", "rust", "both")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="knockout", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", default="sweep", help="sweep (each layer alone), all (together), or 3,5,7 (each)")
    p.add_argument("--target", default="function_name", help=", ".join(TARGET_CHOICES))
    p.add_argument("--language", default="both", help=", ".join(LANGUAGES))
    p.add_argument("--limit", default=8, help="first N test items, Python and Rust alternating (0 = all)")
    p.add_argument("--seeds", default=3, help="control draws per sample")
    p.add_argument("--seed", default=0)
    p.add_argument("--k", default=10, help="top-k overlap size")
    p.add_argument("--alpha", default=0.05)
    p.add_argument("--threads", default=1, help="torch intra-op threads (0 = torch default); see README")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


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
    controls: list[tuple[int, ...]],
    k: int,
) -> tuple[list[dict], dict[str, float]]:
    """Every layer condition for one sample: one row per condition, plus the identity check.

    The baseline is the same edit path at scale 1.0 on the knocked edges (all swept layers at once); it is
    compared with the unhooked model (`identity_*`, must be 0).
    """
    all_layers = tuple(sorted({x for _, layers in conditions for x in layers}))
    plain, base = tail_logits(loaded, sample, [[], [knockout_edit(sample, all_layers, sample.targets, "scale", 1.0)]])
    checks = {
        "identity_max_abs_logit_diff": float((plain - base).abs().max()),
        "identity_kl_max": float(kl_divergence(plain, base).max()),
    }
    rows = []
    for label, layers in conditions:
        edits = [[knockout_edit(sample, layers, keys)] for keys in (sample.targets, *controls)]
        knocked, *ctrl = tail_logits(loaded, sample, edits)
        ko = sample_metrics(sample, base, knocked, k)
        cs = [sample_metrics(sample, base, c, k) for c in ctrl]
        row: dict[str, Any] = {"id": sample.id, "task": sample.item.task, "language": sample.item.language}
        row |= {"layer": label, "n_sources": len(sample.sources), "n_targets": len(sample.targets)}
        row |= {"targets": list(sample.targets), "nll_base": ko["nll_base"]}
        row |= {f"knockout_{m}": ko[m] for m in METRICS}
        row |= {f"control_{m}": sum(c[m] for c in cs) / len(cs) for m in METRICS}
        rows.append(row)
    return rows, checks


def summarise_layers(rows: list[dict], alpha: float, seed: int) -> tuple[list[dict], dict[str, int]]:
    """Per-layer table: medians per arm with CIs, and the paired test of each tested metric (BH per metric)."""
    table: dict[str, dict[str, Any]] = {}
    families = {}
    for metric in TESTED:
        tests, size = layer_tests(rows, metric, alpha=alpha, seed=seed)
        families[metric] = size
        for t in tests:
            entry = table.setdefault(t["layer"], {"layer": t["layer"], "n": t["n"]})
            entry |= {f"{metric}_{k}": v for k, v in t.items() if k not in ("layer", "metric", "n")}
    for label, entry in table.items():
        sel = [r for r in rows if r["layer"] == label]
        for arm in ("knockout", "control"):
            med, low, high = median_difference_ci([r[f"{arm}_kl_last"] for r in sel], seed=seed)
            entry |= {f"{arm}_kl_last_median": med, f"{arm}_kl_last_low": low, f"{arm}_kl_last_high": high}
            entry[f"{arm}_top1_changed_last_rate"] = sum(r[f"{arm}_top1_changed_last"] for r in sel) / len(sel)
        for lang in ("python", "rust"):
            vals = [r["knockout_kl_last"] for r in sel if r["language"] == lang]
            entry[f"knockout_kl_last_median_{lang}"] = statistics.median(vals) if vals else None
    return list(table.values()), families


def plot_layers(layer_rows: list[dict]) -> Any:
    """Median KL at the last marker token per layer, knockout vs control, with bootstrap 95% CIs."""
    from steerkit.plots import plt

    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(layer_rows) + 3), 4))
    xs = list(range(len(layer_rows)))
    for arm, shift in (("knockout", -0.15), ("control", 0.15)):
        ys = [r[f"{arm}_kl_last_median"] for r in layer_rows]
        err = [[y - r[f"{arm}_kl_last_low"] for y, r in zip(ys, layer_rows)],
               [r[f"{arm}_kl_last_high"] - y for y, r in zip(ys, layer_rows)]]  # fmt: skip
        ax.errorbar([x + shift for x in xs], ys, yerr=err, fmt="o", capsize=3, label=f"{arm} (median, 95% CI)")
    ax.set_xticks(xs, [str(r["layer"]) for r in layer_rows])
    ax.set_yscale("symlog", linthresh=1e-6)  # KL spans orders of magnitude across layers
    ax.set(xlabel="layer", ylabel="KL(baseline || edited) at the marker", title="knockout vs random-edge control")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("knockout", vars(args), experiment=args.experiment):
        limit, seeds, seed = as_int("limit", args.limit, 0), as_int("seeds", args.seeds, 1), as_int("seed", args.seed)
        k = as_int("k", args.k, 1)
        alpha = as_float("alpha", args.alpha, 0.0)
        corpus = load_attention_corpus(args.corpus)
        items = select_items(corpus, args.language, limit)
        set_torch_threads(as_int("threads", args.threads, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        conditions = resolve_layers(args.layers, loaded)
        samples = [prepare_sample(loaded, item, args.target) for item in items]
        controls = {s.id: [control_keys(s, seed + j) for j in range(seeds)] for s in samples}
        tracking.log_params(
            {
                "resolved_layers": [label for label, _ in conditions],
                "hook": "attention_pre_softmax_knockout",
                "edges": f"marker tokens -> {args.target} tokens",
                "control": "same queries, random keys in [1, first marker) minus targets and marker",
                "n_samples": len(samples),
                "control_seeds": [seed + j for j in range(seeds)],
                "corpus_sha256": corpus.sha256,
                "test_family": f"layers ({len(conditions)}) per metric; metrics {','.join(TESTED)}; primary kl_last",
                **{f"model_{key}": v for key, v in loaded.describe().items()},
            }
        )
        t0 = time.perf_counter()
        log = tracking.SampleLog("knockout")
        rows: list[dict] = []
        checks = {"identity_max_abs_logit_diff": 0.0, "identity_kl_max": 0.0}
        for sample in samples:
            sample_rows, sample_checks = run_sample(loaded, sample, conditions, controls[sample.id], k)
            checks = {key: max(checks[key], sample_checks[key]) for key in checks}
            for row in sample_rows:
                log.append(row)
            log.flush()
            rows += sample_rows
        layer_rows, families = summarise_layers(rows, alpha, seed)
        tracking.log_table(rows, "knockout_samples.json")
        tracking.log_table(layer_rows, "knockout_layers.json")
        tracking.log_figure(plot_layers(layer_rows), "kl_knockout_vs_control.png")
        for i, r in enumerate(layer_rows):
            step = int(r["layer"]) if r["layer"] != "all" else i
            keys = ("knockout_kl_last_median", "control_kl_last_median", "kl_last_wilcoxon_p", "kl_last_wilcoxon_q")
            tracking.log_metrics({key: r[key] for key in keys}, step=step)
        primary = [r["kl_last_wilcoxon_q"] for r in layer_rows if r["kl_last_wilcoxon_q"] is not None]
        summary = {
            **checks,
            "n_samples": len(samples),
            "n_layer_conditions": len(conditions),
            **{f"family_size_{m}": v for m, v in families.items()},
            **{f"n_rejected_{m}": sum(bool(r[f"{m}_rejected"]) for r in layer_rows) for m in TESTED},
            "min_q_kl_last": min(primary) if primary else None,
            "experiment_seconds": time.perf_counter() - t0,
        }
        tracking.log_metrics(summary)
        print(
            json.dumps(
                {key: summary[key] for key in ("identity_max_abs_logit_diff", "n_samples", "n_rejected_kl_last")}
            )
        )


if __name__ == "__main__":
    tracking.entry_point(main)
