"""Entry point `sweep_scales`: grid search over the generate_n50 attention scale, one nested run per trial.

A worked use of `steerkit.search`: the study runs under this entry point's MLflow run, every grid point is a
nested child run holding its per-sample table (`samples.json`, the generate_n50 format, so `compare_runs
-P entry_point=sweep_scales_trial` can test the trials), and Optuna's plots land on the parent. Objective: the
steered arm's new-test rate minus the baseline's, on the same prompts (`steerkit.attention.n50.NewTestGain`, the
generate_n50 code). The baseline is generated once (or reused from any finished run with the same model, corpus,
generation parameters, prefill cut and code) and shared by all trials; the grid should contain 1.0, the identity
control, whose objective must be 0, and a non-zero identity figure fails the run. With no pruner, every grid scale
(and the baseline when not reused) is generated before the study in one pass that computes each batch's prompt
prefix once (`NewTestGain.pregenerate`); each trial reads its scale's records and takes its identity and KL figures
from that pass's first-step logits. With a pruner, trials generate chunk by chunk; every arm takes the same
declared prefill cut either way, so the outputs are the same. The prompts are the `calibration` split
(`steerkit.corpora.splits`, by prompt id): select a scale here, report it with generate_n50 on the `eval` split.
Design, declared before generating: exact McNemar on new_test per steered scale, BH over the grid's scales other
than 1.0 (a design that cannot reject fails unless allow_underpowered=true). Each trial logs its applied dose.

Usage: mlflow run . -e sweep_scales --env-manager local -P grid=1.0,2.0,3.0
"""

from __future__ import annotations

import json
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import n50
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import load_model
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.corpora.splits import SPLITS, ids_digest, select_split
from steerkit.search import StudyConfig, redact_storage, run_study, study_name

TRIAL_ENTRY_POINT = "sweep_scales_trial"


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("sweep_scales", __doc__)
    cli.add_model_args(p)
    p.add_argument("--layer", default="auto")
    p.add_argument("--edge-rule", default="signature_to_doctest")
    p.add_argument("--grid", default="1.0,2.0,3.0", help="comma-separated scales (include 1.0, the identity)")
    p.add_argument("--split", default="calibration", help=", ".join(SPLITS) + " (prompts by id)")
    p.add_argument("--limit", default=8, help="first N prompts of the split")
    p.add_argument("--max-new-tokens", default=48)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--seed", default=0, help="sampler seed (grid order) and generation seed")
    p.add_argument("--corpus", default="corpus/generation_prompts_n50.json")
    p.add_argument("--study-name", default="auto", help="'auto' = n50-scale-<model>-L<layer>-<hash of the settings>")
    p.add_argument("--storage", default="default", help="Optuna storage URL ('default' = ~/.steerkit/optuna.db)")
    p.add_argument("--pruner", default="none", help="none | wilcoxon (per-prompt gains, checked every batch)")
    p.add_argument("--prune-p", default=0.1, help="WilcoxonPruner p threshold")
    p.add_argument("--alpha", default=0.05, help="false discovery rate over the steered scales")
    cli.add_design_args(p)
    cli.add_run_args(p, output=False)
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("sweep_scales", vars(args), experiment=args.experiment):
        grid = cli.as_float_list("grid", args.grid, minimum=0.0)
        seed = cli.as_int("seed", args.seed)
        cfg = GenerationConfig(
            max_new_tokens=cli.as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=cli.as_int("batch_size", args.batch_size, 1),
            seed=seed,
        )
        corpus = load_prompt_corpus(args.corpus)
        corpus_prompts = select_split(corpus.prompts, args.split, cli.as_int("limit", args.limit, 1))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        layer = cli.as_layer("layer", args.layer, loaded)
        entry = {tracking.TAG_ENTRY_POINT: TRIAL_ENTRY_POINT}
        record = tracking.recorder(entry, {"resolved_layer": layer, "n_prompts": len(corpus_prompts)}, "samples.json")
        objective = n50.NewTestGain(
            loaded, corpus_prompts, cfg, layer, args.edge_rule, grid, lambda: tracking.SampleLog("steered"), record
        )
        allow = cli.as_bool("allow_underpowered", args.allow_underpowered)
        tracking.log_design(objective.design(cli.as_float("alpha", args.alpha)), allow)
        ids = [p.id for p in corpus_prompts]  # the declared prefill cut (objective.split) is in the key
        key = n50.baseline_key(loaded, corpus.sha256, ids, cfg, tracking.code_version(), objective.split)
        reused = tracking.reuse_samples("baseline", key, True)  # None: generated here
        facts = {"baseline": key, "layer": layer, "edge_rule": args.edge_rule}
        config = StudyConfig(
            study_name=study_name(args.study_name, "n50-scale", facts, label=[loaded.spec, f"L{layer}"]),
            storage=args.storage,
            sampler="grid",
            search_space={"scale": grid},
            seed=seed,
            pruner=args.pruner,  # StudyConfig names a bad value
            prune_p=cli.as_float("prune_p", args.prune_p, minimum=0.0),
        )
        objective.prune_every = cfg.batch_size if config.pruner != "none" else 0
        objective.base = reused or []  # pruner none: every grid scale (+ the baseline) in one shared-prefix pass
        objective.pregenerate(None if reused is not None else tracking.SampleLog("baseline"), config.pruner == "none")
        digest = ids_digest([p.id for p in corpus_prompts])
        tracking.log_params(
            {"resolved_layer": layer, "resolved_study_name": config.study_name, "prompt_ids_digest": digest}
            | loaded.params()
        )
        study = run_study(objective, config, metric_names=["new_test_rate_gain"])
        best = study.best_trial
        tracking.log_metrics({"best_value": best.value, "best_scale": best.params["scale"]})
        tracking.log_params({"resolved_storage": redact_storage(config.storage)})
        print(json.dumps({"study": config.study_name, "best_scale": best.params["scale"], "best_value": best.value}))


if __name__ == "__main__":
    tracking.entry_point(main)
