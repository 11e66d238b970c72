"""Entry point `generate_n50` (seed 000): does attention steering make a model keep the doc-comment test?

Baseline and steered arms run through the same code path: the baseline is the same `AttentionEdit` at scale 1.0,
which is bit-identical to the unhooked model (checked and logged as `identity_max_abs_logit_diff`). The baseline
is computed once per model + generation parameters + corpus + code commit and reused by later runs at other
scales (tag `steerkit.baseline_key`). `--resume RUN_ID` continues a killed (or FAILED) run with the same params:
each arm's flushed records (`samples/<arm>.jsonl`) are kept and only the missing prompts are generated; done
prompts are a prefix of the length-sorted batch order, so the remaining batches are the ones an uninterrupted run
builds and the results are identical (metrics `<arm>_records_resumed` count what was kept). Primary test: exact
McNemar (paired design); Fisher's one-tailed test is kept because the seed's design asks for it; the paired risk
difference comes with a Newcombe interval. New tests are reported separately from copies of the prompt's own doc
test.

Usage: mlflow run . -e generate_n50 --env-manager local -P scale=3.0   (or python experiments/generate_n50.py)
Resume: python experiments/generate_n50.py <the same flags> --resume RUN_ID   (or -P resume=RUN_ID)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from typing import Any

from steerkit import tracking
from steerkit.cli import as_bool, as_float, as_int, as_layer
from steerkit.core.generation import GenerationConfig, generate, next_token_logits
from steerkit.core.models import LoadedModel, load_model
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.edge_rules import EDGE_RULES, attention_scale
from steerkit.metrics import kl_divergence, rust_test_preservation
from steerkit.stats import join_by_id, paired_binary_summary


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="generate_n50", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layer", default="auto", help="block index, or 'auto' = round(0.6 * n_layers)")
    p.add_argument("--scale", default=3.0)
    p.add_argument("--edge-rule", default="signature_to_doctest", help=", ".join(EDGE_RULES))
    p.add_argument("--chat", default="false", help="apply the chat template (the seed did; see README)")
    p.add_argument("--max-new-tokens", default=128)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--limit", default=0, help="first N prompts (0 = all)")
    p.add_argument("--seed", default=0)
    p.add_argument("--temperature", default=0.0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/generation_prompts_n50.json")
    p.add_argument("--reuse-baseline", default="true")
    p.add_argument("--resume", default="none", help="id of a killed/FAILED run to continue ('none' = a new run)")
    p.add_argument("--output", default="", help="also write the result JSON to this path")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def resolve_layer(value: str, loaded: LoadedModel) -> int:
    """A block index from a parameter: an integer in range, or 'auto' = round(0.6 * n_layers)."""
    return as_layer("layer", value, loaded)


def baseline_key(loaded: LoadedModel, corpus_sha: str, n: int, cfg: GenerationConfig) -> str:
    """Same model, corpus, generation parameters and code => the same baseline (greedy is deterministic)."""
    facts = {
        "model": loaded.describe(),
        "corpus": corpus_sha,
        "n": n,
        "gen": cfg.to_dict(),
        "code": tracking.code_version(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def identity_and_kl(
    loaded: LoadedModel, prompts: list[Any], edit_1: Any, edit_s: Any, chat: bool, batch: int
) -> dict[str, float]:
    """Max |logit diff| unhooked vs scale 1.0 (must be 0), and KL(baseline || steered) at the last prompt token."""
    plain = next_token_logits(loaded, prompts, chat=chat, batch_size=batch)
    ident = next_token_logits(loaded, prompts, interventions=[edit_1], chat=chat, batch_size=batch)
    steered = next_token_logits(loaded, prompts, interventions=[edit_s], chat=chat, batch_size=batch)
    kl = kl_divergence(ident, steered)
    return {
        "identity_max_abs_logit_diff": float((plain - ident).abs().max()),
        "kl_last_token_mean": float(kl.mean()),
        "kl_last_token_max": float(kl.max()),
    }


def run_arm(
    loaded: LoadedModel, prompts: list[Any], edit: Any, cfg: GenerationConfig, name: str, resume: bool = False
) -> list[dict]:
    """Generate one arm, flushing `samples/<name>.jsonl` per batch; `resume` keeps the run's flushed records."""
    log = tracking.SampleLog.resume(tracking.active_run_id(), name) if resume else tracking.SampleLog(name)
    done = {r["prompt_id"] for r in log.records}
    todo = [p for p in prompts if p.id not in done]
    if resume:
        tracking.log_metrics({f"{name}_records_resumed": len(log.records)})
    pending: list[dict] = []

    def on_result(gen: Any) -> None:
        log.append(gen.to_dict())
        pending.append(gen.to_dict())
        if len(pending) % cfg.batch_size == 0 or len(pending) == len(todo):
            log.flush()

    if todo:
        generate(loaded, todo, interventions=[edit], config=cfg, on_result=on_result)
    log.flush()
    order = {p.id: i for i, p in enumerate(prompts)}
    return sorted(log.records, key=lambda r: order[r["prompt_id"]])


