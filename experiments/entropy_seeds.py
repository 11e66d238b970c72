"""Entry point `entropy_seeds` (seed 004): does the origin of a 32-bit sampling seed change the text?

prompts x sources x samples, every cell sampled at the same temperature (the reference compared T=1.0 with
T=0.7) with its seed drawn from its source (`single_stream`: one instance per source serves every cell;
`multi_stream`: one instance per prompt). Logs each sample's seed and text (`samples/generations.jsonl`, written
as it goes, and the `samples.json` table), KS tests of each source's seeds against uniform and between
sources (`seed_ks.json`, on `ks_draws` fresh seeds per source), and the control: the `fixed` source gives
every sample of a prompt the same seed, so its samples must be identical (`fixed_identical_fraction` = 1;
enforced: a broken control fails the run).
Analyse with `entropy_analysis -P run_ids=<this run id>`.

Usage: mlflow run . -e entropy_seeds --env-manager local -P limit=4 -P samples=3
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from steerkit import cli, tracking
from steerkit.cli import as_bool, as_int
from steerkit.entropy.control import require_controls
from steerkit.entropy.design import (
    Design,
    check_mode,
    design_args,
    identical_fraction,
    run_cells,
    seed_plan,
    table_rows,
)
from steerkit.entropy.sources import compare_seed_distributions, make_source


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("entropy_seeds", __doc__)
    cli.add_args(p, design_args(samples=3, max_new_tokens=48))
    p.add_argument("--mode", default="single_stream", help="single_stream or multi_stream")
    p.add_argument("--ks-draws", default=2000, help="fresh seeds per source for the KS tests")
    return p.parse_args(argv)


def seed_ks(sources: list[str], draws: int, seed: int) -> list[dict]:
    samples = {s: make_source(s, seed + 1).seeds(draws) for s in sources}
    return [r.to_dict() for r in compare_seed_distributions(samples)]


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("entropy_seeds", vars(args), experiment=args.experiment):
        design = Design.from_params(**cli.kwargs_for(Design.from_params, args))
        mode = check_mode(args.mode)
        ks_draws = as_int("ks_draws", args.ks_draws, 1)
        cells = design.cells()
        tracking.log_design(design.declared(), as_bool("allow_underpowered", args.allow_underpowered))
        loaded, resolved = design.load_model(**cli.kwargs_for(design.load_model, args))
        tracking.log_params(resolved)
        t0 = time.perf_counter()
        seeds = seed_plan(cells, mode, design.seed)
        records = run_cells(
            loaded,
            cells,
            design.cfg,
            tracking.SampleLog("generations"),
            seeds=seeds,
            extra={k: {"seed": v} for k, v in seeds.items()},
        )
        tracking.log_table(table_rows(records), "samples.json")
        ks = seed_ks(design.sources, ks_draws, design.seed)
        tracking.log_json(ks, "seed_ks.json")
        metrics = summary(records, ks)
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        require_controls(metrics)  # logged above, then enforced: a broken control fails the run
        print(json.dumps(metrics))


def summary(records: list[dict], ks: list[dict]) -> dict[str, float]:
    """Counts, the fixed-seed control, and the KS p-values against uniform per source."""
    by_prompt: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for r in records:
        by_prompt[(r["source"], r["prompt"])].append(r["token_ids"])
    out: dict[str, float] = {
        "n_samples": len(records),
        "mean_tokens": sum(r["n_tokens"] for r in records) / len(records),
    }
    fixed = {k: v for k, v in by_prompt.items() if k[0] == "fixed"}
    if fixed:
        out["fixed_identical_fraction"] = identical_fraction(fixed)
    others = {k: v for k, v in by_prompt.items() if k[0] != "fixed" and len(v) > 1}
    if others:
        out["nonfixed_identical_fraction"] = identical_fraction(others)
    for r in ks:
        if r["b"] == "uniform":
            out[f"ks_uniform_p_{r['a']}"] = r["p_value"]
    return out


if __name__ == "__main__":
    tracking.entry_point(main)
