"""Entry point `compare_runs`: paired tests across logged runs, BH over every comparison, one `compare` run.

Selects the FINISHED runs of one entry point (in every experiment, or in the one named by `experiment`: runs
started by a bare `mlflow run` land in MLflow's `Default`, the others in `steerkit`), plus an optional MLflow
filter, loads each
run's per-sample table and pairs samples by `id`. `reference=baseline` compares each run's steered arm with its
own baseline (the paired design inside a run); `reference=<run id>` compares every run's steered arm with that
run's steered arm. Binary outcomes: exact McNemar + paired risk difference (Newcombe CI); continuous outcomes:
Wilcoxon signed-rank + median paired difference (seeded bootstrap CI). Only runs that measured the same thing
are compared: `match` (default: model, its file hash and dtype, corpus hash, edge rule, layer, hook and generation
params, `steerkit.stats.comparisons.DEFAULT_MATCH`) names the params every compared run must share with the
reference run (the `reference` run id, else the newest selected run); the others are listed with the differing
keys in `excluded_runs.json` (count: `n_excluded_runs`). `match=model,corpus_sha256` loosens it, `match=none`
pools every selected run. The declared family is every (run, outcome) test made here; BH runs over all of it;
its size and run ids are logged (`family_size`, `family.json`).

Usage: mlflow run . -e compare_runs --env-manager local -P filter="params.model = 'smollm2-135m-instruct'"
"""

from __future__ import annotations

from typing import Any

from steerkit import cli, tracking
from steerkit.cli import as_float, as_int
from steerkit.errors import SteerkitError
from steerkit.plots import plot_rates_vs_dose
from steerkit.stats.compare import (
    Comparison,
    adjust_family,
    markdown_table,
)
from steerkit.stats.comparisons import (
    TABLE_COLUMNS,
    compare_run,
    comparison_metrics,
    declared_outcomes,
    match_keys,
    match_runs,
)
from steerkit.stats.design import Design


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("compare_runs", __doc__)
    p.add_argument("--experiment", default="all", help="MLflow experiment (name) holding the runs; all = every one")
    p.add_argument("--entry-point", default="generate_n50", help="tag steerkit.entry_point of the runs")
    p.add_argument("--filter", default="", help="extra MLflow filter (\"params.model = 'x'\"); none = no filter")
    p.add_argument("--table", default="samples.json", help="per-sample table artifact of each run")
    p.add_argument("--outcomes", default="declared", help="binary columns; declared = the runs' primary outcome")
    p.add_argument("--continuous", default="tokens", help="continuous columns; none = no column")
    p.add_argument("--alpha", default="0.05", help="BH false discovery rate")
    p.add_argument("--reference", default="baseline", help="'baseline' or the run id whose steered arm is compared")
    p.add_argument("--match", default="default", help="params compared runs share with the reference; none = any")
    p.add_argument("--seed", default="0", help="bootstrap seed for continuous effect intervals")
    cli.add_design_args(p)
    return p.parse_args(argv)


def _none(value: str) -> str:
    """'none' stands for an empty value: `mlflow run` logs an empty parameter as "''" and the run's own log clashes."""
    return "" if value.strip().lower() == "none" else value


def _names(name: str, value: str) -> list[str]:
    value = _none(value)
    names = [part.strip() for part in value.split(",") if part.strip()]
    for item in names:
        if not item.replace("_", "").isalnum():
            raise SteerkitError(f"{name} must list column names, got {item!r}")
    return names


