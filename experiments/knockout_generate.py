"""Entry point `knockout_generate` (seed 002, phase 3): does the marker -> signature attention shape the doctest?

Each prompt of corpus/doctest_prompts.json is a Python signature and one-line docstring ending in `>>>`; the
model writes the doctest. Three arms, greedy, through the same generation code path: baseline (the attention
edit at scale 1.0: bit-identical to the unhooked model, checked and logged), knockout (edges from the `>>>`
marker and every later position, generated tokens included, to the function-name and parameter tokens of the
signature removed before softmax), amplify (the same edges' post-softmax weights multiplied by `amplify`, rows
renormalised), at the chosen layers. Scores per completion (steerkit.doctest_scoring): valid_doctest,
calls_function, arity_matches, uses_param_names, passes (run against the reference implementation in the
sandbox, never in this process). Paired design: exact McNemar per arm vs baseline per score, paired risk
difference with a Newcombe interval, BH over the declared family (2 arms x 5 scores).

Usage: mlflow run . -e knockout_generate --env-manager local -P limit=10
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from steerkit import tracking
from steerkit.cli import as_float, as_int, as_layer_list
from steerkit.core.generation import GenerationConfig, encode_prompts, generate, next_token_logits
from steerkit.core.models import LoadedModel, load_model
from steerkit.core.positions import Explicit, FromPattern, PerPrompt, Selector
from steerkit.corpora.doctests import DoctestPrompt, load_doctest_prompts
from steerkit.doctest_scoring import SCORES, run_passes, score_static
from steerkit.interventions import AttentionEdit
from steerkit.knockout import set_torch_threads
from steerkit.metrics import kl_divergence
from steerkit.stats import benjamini_hochberg, mcnemar_exact, paired_outcomes, paired_risk_difference

MARKER = r">>>"
ARMS = ("knockout", "amplify")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="knockout_generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", default="all", help="all (every layer), or 16, or 10,12,14 (together)")
    p.add_argument("--amplify", default=3.0, help="scale of the amplify arm")
    p.add_argument("--max-new-tokens", default=48)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--limit", default=0, help="first N prompts (0 = all 50)")
    p.add_argument("--seed", default=0)
    p.add_argument("--workers", default=2, help="sandbox processes at a time")
    p.add_argument("--alpha", default=0.05)
    p.add_argument("--threads", default=1, help="torch intra-op threads (0 = torch default); see README")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/doctest_prompts.json")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def resolve_layers(value: str, loaded: LoadedModel) -> tuple[int, ...]:
    """`all` = every layer; otherwise a comma-separated list of layers."""
    return as_layer_list("layers", value, loaded, every="all")


def target_selector(loaded: LoadedModel, items: list[DoctestPrompt]) -> PerPrompt:
    """Per prompt: the tokens of the function name and of every parameter name in the signature."""
    encoded = encode_prompts(loaded, [i.as_prompt() for i in items], chat=False)
    by_id: dict[str, Selector] = {}
    for item, enc in zip(items, encoded):
        spans = [s for group in item.target_spans().values() for s in group]
        tokens = sorted({t for a, b in spans for t in enc.char_span_tokens(a, b)})
        by_id[item.id] = Explicit(tuple(tokens))
    return PerPrompt.of(by_id)


def run_arm(loaded: LoadedModel, items: list[DoctestPrompt], edit: Any, cfg: GenerationConfig, name: str) -> list[dict]:
    """Generate one arm, writing each completion as its batch finishes; records in corpus order."""
    log = tracking.SampleLog(name)

    def on_result(gen: Any) -> None:
        log.append(gen.to_dict())
        if len(log.records) % cfg.batch_size == 0 or len(log.records) == len(items):
            log.flush()

    generate(loaded, [i.as_prompt() for i in items], interventions=[edit], config=cfg, on_result=on_result)
    by_id = {r["prompt_id"]: r for r in log.records}
    return [by_id[i.id] for i in items]


def score_arm(items: list[DoctestPrompt], records: list[dict], arm: str, workers: int) -> list[dict]:
    """Static scores, then `passes` from the sandbox; one row per item, appended to `samples/scores_<arm>`."""
    static = [score_static(item, rec["text"]) for item, rec in zip(items, records)]
    passes = run_passes(items, static, workers=workers)
    log = tracking.SampleLog(f"scores_{arm}")
    rows = []
    for item, rec, score, (passed, result) in zip(items, records, static, passes):
        row = {"id": item.id, "arm": arm, "text": rec["text"], "n_tokens": rec["n_tokens"], **score.to_dict()}
        row |= {"passes": passed, "sandbox_status": result.status if result else None}
        row |= {"sandbox_error": result.error_kind if result else None}
        row.pop("examples")
        log.append(row)
        rows.append(row)
    log.flush()
    return rows


def paired_stats(base: list[dict], arms: dict[str, list[dict]], alpha: float) -> list[dict]:
    """McNemar (exact) and the paired risk difference per (arm, score) vs baseline; BH over all of them."""
    out: list[dict[str, Any]] = []
    for arm, rows in arms.items():
        for score in SCORES:
            b_flags, a_flags = [bool(r[score]) for r in base], [bool(r[score]) for r in rows]
            counts = paired_outcomes(b_flags, a_flags)
            rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
            out.append({
                "arm": arm, "score": score, "n": counts.n, "baseline_rate": sum(b_flags) / counts.n,
                "arm_rate": sum(a_flags) / counts.n, "b": counts.b, "c": counts.c,
                "mcnemar_p": mcnemar_exact(counts.b, counts.c).p_value,
                "risk_difference": rd.estimate, "rd_low": rd.low, "rd_high": rd.high,
            })  # fmt: skip
    bh = benjamini_hochberg([r["mcnemar_p"] for r in out], alpha=alpha)
    for r, q, rej in zip(out, bh.q_values, bh.rejected):
        r["q_value"], r["rejected"] = q, rej
    return out


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("knockout_generate", vars(args), experiment=args.experiment):
        amplify = as_float("amplify", args.amplify, minimum=0.0)
        workers, alpha = as_int("workers", args.workers, 1), as_float("alpha", args.alpha, 0.0)
        cfg = GenerationConfig(
            max_new_tokens=as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=as_int("batch_size", args.batch_size, 1),
            seed=as_int("seed", args.seed),
            stop_strings=('"""',),
        )
        corpus = load_doctest_prompts(args.corpus)
        items = list(corpus.limit(as_int("limit", args.limit, 0)))
        set_torch_threads(as_int("threads", args.threads, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        layers = resolve_layers(args.layers, loaded)
        sources, targets = FromPattern(MARKER, occurrence="last"), target_selector(loaded, items)
        edits = {
            "baseline": AttentionEdit(layers, sources, targets, "scale", 1.0),
            "knockout": AttentionEdit(layers, sources, targets, "knockout"),
            "amplify": AttentionEdit(layers, sources, targets, "scale", amplify),
        }
        tracking.log_params({
            "resolved_layers": list(layers), "hook": "attention (knockout: pre-softmax; amplify: post-softmax)",
            "edges": "from the >>> marker and every later position -> function name + parameter tokens",
            "n_prompts": len(items), "corpus_sha256": corpus.sha256, "generation": cfg.to_dict(),
            "test_family": f"{len(ARMS)} arms x {len(SCORES)} scores vs baseline (McNemar exact, BH)",
            **{f"model_{k}": v for k, v in loaded.describe().items()},
        })  # fmt: skip
        t0 = time.perf_counter()
        prompts = [i.as_prompt() for i in items]
        plain = next_token_logits(loaded, prompts, batch_size=cfg.batch_size)
        last = {
            n: next_token_logits(loaded, prompts, interventions=[e], batch_size=cfg.batch_size)
            for n, e in edits.items()
        }
        checks = {"identity_max_abs_logit_diff": float((plain - last["baseline"]).abs().max())}
        checks |= {f"kl_last_token_mean_{a}": float(kl_divergence(last["baseline"], last[a]).mean()) for a in ARMS}
        scored = {}
        for arm, edit in edits.items():
            records = run_arm(loaded, items, edit, cfg, arm)
            scored[arm] = score_arm(items, records, arm, workers)
        stats = paired_stats(scored["baseline"], {a: scored[a] for a in ARMS}, alpha)
        samples = [r for arm in edits for r in scored[arm]]
        tracking.log_table(samples, "generations.json")
        tracking.log_table(stats, "paired_stats.json")
        metrics: dict[str, Any] = {**checks, "n_prompts": len(items), "family_size": len(stats), "dose": amplify}
        for arm in edits:
            metrics |= {f"{arm}_{s}_rate": sum(bool(r[s]) for r in scored[arm]) / len(items) for s in SCORES}
            metrics[f"{arm}_identical_to_baseline"] = sum(
                a["text"] == b["text"] for a, b in zip(scored[arm], scored["baseline"])
            )
        for r in stats:
            key = f"{r['arm']}.{r['score']}"
            metrics |= {f"{key}.mcnemar_p": r["mcnemar_p"], f"{key}.q": r["q_value"], f"{key}.rd": r["risk_difference"]}
        metrics |= {
            "n_rejected": sum(bool(r["rejected"]) for r in stats),
            "experiment_seconds": time.perf_counter() - t0,
        }
        tracking.log_metrics(metrics)
        shown = ("identity_max_abs_logit_diff", "baseline_passes_rate", "knockout_passes_rate", "amplify_passes_rate")
        print(json.dumps({k: metrics[k] for k in (*shown, "n_rejected")}))


if __name__ == "__main__":
    tracking.entry_point(main)
