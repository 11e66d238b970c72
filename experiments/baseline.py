"""Entry point `baseline` (seed 001, phase 3.6): unsteered greedy code generation on MBPP-format problems.

Every problem gets one prompt (text + one test assert + the signature, `steerkit.codegen.build_prompt`), a
greedy completion, code extraction, and a sandboxed run (`steerkit.execution`, a subprocess per program,
never exec in this process) against ALL its asserts. The problems are split (sae / hyper / validation,
complexity-stratified, seeded) and the manifest is logged, so the later phases select features on `sae`, tune
coefficients on `hyper` and report on `validation`; they read this run by id (`--baseline-run-id`), including
the generation settings, which they reuse unchanged.

Logged: `samples/baseline.jsonl` (per task, as it is computed, with token ids), `samples.json` (the per-task
table), an MLflow dataset input (`baseline_results`), `splits.json` (manifest), `baseline_config.json` (what
later phases reuse), metrics (pass rate with its Wilson 95% interval, per split, status counts).

Usage: mlflow run . -e baseline --env-manager local -P limit=40
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import time
from pathlib import Path
from typing import Any

from steerkit import tracking
from steerkit.cli import as_bool, as_float, as_float_list, as_int
from steerkit.codegen import PROMPT_TEMPLATE, solve_problems
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import load_model
from steerkit.corpora.mbpp import DEFAULT_CORPUS, SPLITS, Problem, load_problems, split_manifest, split_problems
from steerkit.errors import SteerkitError
from steerkit.execution import ExecutionLimits
from steerkit.stats import wilson_interval

CONFIG_FILE = "baseline_config.json"
SPLITS_FILE = "splits.json"
SAMPLES_FILE = "samples/baseline.jsonl"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="baseline", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--problems", default=str(DEFAULT_CORPUS), help="mbpp.jsonl / sanitized-mbpp.json format")
    p.add_argument("--limit", default=0, help="first N problems of the file (0 = all)")
    p.add_argument("--split-seed", default=0)
    p.add_argument("--fractions", default="0.5,0.1,0.4", help="sae,hyper,validation shares")
    p.add_argument("--chat", default="true", help="chat template (the embedded instruct model needs it)")
    p.add_argument("--max-new-tokens", default=256)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--stop-at-fence", default="true", help="stop a completion at its closing ``` fence")
    p.add_argument("--timeout", default=10.0, help="wall seconds per program in the sandbox (CPU: the same, >= 1)")
    p.add_argument("--workers", default=2, help="sandbox processes in parallel")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def generation_config(cfg: dict[str, Any]) -> GenerationConfig:
    """The greedy generation config from a resolved baseline config (also used by the later phases)."""
    return GenerationConfig(
        max_new_tokens=cfg["max_new_tokens"],
        batch_size=cfg["batch_size"],
        temperature=0.0,
        chat=cfg["chat"],
        stop_strings=("\n```\n",) if cfg["stop_at_fence"] else (),
    )


def execution_limits(cfg: dict[str, Any]) -> ExecutionLimits:
    """Sandbox limits of a resolved baseline config (also used by the later phases)."""
    return ExecutionLimits(wall_seconds=cfg["timeout"], cpu_seconds=max(1, math.ceil(cfg["timeout"])))


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "problems": str(Path(args.problems).resolve()),
        "limit": as_int("limit", args.limit, 0),
        "split_seed": as_int("split_seed", args.split_seed, 0),
        "fractions": as_float_list("fractions", args.fractions),
        "chat": as_bool("chat", args.chat),
        "max_new_tokens": as_int("max_new_tokens", args.max_new_tokens, 1),
        "batch_size": as_int("batch_size", args.batch_size, 1),
        "stop_at_fence": as_bool("stop_at_fence", args.stop_at_fence),
        "timeout": as_float("timeout", args.timeout, 0.1),
        "workers": as_int("workers", args.workers, 1),
        "dtype": args.dtype,
        "device": args.device,
        "prompt_template": PROMPT_TEMPLATE,
    }


def load_split(cfg: dict[str, Any], manifest: dict[str, Any], split: str, limit: int = 0) -> list[Problem]:
    """The problems of one split of a baseline run (file hash checked), in manifest order; first `limit`."""
    problems = load_problems(cfg["problems"])
    if problems.sha256 != cfg["problems_sha256"]:
        raise SteerkitError(f"problems file {cfg['problems']} changed since the baseline run (sha256 differs)")
    by_id = problems.by_id()
    ids = manifest["task_ids"][split]
    chosen = [by_id[int(t)] for t in ids]
    return chosen[:limit] if limit else chosen


def load_baseline(run_id: str) -> tuple[dict[str, Any], dict[str, Any], dict[int, dict[str, Any]]]:
    """(config, split manifest, per-task records by task_id) of a FINISHED baseline run."""
    run = tracking.get_finished_run(run_id)
    if run.data.tags.get(tracking.TAG_ENTRY_POINT) != "baseline":
        raise SteerkitError(f"run {run_id!r} is not a baseline run")
    cfg = tracking.load_jsonl_artifact(run_id, CONFIG_FILE)[0]
    manifest = tracking.load_jsonl_artifact(run_id, SPLITS_FILE)[0]
    records = {int(r["task_id"]): r for r in tracking.load_jsonl_artifact(run_id, SAMPLES_FILE)}
    return cfg, manifest, records


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    n, k = len(rows), sum(r["passed"] for r in rows)
    low, high = wilson_interval(k, n)
    out: dict[str, float] = {"n_tasks": n, "n_passed": k, "pass_rate": k / n, "pass_rate_low": low}
    out["pass_rate_high"] = high
    out["syntax_error_rate"] = sum(not r["syntax_ok"] for r in rows) / n
    for status, count in collections.Counter(r["status"] for r in rows).items():
        out[f"status_{status}"] = count
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        if part:
            out[f"pass_rate_{split}"] = sum(r["passed"] for r in part) / len(part)
            out[f"n_{split}"] = len(part)
    return out


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("baseline", vars(args), experiment=args.experiment):
        cfg = resolve_config(args)
        problem_set = load_problems(cfg["problems"])
        problems = list(problem_set.limit(cfg["limit"]))
        splits = split_problems(problems, cfg["fractions"], seed=cfg["split_seed"])
        split_of = {p.task_id: name for name, ps in splits.items() for p in ps}
        manifest = split_manifest(splits)
        loaded = load_model(cfg["model"], dtype=cfg["dtype"], device=cfg["device"])
        cfg.update(problems_sha256=problem_set.sha256, problems_name=problem_set.name, n_problems=len(problems))
        cfg["model_describe"] = loaded.describe()
        tracking.log_params(
            {
                "corpus_sha256": problem_set.sha256,
                "n_problems": len(problems),
                "generation": generation_config(cfg).to_dict(),
                **{f"model_{k}": v for k, v in loaded.describe().items()},
            }
        )
        tracking.log_text(json.dumps(cfg), CONFIG_FILE)
        tracking.log_text(json.dumps(manifest), SPLITS_FILE)
        t0 = time.perf_counter()
        log = tracking.SampleLog(Path(SAMPLES_FILE).stem)
        rows = solve_problems(
            loaded,
            problems,
            config=generation_config(cfg),
            limits=execution_limits(cfg),
            workers=cfg["workers"],
            extra={p.task_id: {"split": split_of[p.task_id]} for p in problems},
            on_batch=log,
        )
        seconds = time.perf_counter() - t0
        table = [{k: v for k, v in r.items() if k != "token_ids"} for r in rows]
        tracking.log_table(table, "samples.json")
        tracking.log_dataset(table, name="baseline_results", context="baseline")
        summary = _summary(rows)
        tracking.log_metrics({**summary, "experiment_seconds": seconds})
        print(json.dumps({k: summary[k] for k in ("n_tasks", "pass_rate", "pass_rate_low", "pass_rate_high")}))


if __name__ == "__main__":
    tracking.entry_point(main)