def _select(args: Any) -> tuple[list[Any], list[dict] | None]:
    """The runs to compare (sharing the `match` params with the reference run) and the reference run's rows."""
    runs = tracking.search_finished_runs(args.experiment, args.entry_point, _none(args.filter))
    reference, ref_rows = args.reference.strip(), None
    if reference != "baseline":
        ref_run = tracking.get_finished_run(reference)
        ref_rows = tracking.load_run_table(ref_run.info.run_id, args.table)
        runs = [run for run in runs if run.info.run_id != reference]
    if not runs:
        raise SteerkitError(
            f"no FINISHED {args.entry_point!r} runs in experiment {args.experiment!r} match {args.filter!r}"
        )
    if reference == "baseline":
        ref_run = runs[-1]  # the newest selected run: the one a user just made
    ref_id, ref_params = ref_run.info.run_id, dict(ref_run.data.params)
    matched = match_runs(ref_id, ref_params, runs, match_keys(args.match, ref_params, ref_id))
    tracking.log_json(matched.excluded, "excluded_runs.json")
    tracking.log_metrics({"n_excluded_runs": len(matched.excluded)})
    tracking.log_params({"match_reference_run": ref_id, "match_keys": ",".join(matched.keys) or "none"})
    for row in matched.excluded:
        print(f"excluded run {row['run_id']}: differs from {ref_id} on {row['keys']}")
    if not matched.compared:
        raise SteerkitError(f"all {len(runs)} runs differ from reference run {ref_id} on the match keys {args.match!r}")
    return matched.compared, ref_rows


def _log_comparisons(rows: list[dict], family: int, alpha: float, runs: list[Any], reference: str) -> None:
    tracking.log_metrics(comparison_metrics(rows, family, len(runs)))
    run_ids = [run.info.run_id for run in runs]
    tracking.log_json({"family_size": family, "n_runs": len(runs), "run_ids": run_ids}, "family.json")
    tracking.set_tags({"steerkit.compared_runs": ",".join(run.info.run_id for run in runs)})
    tracking.set_tags({"steerkit.reference": reference, "steerkit.family": "every (run, outcome) test"})
    tracking.log_csv(rows, "comparison.csv")
    head = (
        f"# compare_runs\n\nreference: {reference}; BH over a family of {family} tests at alpha={alpha}; "
        f"runs: {len(runs)}.\n\n"
    )
    tracking.log_text(head + markdown_table(rows, TABLE_COLUMNS), "comparison.md")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    # `mlflow run` logs each parameter shell-quoted ("params.x = 'y'" becomes a different string), so the
    # filter is logged under its own name to avoid a changed-value clash with MLflow's copy.
    params = {k: v for k, v in vars(args).items() if k != "filter"} | {"run_filter": args.filter}
    with tracking.tracked_run("compare_runs", params, experiment=tracking.default_experiment()):
        alpha = as_float("alpha", args.alpha)
        if not 0.0 < alpha < 1.0:
            raise SteerkitError(f"alpha must be in (0, 1), got {args.alpha!r}")
        seed = as_int("seed", args.seed)
        runs, ref_rows = _select(args)
        declared = args.outcomes.strip() == "declared"
        binary = declared_outcomes(runs) if declared else _names("outcomes", args.outcomes)
        continuous = _names("continuous", args.continuous)
        if not binary + continuous:
            raise SteerkitError("outcomes and continuous are both empty: nothing to compare")
        reference = args.reference.strip()
        tables = [tracking.load_run_table(run.info.run_id, args.table) for run in runs]
        # the design's floor: the primary (first) outcome over the fewest samples, BH over every (run, outcome)
        test = "mcnemar_exact" if binary else "wilcoxon_exact"
        n = min(len(rows) for rows in [*tables, *([ref_rows] if ref_rows is not None else [])])
        design = Design((binary + continuous)[0], test, n, len(runs) * len(binary + continuous), alpha)
        tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        comparisons: list[Comparison] = []
        for run, rows in zip(runs, tables):
            comparisons += compare_run(run, rows, ref_rows or rows, reference, binary, continuous, seed)
        adjusted, family = adjust_family(comparisons, alpha)
        table = [{k: c.to_dict()[k] for k in TABLE_COLUMNS} for c in adjusted]
        _log_comparisons(table, family, alpha, runs, reference)
        if binary:
            tracking.log_figure(plot_rates_vs_dose(table, binary, reference), "preservation_vs_dose.png")
        print(markdown_table(table, TABLE_COLUMNS), end="")
        print(f"family_size={family} n_rejected={sum(bool(r['rejected']) for r in table)}")


if __name__ == "__main__":
    tracking.entry_point(main)
