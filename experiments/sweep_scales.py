"""Entry point `sweep_scales`: grid search over the generate_n50 attention scale, one nested run per trial.

A worked use of `steerkit.search`: the study runs under this entry point's MLflow run, every grid point is a
nested child run holding its per-sample table (`samples.json`, the generate_n50 format, so `compare_runs
-P entry_point=sweep_scales_trial` can test the trials), and Optuna's plots land on the parent. Objective: the
steered arm's new-test rate minus the baseline's, on the same prompts. The baseline is generated once (or reused
from any finished run with the same model, corpus, generation parameters and code) and shared by all trials;
the grid should contain 1.0, the identity control, whose objective must be 0. The generation code is
`experiments/generate_n50.py`'s, imported, not copied. Keep the defaults tiny: this is a demonstration sweep;
select a scale here and report it on other prompts.

Usage: mlflow run . -e sweep_scales --env-manager local -P grid=1.0,2.0,3.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate_n50  # noqa: E402

from steerkit import tracking  # noqa: E402
from steerkit.cli import as_float, as_float_list, as_int  # noqa: E402
from steerkit.core.generation import GenerationConfig  # noqa: E402
from steerkit.core.models import load_model  # noqa: E402
from steerkit.corpora.prompts import load_prompt_corpus  # noqa: E402
from steerkit.edge_rules import attention_scale  # noqa: E402
from steerkit.search import StudyConfig, run_study  # noqa: E402

TRIAL_ENTRY_POINT = "sweep_scales_trial"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sweep_scales", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layer", default="auto")
    p.add_argument("--edge-rule", default="signature_to_doctest")
    p.add_argument("--grid", default="1.0,2.0,3.0", help="comma-separated scales (include 1.0, the identity)")
    p.add_argument("--limit", default=8, help="first N prompts")
    p.add_argument("--max-new-tokens", default=48)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--seed", default=0, help="sampler seed (grid order) and generation seed")
    p.add_argument("--corpus", default="corpus/generation_prompts_n50.json")
    p.add_argument("--study-name", default="auto", help="'auto' = sweep_scales-<hash of the fixed settings>")
    p.add_argument("--storage", default="sqlite:///optuna.db", help="Optuna storage URL (PostgreSQL for workers)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


class ScaleObjective:
    """Objective for one trial: steered new-test rate minus the (shared) baseline's, logged in the trial run."""

    def __init__(self, loaded: Any, corpus_prompts: list[Any], cfg: GenerationConfig, args: argparse.Namespace):
        self.loaded, self.corpus_prompts, self.cfg, self.args = loaded, corpus_prompts, cfg, args
        self.prompts = [cp.as_prompt() for cp in corpus_prompts]
        self.layer = generate_n50.resolve_layer(args.layer, loaded)
        self.edit_1 = attention_scale(args.edge_rule, self.layer, 1.0)
        self.base: list[dict] = []

    def __call__(self, trial: Any) -> float:
        grid = as_float_list("grid", self.args.grid)
        scale = trial.suggest_float("scale", min(grid), max(grid))
        edit_s = attention_scale(self.args.edge_rule, self.layer, scale)
        tracking.set_tags({tracking.TAG_ENTRY_POINT: TRIAL_ENTRY_POINT})
        tracking.log_params({"resolved_layer": self.layer, "n_prompts": len(self.prompts)})
        checks = generate_n50.identity_and_kl(
            self.loaded, self.prompts, self.edit_1, edit_s, False, self.cfg.batch_size
        )
        steered = generate_n50.run_arm(self.loaded, self.prompts, edit_s, self.cfg, "steered")
        rows, summary = generate_n50.summarise(self.corpus_prompts, self.base, steered)
        tracking.log_table(rows, "samples.json")
        tracking.log_metrics({**summary, **checks, "dose": scale})
        trial.set_user_attr("new_tests_mcnemar_p", summary["new_tests_mcnemar_p"])
        trial.set_user_attr("steered_new_tests", summary["steered_new_tests"])
        return (summary["steered_new_tests"] - summary["baseline_new_tests"]) / summary["total"]


def study_name(args: argparse.Namespace, key: str, layer: int) -> str:
    """'auto' names the study after everything fixed across its trials, so a changed setting starts afresh."""
    if args.study_name != "auto":
        return str(args.study_name)
    facts = json.dumps({"baseline": key, "layer": layer, "edge_rule": args.edge_rule}, sort_keys=True)
    return f"sweep_scales-{hashlib.sha256(facts.encode()).hexdigest()[:12]}"


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("sweep_scales", vars(args), experiment=args.experiment):
        grid = as_float_list("grid", args.grid)
        for value in grid:
            as_float("grid", value, minimum=0.0)
        seed = as_int("seed", args.seed)
        cfg = GenerationConfig(
            max_new_tokens=as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=as_int("batch_size", args.batch_size, 1),
            seed=seed,
        )
        corpus = load_prompt_corpus(args.corpus)
        corpus_prompts = list(corpus.limit(as_int("limit", args.limit, 1)))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        objective = ScaleObjective(loaded, corpus_prompts, cfg, args)
        key = generate_n50.baseline_key(loaded, corpus.sha256, len(corpus_prompts), cfg)
        objective.base = generate_n50.baseline_arm(loaded, objective.prompts, objective.edit_1, cfg, key, True)
        config = StudyConfig(
            study_name=study_name(args, key, objective.layer),
            storage=args.storage,
            sampler="grid",
            search_space={"scale": grid},
            seed=seed,
        )
        tracking.log_params({"resolved_layer": objective.layer, "resolved_study_name": config.study_name})
        study = run_study(objective, config, metric_names=["new_test_rate_gain"])
        best = study.best_trial
        tracking.log_metrics({"best_value": best.value, "best_scale": best.params["scale"]})
        print(json.dumps({"study": config.study_name, "best_scale": best.params["scale"], "best_value": best.value}))


if __name__ == "__main__":
    tracking.entry_point(main)
