"""Entry point `baseline` (seed 001, phase 3.6): unsteered greedy code generation on MBPP-format problems.

Every problem gets one prompt (text + one test assert + the signature, `steerkit.sae.codegen.build_prompt`), a
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

import json
import time
from pathlib import Path
from typing import Any

from steerkit import cli, tracking
from steerkit.cli import as_bool, as_float, as_float_list, as_int
from steerkit.core.models import load_model
from steerkit.corpora.mbpp import DEFAULT_CORPUS, load_problems, split_manifest, split_problems
from steerkit.sae import pipeline
from steerkit.sae.codegen import PROMPT_TEMPLATE, solve_problems


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("baseline", __doc__)
    cli.add_model_args(p)
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
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def resolve_config(args: Any) -> dict[str, Any]:
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


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("baseline", vars(args), experiment=args.experiment):
        cfg = resolve_config(args)
        problem_set = load_problems(cfg["problems"])
        problems = list(problem_set.limit(cfg["limit"]))
        splits = split_problems(problems, cfg["fractions"], seed=cfg["split_seed"])
        split_of = {p.task_id: name for name, ps in splits.items() for p in ps}
        manifest = split_manifest(splits)
        loaded = load_model(cfg["model"], dtype=cfg["dtype"], device=cfg["device"], threads=args.threads)
        cfg.update(problems_sha256=problem_set.sha256, problems_name=problem_set.name, n_problems=len(problems))
        cfg["model_describe"] = loaded.describe()
        tracking.log_params(
            {
                "corpus_sha256": problem_set.sha256,
                "n_problems": len(problems),
                "generation": pipeline.generation_config(cfg).to_dict(),
                **loaded.params(),
            }
        )
        tracking.log_text(json.dumps(cfg), pipeline.CONFIG_FILE)
        tracking.log_text(json.dumps(manifest), pipeline.SPLITS_FILE)
        t0 = time.perf_counter()
        log = tracking.SampleLog(Path(pipeline.SAMPLES_FILE).stem)
        rows = solve_problems(
            loaded,
            problems,
            config=pipeline.generation_config(cfg),
            limits=pipeline.execution_limits(cfg),
            workers=cfg["workers"],
            extra={p.task_id: {"split": split_of[p.task_id]} for p in problems},
            on_batch=log,
        )
        seconds = time.perf_counter() - t0
        table = [{k: v for k, v in r.items() if k != "token_ids"} for r in rows]
        tracking.log_table(table, "samples.json")
        tracking.log_dataset(table, name="baseline_results", context="baseline")
        summary = pipeline.pass_summary(rows)
        tracking.log_metrics({**summary, "experiment_seconds": seconds})
        print(json.dumps({k: summary[k] for k in ("n_tasks", "pass_rate", "pass_rate_low", "pass_rate_high")}))


if __name__ == "__main__":
    tracking.entry_point(main)
