"""Entry point `search_worker`: one of N processes (one machine or many) running the trials of one grid study.

Start the same command N times against one Optuna storage (PostgreSQL) and one MLflow tracking server; how they
share the work is `steerkit.search.workers` (each grid point evaluated exactly once, every trial a child run of
the study's parent, the last worker logs the summary and plots there). Each worker's own run records its share
(`n_trials_run`, `trials_per_minute`). Objectives: `kl` = mean KL(scale 1 || scale s) over the generated positions,
baseline continuation teacher-forced (`steerkit.attention.kl_gain`; 0 at the identity scale 1.0); `new_test_gain` =
the `sweep_scales` objective and design gate (`steerkit.attention.n50`). The baseline is generated once and reused
across workers. Prompts: the `calibration` split; a non-zero identity figure fails the trial. Keep passwords out
of `storage` (PGPASSWORD or ~/.pgpass): MLflow logs it as given; steerkit redacts it.

Usage: mlflow run . -e search_worker --env-manager local --experiment-name steerkit
           -P storage=postgresql://user@dbhost/optuna -P study_name=scales-1 -P grid=1.0,2.0,3.0,4.0
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import n50
from steerkit.attention.kl_gain import KlGain
from steerkit.cli import as_float, as_float_list, as_int, as_layer
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import load_model
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.corpora.splits import SPLITS, select_split
from steerkit.errors import SteerkitError
from steerkit.search import (
    StudyConfig,
    finish_if_complete,
    open_grid_study,
    redact_storage,
    run_grid_worker,
    shared_storage,
)
from steerkit.search.workers import PARENT_ATTR

TRIAL_ENTRY_POINT = "sweep_scales_trial"  # new_test_gain trials are sweep_scales trials (compare_runs reads them alike)
KL_TRIAL_ENTRY_POINT = "search_worker_kl_trial"  # a KL trial has no outcome for compare_runs to pool
WORKER = f"{socket.gethostname()}:{os.getpid()}"
OBJECTIVES = ("kl", "new_test_gain")


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("search_worker", __doc__)
    p.add_argument("--study-name", default="steerkit-scaleout", help="the study every worker joins")
    p.add_argument("--storage", default="default", help="Optuna storage URL (PostgreSQL for workers)")
    p.add_argument("--objective", default="kl", help="kl | new_test_gain")
    p.add_argument("--grid", default="1.0,2.0,3.0,4.0", help="scales (include 1.0, the identity control)")
    cli.add_model_args(p)
    p.add_argument("--layer", default="auto")
    p.add_argument("--edge-rule", default="signature_to_doctest")
    p.add_argument("--split", default="calibration", help=", ".join(SPLITS) + " (prompts by id)")
    p.add_argument("--limit", default="8", help="first N prompts of the split")
    p.add_argument("--max-new-tokens", default="48", help="baseline continuation length")
    p.add_argument("--batch-size", default="16")
    p.add_argument("--seed", default="0")
    p.add_argument("--corpus", default="corpus/generation_prompts_n50.json")
    p.add_argument("--wait-s", default="120", help="how long a joining worker waits for the study's set-up")
    p.add_argument("--heartbeat-s", default="60", help="trial heartbeat interval (s); a silent trial is retried")
    p.add_argument("--grace-s", default="180", help="silence (s) after which a RUNNING trial is failed and retried")
    p.add_argument("--alpha", default="0.05", help="new_test_gain: false discovery rate over the steered scales")
    cli.add_design_args(p)
    cli.add_run_args(p, output=False)
    return p.parse_args(argv)


def _objective(args: Any, loaded: Any, corpus: Any, grid: list[float], kind: str) -> Callable[[Any], float]:
    """The trial objective with its baseline arm (generated once, reused by key across workers and runs)."""
    batch, tokens = as_int("batch_size", args.batch_size, 1), as_int("max_new_tokens", args.max_new_tokens, 1)
    cfg = GenerationConfig(max_new_tokens=tokens, batch_size=batch, seed=as_int("seed", args.seed))
    corpus_prompts = select_split(corpus.prompts, args.split, as_int("limit", args.limit, 1))
    layer = as_layer("layer", args.layer, loaded)
    objective: KlGain | n50.NewTestGain
    trial_params = {"resolved_layer": layer, "n_prompts": len(corpus_prompts)}
    if kind == "kl":
        record = tracking.recorder({tracking.TAG_ENTRY_POINT: KL_TRIAL_ENTRY_POINT}, trial_params)
        prompts = [cp.as_prompt() for cp in corpus_prompts]
        objective = KlGain(loaded, prompts, layer, args.edge_rule, grid, batch, record)
    else:
        record = tracking.recorder({tracking.TAG_ENTRY_POINT: TRIAL_ENTRY_POINT}, trial_params, "samples.json")
        steered = lambda: tracking.SampleLog("steered")  # noqa: E731
        objective = n50.NewTestGain(loaded, corpus_prompts, cfg, layer, args.edge_rule, grid, steered, record)
        allow = cli.as_bool("allow_underpowered", args.allow_underpowered)
        tracking.log_design(objective.design(as_float("alpha", args.alpha)), allow)
    ids, version, cut = [p.id for p in corpus_prompts], tracking.code_version(), objective.split  # + the prefill cut
    key = n50.baseline_key(loaded, corpus.sha256, ids, cfg, version, cut)
    base = lambda: n50.run_arm(loaded, objective.prompts, objective.edit_1, cfg, tracking.SampleLog("baseline"), cut)  # noqa: E731
    objective.base = tracking.reuse_samples("baseline", key, True) or base()
    return objective


def _tagged(objective: Callable[[Any], float]) -> Callable[[Any], float]:
    """The objective, also tagging its trial run with the worker that ran it."""

    def run(trial: Any) -> float:
        tracking.set_tags({tracking.TAG_WORKER: WORKER})
        return objective(trial)

    return run


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    logged = vars(args) | {"storage": redact_storage(args.storage)}
    with tracking.tracked_run("search_worker", logged, experiment=args.experiment):
        if args.objective not in OBJECTIVES:
            raise SteerkitError(f"unknown objective {args.objective!r} ({', '.join(OBJECTIVES)})")
        grid = as_float_list("grid", args.grid, minimum=0.0)
        config = StudyConfig(
            study_name=args.study_name,
            storage=args.storage,
            sampler="grid",
            search_space={"scale": grid},
            seed=as_int("seed", args.seed),
        )
        wait_s, beat = as_float("wait_s", args.wait_s, minimum=0.0), as_int("heartbeat_s", args.heartbeat_s, 1)
        storage = shared_storage(config.storage, beat, as_int("grace_s", args.grace_s, beat + 1))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        tracking.log_params(loaded.params())
        objective = _objective(args, loaded, load_prompt_corpus(args.corpus), grid, args.objective)
        experiment = tracking.experiment_name(tracking.active_experiment_id())
        parent_tags = {tracking.TAG_ENTRY_POINT: "search_study", tracking.TAG_OPTUNA_STUDY: config.study_name}
        parent_tags[tracking.TAG_OPTUNA_STORAGE] = redact_storage(config.storage)
        parent_tags |= {"steerkit.objective": args.objective, tracking.TAG_CODE_VERSION: tracking.code_version()}
        study, created = open_grid_study(
            config, lambda: tracking.create_run(experiment, f"study-{config.study_name}", parent_tags), wait_s, storage
        )
        parent = study.user_attrs[PARENT_ATTR]
        tracking.set_tags({**parent_tags, tracking.TAG_ENTRY_POINT: "search_worker", tracking.TAG_WORKER: WORKER})
        tracking.set_tags({"steerkit.search_parent_run": parent, "steerkit.study_creator": created})
        t0 = time.perf_counter()
        numbers = run_grid_worker(_tagged(objective), study, storage, metric_names=[args.objective])
        seconds = time.perf_counter() - t0
        rate = 60.0 * len(numbers) / seconds if numbers else 0.0
        tracking.log_metrics({"n_trials_run": len(numbers), "worker_seconds": seconds, "trials_per_minute": rate})
        finished = finish_if_complete(study)
        tracking.set_tags({"steerkit.finished_study": finished, "steerkit.trials_run": numbers})
        print(json.dumps({"worker": WORKER, "parent_run": parent, "trials": numbers, "finished_study": finished}))


if __name__ == "__main__":
    tracking.entry_point(main)