def baseline_arm(
    loaded: LoadedModel,
    prompts: list[Any],
    edit_1: Any,
    cfg: GenerationConfig,
    key: str,
    reuse: bool,
    resume: bool = False,
) -> list[dict]:
    tracking.set_tags({"steerkit.baseline_key": key})
    found = tracking.find_finished_run({"steerkit.baseline_key": key}) if reuse else None
    if found is None:
        tracking.set_tags({"steerkit.baseline_source_run": tracking.active_run_id()})
        return run_arm(loaded, prompts, edit_1, cfg, "baseline", resume)
    records = tracking.load_jsonl_artifact(found.info.run_id, "samples/baseline.jsonl")
    tracking.set_tags({"steerkit.baseline_source_run": found.info.run_id})
    log = tracking.SampleLog("baseline")
    for record in records:
        log.append(record)
    log.flush()
    return records


def summarise(corpus_prompts: list[Any], base: list[dict], steer: list[dict]) -> tuple[list[dict], dict]:
    """Per-sample rows in corpus order, each baseline record joined to its steered record by prompt id."""
    rows = []
    pairs = join_by_id(base, steer, order=[cp.id for cp in corpus_prompts])
    for cp, (b, s) in zip(corpus_prompts, pairs):
        pb, ps = rust_test_preservation(cp.prompt, b["text"]), rust_test_preservation(cp.prompt, s["text"])
        rows.append(
            {
                "id": cp.id,
                "category": cp.category,
                "baseline_output": b["text"],
                "steered_output": s["text"],
                "baseline_tokens": b["n_tokens"],
                "steered_tokens": s["n_tokens"],
                "baseline_has_test": pb.has_test,
                "steered_has_test": ps.has_test,
                "baseline_new_test": pb.new_test,
                "steered_new_test": ps.new_test,
                "baseline_copied_test": pb.copied_test,
                "steered_copied_test": ps.copied_test,
                "baseline_stop": b["stop_reason"],
                "steered_stop": s["stop_reason"],
                "identical": b["token_ids"] == s["token_ids"],
            }
        )
    summary: dict[str, Any] = {"total": len(rows), "n_identical_outputs": sum(r["identical"] for r in rows)}
    for outcome, label in (("has_test", "preserved"), ("new_test", "new_tests")):
        summary.update(
            paired_binary_summary(
                [r[f"baseline_{outcome}"] for r in rows], [r[f"steered_{outcome}"] for r in rows], label
            )
        )
    return rows, summary


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    resume = None if args.resume.strip().lower() in ("", "none") else args.resume.strip()
    free = ("resume", "output", "experiment")  # may differ on resume: they do not change what is computed
    with tracking.tracked_run(
        "generate_n50", vars(args), experiment=args.experiment, resume=resume, resume_ignore=free
    ):
        scale = as_float("scale", args.scale, minimum=0.0)
        chat = as_bool("chat", args.chat)
        reuse = as_bool("reuse_baseline", args.reuse_baseline)
        cfg = GenerationConfig(
            max_new_tokens=as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=as_int("batch_size", args.batch_size, 1),
            temperature=as_float("temperature", args.temperature, 0.0),
            seed=as_int("seed", args.seed),
            chat=chat,
        )
        corpus = load_prompt_corpus(args.corpus)
        corpus_prompts = list(corpus.limit(as_int("limit", args.limit, 0)))
        prompts = [cp.as_prompt() for cp in corpus_prompts]
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        layer = resolve_layer(args.layer, loaded)
        edit_1 = attention_scale(args.edge_rule, layer, 1.0)
        edit_s = attention_scale(args.edge_rule, layer, scale)
        tracking.log_new_params(  # on resume: refused if the resolved config changed (load time aside)
            {
                "resolved_layer": layer,
                "hook": "attention_post_softmax",
                "n_prompts": len(prompts),
                "corpus_sha256": corpus.sha256,
                "model_load_seconds": round(loaded.load_seconds, 2),
                **{f"model_{k}": v for k, v in loaded.describe().items()},
            },
            ignore=("model_load_seconds",),
        )
        t0 = time.perf_counter()
        checks = identity_and_kl(loaded, prompts, edit_1, edit_s, chat, cfg.batch_size)
        key = baseline_key(loaded, corpus.sha256, len(prompts), cfg)
        base = baseline_arm(loaded, prompts, edit_1, cfg, key, reuse, resume is not None)
        steered = run_arm(loaded, prompts, edit_s, cfg, "steered", resume is not None)
        rows, summary = summarise(corpus_prompts, base, steered)
        tracking.log_table(rows, "samples.json")
        seconds = time.perf_counter() - t0
        tracking.log_metrics({**summary, **checks, "dose": scale, "experiment_seconds": seconds})
        result = {
            "experiment": "steering_generation_n50",
            "model": args.model,
            "layer": layer,
            "scale": scale,
            "temperature": cfg.temperature,
            "edge_rule": args.edge_rule,
            "chat": chat,
            "samples": rows,
            "summary": {**summary, **checks},
        }
        tracking.log_json(result, f"n50_scale_{scale}.json")
        if args.output:
            with open(args.output, "w") as handle:
                json.dump(result, handle, indent=2)
        keys = ("baseline_preserved", "steered_preserved", "total", "mcnemar_p", "fisher_exact_p")
        print(json.dumps({k: summary[k] for k in keys} | checks))


if __name__ == "__main__":
    tracking.entry_point(main)
