"""Entry point `entropy_control` (seed 004): the same seed values routed through different sources give the same text.

The mechanism check. One list of 32-bit seeds (drawn from `seed_source`) is given to every source's arm: cell
(source, prompt, k) samples with seed k of that prompt, at one temperature, through the same `generate` call.
If a source's identity could reach the text by any path other than the seed value, outputs would differ;
`identical_fraction` (share of (prompt, k) whose outputs agree across all sources) must be 1. As a contrast,
`distinct_seed_fraction` is the share of (prompt, k != k') pairs of the first source whose outputs differ: the
seed value itself does change the text.

Usage: mlflow run . -e entropy_control --env-manager local
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.core.checks import require_identity
from steerkit.entropy.control import control_metrics
from steerkit.entropy.design import Design, design_args, run_cells, table_rows
from steerkit.entropy.sources import make_source


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("entropy_control", __doc__)
    cli.add_args(p, design_args(samples=3, max_new_tokens=32, tests=False))
    p.add_argument("--seed-source", default="mt", help="the source the shared seed values come from")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("entropy_control", vars(args), experiment=args.experiment):
        design = Design.from_params(**cli.kwargs_for(Design.from_params, args))
        prompts, n = design.prompts, design.n_samples
        shared_values = make_source(args.seed_source, design.seed).seeds(len(prompts) * n)
        shared = {(p.id, k): shared_values[i * n + k] for i, p in enumerate(prompts) for k in range(n)}
        cells = design.cells()
        seeds = {c.id: shared[(c.prompt.id, c.sample)] for c in cells}
        loaded, resolved = design.load_model(**cli.kwargs_for(design.load_model, args))
        tracking.log_params(resolved)
        t0 = time.perf_counter()
        extra = {c.id: {"seed": seeds[c.id], "seed_origin": args.seed_source} for c in cells}
        records = run_cells(loaded, cells, design.cfg, tracking.SampleLog("generations"), seeds=seeds, extra=extra)
        tracking.log_table(table_rows(records), "samples.json")
        metrics = control_metrics(records)
        tracking.set_tags({"steerkit.control_passed": str(metrics["identical_fraction"] == 1.0).lower()})
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        require_identity(metrics)  # the same seed value must give the same text whatever the source
        print(json.dumps(metrics))


if __name__ == "__main__":
    tracking.entry_point(main)
