"""Entry point `knockout_generate` (seed 002, phase 3): does the marker -> signature attention shape the doctest?

Each prompt of corpus/doctest_prompts.json is a Python signature and one-line docstring ending in `>>>`; the
model writes the doctest. Three arms, greedy, through the same generation code path: baseline (the attention
edit at scale 1.0: bit-identical to the unhooked model, checked and logged), knockout (edges from the `>>>`
marker and every later position, generated tokens included, to the function-name and parameter tokens of the
signature removed before softmax), control (the same queries' edges to random keys before the marker removed,
drawn per prompt to carry the targets' baseline attention mass within `control_tolerance`; both masses per prompt
in `control_edges.json`), amplify (the same edges' post-softmax weights multiplied by `amplify`, rows
renormalised), at a declared layer set: `layers=auto` (default: round(0.6 x n_layers), one layer), `from:RUN_ID`
(the single layers a `knockout` run rejected on kl_last), a list (together) or `all`. Scores per completion
(steerkit.attention.doctest_scoring): valid_doctest, calls_function, arity_matches, uses_param_names, passes
(run against the reference implementation in the sandbox, never in this process). Paired design, rows joined by
prompt id: exact McNemar per score for each arm vs baseline and for knockout vs control, paired risk difference
with a Newcombe interval, BH over the declared family (4 contrasts x 5 scores).

Usage: mlflow run . -e knockout_generate --env-manager local -P limit=10
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import knockout_generation as kg
from steerkit.attention.doctest_scoring import SCORES
from steerkit.core.checks import IDENTITY_KEY, max_abs_diff, require_identity
from steerkit.core.generation import GenerationConfig, next_token_logits
from steerkit.core.models import load_model
from steerkit.core.positions import FromPattern
from steerkit.corpora.doctests import load_doctest_prompts
from steerkit.interventions import AttentionEdit
from steerkit.metrics import kl_divergence
from steerkit.stats.design import Design


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("knockout_generate", __doc__)
    cli.add_model_args(p, threads="1")
    p.add_argument("--layers", default="auto", help="auto (0.6 x depth), from:RUN_ID (a knockout run), all, 10,12")
    p.add_argument("--control-tolerance", default=0.1, help="control mass within this fraction of the targets'")
    p.add_argument("--amplify", default=3.0, help="scale of the amplify arm")
    p.add_argument("--max-new-tokens", default=48)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--limit", default=0, help="first N prompts (0 = all 50)")
    p.add_argument("--seed", default=0)
    p.add_argument("--workers", default=2, help="sandbox processes at a time")
    p.add_argument("--alpha", default=0.05)
    p.add_argument("--corpus", default="corpus/doctest_prompts.json")
    p.add_argument("--experiment", default="steerkit")
    cli.add_design_args(p)
    return p.parse_args(argv)


def resolve_layers(value: str, loaded: Any) -> tuple[int, ...]:
    """`auto`, `from:RUN_ID` (layers a FINISHED knockout run of this model rejected), `all`, or a list."""
    if value == "auto":
        return (cli.as_layer("layers", value, loaded),)
    if value.startswith("from:"):
        expect = {"model": loaded.spec}
        rows = tracking.finished_run_table(value.removeprefix("from:"), "knockout", expect, "knockout_layers.json")
        return kg.layers_from_knockout(rows)
    return cli.as_layer_list("layers", value, loaded, every="all")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("knockout_generate", vars(args), experiment=args.experiment):
        amplify = cli.as_float("amplify", args.amplify, minimum=0.0)
        workers, alpha = cli.as_int("workers", args.workers, 1), cli.as_float("alpha", args.alpha, 0.0)
        cfg = GenerationConfig(
            max_new_tokens=cli.as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=cli.as_int("batch_size", args.batch_size, 1),
            seed=cli.as_int("seed", args.seed),
            stop_strings=('"""',),
        )
        corpus = load_doctest_prompts(args.corpus)
        items = list(corpus.limit(cli.as_int("limit", args.limit, 0)))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        layers = resolve_layers(args.layers, loaded)
        tolerance = cli.as_float("control_tolerance", args.control_tolerance, 0.0)
        # the declared family: every arm x every score vs baseline (McNemar exact, BH); `passes` is executed
        design = Design("passes", "mcnemar_exact", len(items), len(kg.CONTRASTS) * len(SCORES), alpha=alpha)
        tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        sources, targets = FromPattern(kg.MARKER, occurrence="last"), kg.target_selector(loaded, items)
        control, masses = kg.control_selector(loaded, items, targets, layers, tolerance, cli.as_int("seed", args.seed))
        tracking.log_table(masses, "control_edges.json")
        edits = {
            "baseline": AttentionEdit(layers, sources, targets, "scale", 1.0),
            "knockout": AttentionEdit(layers, sources, targets, "knockout"),
            "control": AttentionEdit(layers, sources, control, "knockout"),
            "amplify": AttentionEdit(layers, sources, targets, "scale", amplify),
        }
        tracking.log_params({
            "resolved_layers": list(layers), "hook": "attention (knockout: pre-softmax; amplify: post-softmax)",
            "edges": "from the >>> marker and every later position -> function name + parameter tokens",
            "n_prompts": len(items), "corpus_sha256": corpus.sha256, "generation": cfg.to_dict(),
            "test_family": f"{len(kg.CONTRASTS)} contrasts x {len(SCORES)} scores (McNemar exact, BH)",
            **loaded.params(),
        })  # fmt: skip
        t0 = time.perf_counter()
        prompts = [i.as_prompt() for i in items]
        plain = next_token_logits(loaded, prompts, batch_size=cfg.batch_size)
        last = {
            n: next_token_logits(loaded, prompts, interventions=[e], batch_size=cfg.batch_size)
            for n, e in edits.items()
        }
        checks = {IDENTITY_KEY: max_abs_diff(plain, last["baseline"])}
        checks |= {f"kl_last_token_mean_{a}": float(kl_divergence(last["baseline"], last[a]).mean()) for a in kg.ARMS}
        tracking.log_metrics(checks)
        require_identity(checks)
        scored = {}
        for arm, edit in edits.items():
            records = kg.run_arm(loaded, items, edit, cfg, tracking.SampleLog(arm))
            scored[arm] = kg.score_arm(items, records, arm, workers, tracking.SampleLog(f"scores_{arm}"))
        stats = kg.paired_stats(scored, alpha)
        samples = [r for arm in edits for r in scored[arm]]
        tracking.log_table(samples, "generations.json")
        tracking.log_table(stats, "paired_stats.json")
        metrics: dict[str, Any] = {**checks, "n_prompts": len(items), "family_size": len(stats), "dose": amplify}
        metrics |= kg.arm_metrics(scored, stats, len(items))
        metrics |= {
            "n_control_unmatched": sum(not r["mass_matched"] for r in masses),
            "target_mass_mean": sum(r["target_mass"] for r in masses) / len(masses),
            "control_mass_mean": sum(r["control_mass"] for r in masses) / len(masses),
            "n_rejected": sum(bool(r["rejected"]) for r in stats),
            "experiment_seconds": time.perf_counter() - t0,
        }
        tracking.log_metrics(metrics)
        shown = ("identity_max_abs_logit_diff", "baseline_passes_rate", "knockout_passes_rate", "amplify_passes_rate")
        print(json.dumps({k: metrics[k] for k in (*shown, "n_rejected")}))


if __name__ == "__main__":
    tracking.entry_point(main)
