"""Entry point `generate_n50` (seed 000): does attention steering make a model keep the doc-comment test?

Baseline and steered arms run through the same code path: the baseline is the same `AttentionEdit` at scale 1.0,
bit-identical to the unhooked model. Both arms run in one pass (`core.arms.generate_arms`): each batch's prompt
prefix up to the edit's first source is computed once (the declared cut `n50_arms.declared_split`, also against a
reused baseline), each arm takes its first step apart, then the arms decode as one batch (`batch_arms=separate`: one
after another). The identity (`identity_max_abs_logit_diff`, unhooked vs scale 1.0) and `kl_last_token_*` come from
those first steps. Later runs at other scales reuse the baseline (same model, generation parameters, corpus, cut,
code). `--resume RUN_ID` continues a killed (or FAILED) run with the same params: each arm's flushed records
(`samples/<arm>.jsonl`) are kept and only the missing prompts are generated; done prompts are a prefix of the
length-sorted batch order, so the remaining batches are the ones an uninterrupted run builds and the results are
identical (metrics `<arm>_records_resumed` count what was kept). Primary
outcome: `valid_test` (the completion's own test compiles and passes against the item's reference, run in the sandbox);
`has_test` / `new_test` are secondary. Primary test: exact McNemar (paired design, family 1), declared and checked
before generation (a design that cannot reject fails unless allow_underpowered=true); Fisher's one-tailed test is kept
(the seed's design asks for it); the paired risk difference comes with a Newcombe interval. A non-zero identity fails
the run. Prompts: the `eval` split (`steerkit.corpora.splits`; scales are tuned on `calibration`). `scale=from:RUN_ID`:
the scale a calibrate_dose run chose for this edge rule, model, layer and corpus on the other split. The dose applied is
logged (`steerkit.attention.applied_dose`): the edges' attention share at the layer, baseline vs steered, and KL over
the generated positions (baseline continuation teacher-forced).

Usage: mlflow run . -e generate_n50 --env-manager local -P scale=3.0 (or scale=from:CALIBRATE_RUN_ID; resume=RUN_ID)
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import n50, n50_arms
from steerkit.attention.applied_dose import applied_dose, continuations_of
from steerkit.attention.calibrated_scale import CALIBRATION_ENTRY_POINT, CHOSEN_ARTIFACT, resolve_scale
from steerkit.attention.edge_rules import EDGE_RULES, attention_scale
from steerkit.core.checks import require_identity
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import load_model
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.corpora.splits import SPLITS, ids_digest, select_split
from steerkit.execution import sandbox_level


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("generate_n50", __doc__)
    cli.add_model_args(p)
    p.add_argument("--layer", default="auto", help="block index, or 'auto' = round(0.6 * n_layers)")
    p.add_argument("--scale", default="3.0", help="a number, or from:RUN_ID (a calibrate_dose run's choice)")
    p.add_argument("--edge-rule", default="signature_to_doctest", help=", ".join(EDGE_RULES))
    p.add_argument("--chat", default="false", help="apply the chat template (the seed did; see README)")
    p.add_argument("--max-new-tokens", default=128)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--batch-arms", default="auto", help="auto | together | separate: arms decoded as one batch")
    p.add_argument("--split", default="eval", help=", ".join(SPLITS) + " (prompts by id; tune on calibration)")
    p.add_argument("--limit", default=0, help="first N prompts of the split (0 = all)")
    p.add_argument("--seed", default=0)
    p.add_argument("--temperature", default=0.0)
    p.add_argument("--corpus", default="corpus/generation_prompts_n50.json")
    p.add_argument("--reuse-baseline", default="true")
    p.add_argument("--resume", default="none", help="id of a killed/FAILED run to continue ('none' = a new run)")
    p.add_argument("--alpha", default=0.05, help="significance level of the primary test (family of 1)")
    p.add_argument("--allow-underpowered", default="false", help="run a design that cannot reject (tagged)")
    cli.add_run_args(p)
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    resume = cli.as_resume(args.resume)
    free = ("resume", "output", "experiment")  # may differ on resume: they do not change what is computed
    with tracking.tracked_run(
        "generate_n50", vars(args), experiment=args.experiment, resume=resume, resume_ignore=free
    ):
        chat, reuse = cli.as_bool("chat", args.chat), cli.as_bool("reuse_baseline", args.reuse_baseline)
        cfg = GenerationConfig(
            max_new_tokens=cli.as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=cli.as_int("batch_size", args.batch_size, 1),
            temperature=cli.as_float("temperature", args.temperature, 0.0),
            seed=cli.as_int("seed", args.seed),
            chat=chat,
            batch_arms=args.batch_arms,
        )
        corpus = load_prompt_corpus(args.corpus)
        corpus_prompts = select_split(corpus.prompts, args.split, cli.as_int("limit", args.limit, 0))
        prompts = [cp.as_prompt() for cp in corpus_prompts]
        plan = n50.OutcomePlan.of(corpus_prompts)
        allow = cli.as_bool("allow_underpowered", args.allow_underpowered)
        tracking.log_design(plan.design(cli.as_float("alpha", args.alpha)), allow)
        level = sandbox_level()
        tracking.set_tags({**plan.tags(), "steerkit.sandbox_level": level})
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        layer = cli.as_layer("layer", args.layer, loaded)
        expect = {"model": args.model, "edge_rule": args.edge_rule, "resolved_layer": layer, "chat": chat}
        read = lambda run: tracking.phase_params_and_record(run, CALIBRATION_ENTRY_POINT, CHOSEN_ARTIFACT)  # noqa: E731
        gen = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature}
        scale, source = resolve_scale(args.scale, {**expect, "corpus_sha256": corpus.sha256}, args.split, read, gen)
        edit_1 = attention_scale(args.edge_rule, layer, 1.0)
        edit_s = attention_scale(args.edge_rule, layer, scale)
        tracking.log_new_params(  # on resume: refused if the resolved config changed (load time aside)
            {
                "resolved_layer": layer,
                "hook": "attention_post_softmax",
                "n_prompts": len(prompts),
                "split": args.split,
                "prompt_ids_digest": ids_digest([p.id for p in prompts]),
                "resolved_scale": scale,
                "scale_source": source,
                "corpus_sha256": corpus.sha256,
                "sandbox_level": level,
                **plan.params(),
                "model_load_seconds": round(loaded.load_seconds, 2),
                **loaded.params(),
            },
            ignore=("model_load_seconds",),
        )
        t0 = time.perf_counter()
        split = n50_arms.declared_split(loaded, prompts, edit_1, edit_s, chat=chat)  # the prefill cut of both arms
        key = n50.baseline_key(loaded, corpus.sha256, [p.id for p in prompts], cfg, tracking.code_version(), split)
        reused = tracking.reuse_samples("baseline", key, reuse)  # None: generated here, sharing the prefill
        logs = {a: tracking.SampleLog.open(a, bool(resume)) for a in ("baseline", "steered")[reused is not None :]}
        arms, checks = n50_arms.baseline_and_steered(loaded, prompts, edit_1, edit_s, cfg, logs, split)
        tracking.log_metrics(checks)
        require_identity(checks)
        base, steered = reused if reused is not None else arms["baseline"], arms["steered"]
        rows, summary = n50.summarise(corpus_prompts, base, steered, n50.score_validity(corpus_prompts, base, steered))
        tracking.log_table(rows, "samples.json")
        applied, dose_rows = applied_dose(
            loaded, prompts, continuations_of(base), edit_1, edit_s, layer=layer, chat=chat, batch_size=cfg.batch_size
        )
        tracking.log_table(dose_rows, "dose.json")
        checks = {**checks, **applied}
        warning = n50.ceiling_warning(summary, plan.primary)
        if warning:
            tracking.set_tags({"steerkit.ceiling": warning})
        tracking.log_metrics({**summary, **applied, "dose": scale, "experiment_seconds": time.perf_counter() - t0})
        facts = {"model": args.model, "layer": layer, "scale": scale, "scale_source": source, "split": args.split}
        facts |= {"temperature": cfg.temperature, "edge_rule": args.edge_rule, "chat": chat}
        result = {"experiment": "steering_generation_n50", **facts, "samples": rows, "primary_outcome": plan.primary}
        result["summary"] = {**summary, **checks}
        tracking.log_json(result, f"n50_scale_{scale}.json")
        if args.output:
            with open(args.output, "w") as handle:
                json.dump(result, handle, indent=2)
        keys = ["total", "n_scored", f"baseline_{plan.primary}_rate", f"steered_{plan.primary}_rate"]
        keys += ["valid_test_mcnemar_p", "baseline_preserved", "steered_preserved", "mcnemar_p", "fisher_exact_p"]
        print(json.dumps({k: summary.get(k) for k in keys} | checks | {"warning": warning}))


if __name__ == "__main__":
    tracking.entry_point(main)
