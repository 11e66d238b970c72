"""Entry point `main`: the dose experiment as chained steps, each reusing a finished run when it can.

MLflow's multistep-workflow habit: one driver run chains the phases (generate_n50 at every scale of `scales`, 1.0
being the identity control, then compare_runs over exactly those runs) and, for each step, first looks for a
FINISHED run in this experiment with the same entry point, the same value for every parameter of the step (the
MLproject defaults with the driver's values, so a run launched by hand with the same settings counts too) and the
same code (`steerkit.code_version`: git commit + hash of uncommitted changes; see `tracking.resume`). Found: it is
reused. Not found: the step is launched with `mlflow run` (this environment) as a child run of the driver. The
driver's run records what it did per step (tags `steerkit.step.<i>.*`, `steps.json`, metrics `n_steps_reused` /
`n_steps_launched`); data passes between steps by run id only (compare_runs gets a `run_id IN (...)` filter).

Usage: mlflow run . -e main --env-manager local --experiment-name steerkit -P scales=1.0,3.0 -P limit=10
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerkit import cli, tracking
from steerkit.cli import as_bool, as_float, as_float_list, as_int
from steerkit.errors import SteerkitError
from steerkit.tracking.resume import project_params

ROOT = Path(__file__).resolve().parents[1]
GENERATE_KEYS = (
    *("model", "layer", "edge_rule", "max_new_tokens", "batch_size", "limit", "seed", "dtype", "device", "threads"),
    *("allow_underpowered", "alpha"),  # alpha: each step's design gate uses the level compare_runs tests at
)


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("main", __doc__)
    cli.add_model_args(p)
    p.add_argument("--layer", default="auto")
    p.add_argument("--scales", default="1.0,3.0", help="generate_n50 scales; include 1.0, the identity control")
    p.add_argument("--edge-rule", default="signature_to_doctest")
    p.add_argument("--max-new-tokens", default="128")
    p.add_argument("--batch-size", default="16")
    p.add_argument("--limit", default="0", help="first N prompts (0 = all 50)")
    p.add_argument("--seed", default="0")
    p.add_argument("--corpus", default="corpus/generation_prompts_n50.json")
    p.add_argument("--alpha", default="0.05", help="generate_n50's design gate and compare_runs' BH FDR")
    p.add_argument("--experiment", default="steerkit", help="experiment when run directly (mlflow run sets its own)")
    cli.add_design_args(p)
    return p.parse_args(argv)


def generate_steps(args: Any) -> list[dict[str, str]]:
    """The generate_n50 parameters of each scale (every parameter: MLproject defaults + the driver's values)."""
    scales = as_float_list("scales", args.scales)
    for scale in scales:
        as_float("scales", scale, minimum=0.0)
    as_int("limit", args.limit, 0)
    fixed = {key: str(getattr(args, key)) for key in GENERATE_KEYS} | {"corpus": args.corpus}
    return [project_params(ROOT / "MLproject", "generate_n50", fixed | {"scale": str(s)}) for s in scales]


def run_step(index: int, entry_point: str, params: dict[str, str], experiment_id: str, version: str) -> dict:
    """Reuse a matching FINISHED run, else launch the step as a child run; the driver run records which."""
    run_id = tracking.find_step_run(experiment_id, entry_point, params, version)
    action = "reused"
    if run_id is None:
        run_id, action = tracking.launch_entry_point(str(ROOT), entry_point, params, experiment_id), "launched"
    tracking.set_tags({f"steerkit.step.{index}.{entry_point}": run_id, f"steerkit.step.{index}.action": action})
    print(f"step {index} {entry_point}: {action} run {run_id}", flush=True)
    return {"index": index, "entry_point": entry_point, "action": action, "run_id": run_id, "params": params}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("main", vars(args), experiment=args.experiment):
        alpha = as_float("alpha", args.alpha)
        if not 0.0 < alpha < 1.0:
            raise SteerkitError(f"alpha must be in (0, 1), got {args.alpha!r}")
        version = tracking.code_version()
        experiment_id = tracking.active_experiment_id()
        steps: list[dict[str, Any]] = []
        for params in generate_steps(args):
            steps.append(run_step(len(steps), "generate_n50", params, experiment_id, version))
        ids = ",".join(f"'{s['run_id']}'" for s in steps)
        compare = {
            "experiment": tracking.experiment_name(experiment_id),
            "entry_point": "generate_n50",
            "filter": f"attributes.run_id IN ({ids})",
            "alpha": args.alpha,
            "allow_underpowered": str(as_bool("allow_underpowered", args.allow_underpowered)).lower(),
        }
        params = project_params(ROOT / "MLproject", "compare_runs", compare)
        steps.append(run_step(len(steps), "compare_runs", params, experiment_id, version))
        reused = sum(s["action"] == "reused" for s in steps)
        tracking.log_metrics({"n_steps_reused": reused, "n_steps_launched": len(steps) - reused})
        tracking.set_tags({"steerkit.code_version_checked": version})
        tracking.log_json(steps, "steps.json")
        print(json.dumps({s["entry_point"] + f"[{s['index']}]": f"{s['action']} {s['run_id']}" for s in steps}))


if __name__ == "__main__":
    tracking.entry_point(main)
