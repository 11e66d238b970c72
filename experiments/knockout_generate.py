"""Entry point `knockout_generate` (seed 002, phase 3): does the marker -> signature attention shape the doctest?

Each prompt of corpus/doctest_prompts.json is a Python signature and one-line docstring ending in `>>>`; the
model writes the doctest. Three arms, greedy, through the same generation code path: baseline (the attention
edit at scale 1.0: bit-identical to the unhooked model, checked and logged), knockout (edges from the `>>>`
marker and every later position, generated tokens included, to the function-name and parameter tokens of the
signature removed before softmax), amplify (the same edges' post-softmax weights multiplied by `amplify`, rows
renormalised), at the chosen layers. Scores per completion (steerkit.attention.doctest_scoring): valid_doctest,
calls_function, arity_matches, uses_param_names, passes (run against the reference implementation in the
sandbox, never in this process). Paired design: exact McNemar per arm vs baseline per score, paired risk
difference with a Newcombe interval, BH over the declared family (2 arms x 5 scores).

Usage: mlflow run . -e knockout_generate --env-manager local -P limit=10
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import knockout_generation as kg
from steerkit.attention.doctest_scoring import SCORES
from steerkit.attention.knockout import set_torch_threads
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
    cli.add_model_args(p)
    p.add_argument("--layers", default="all", help="all (every layer), or 16, or 10,12,14 (together)")
    p.add_argument("--amplify", default=3.0, help="scale of the amplify arm")
    p.add_argument("--max-new-tokens", default=48)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--limit", default=0, help="first N prompts (0 = all 50)")
    p.add_argument("--seed", default=0)
    p.add_argument("--workers", default=2, help="sandbox processes at a time")
    p.add_argument("--alpha", default=0.05)
    p.add_argument("--threads", default=1, help="torch intra-op threads (0 = torch default); see README")
    p.add_argument("--corpus", default="corpus/doctest_prompts.json")
    p.add_argument("--experiment", default="steerkit")
    cli.add_design_args(p)
    return p.parse_args(argv)


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
        set_torch_threads(cli.as_int("threads", args.threads, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        layers = cli.as_layer_list("layers", args.layers, loaded, every="all")
        # the declared family: every arm x every score vs baseline (McNemar exact, BH); `passes` is executed
        design = Design("passes", "mcnemar_exact", len(items), family_size=len(kg.ARMS) * len(SCORES), alpha=alpha)
        tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        sources, targets = FromPattern(kg.MARKER, occurrence="last"), kg.target_selector(loaded, items)
        edits = {
            "baseline": AttentionEdit(layers, sources, targets, "scale", 1.0),
            "knockout": AttentionEdit(layers, sources, targets, "knockout"),
            "amplify": AttentionEdit(layers, sources, targets, "scale", amplify),
        }
        tracking.log_params({
            "resolved_layers": list(layers), "hook": "attention (knockout: pre-softmax; amplify: post-softmax)",
            "edges": "from the >>> marker and every later position -> function name + parameter tokens",
            "n_prompts": len(items), "corpus_sha256": corpus.sha256, "generation": cfg.to_dict(),
            "test_family": f"{len(kg.ARMS)} arms x {len(SCORES)} scores vs baseline (McNemar exact, BH)",
            **{f"model_{k}": v for k, v in loaded.describe().items()},
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
        stats = kg.paired_stats(scored["baseline"], {a: scored[a] for a in kg.ARMS}, alpha)
        samples = [r for arm in edits for r in scored[arm]]
        tracking.log_table(samples, "generations.json")
        tracking.log_table(stats, "paired_stats.json")
        metrics: dict[str, Any] = {**checks, "n_prompts": len(items), "family_size": len(stats), "dose": amplify}
        metrics |= kg.arm_metrics(scored, stats, len(items))
        metrics |= {
            "n_rejected": sum(bool(r["rejected"]) for r in stats),
            "experiment_seconds": time.perf_counter() - t0,
        }
        tracking.log_metrics(metrics)
        shown = ("identity_max_abs_logit_diff", "baseline_passes_rate", "knockout_passes_rate", "amplify_passes_rate")
        print(json.dumps({k: metrics[k] for k in (*shown, "n_rejected")}))


if __name__ == "__main__":
    tracking.entry_point(main)
