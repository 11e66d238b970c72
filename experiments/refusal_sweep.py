"""Entry point `refusal_sweep` (seed 003): steer refusal with a difference-of-means direction, judged 3-way.

One level of the refusal ladder (experiments/configs/{smoke,layer_test,alpha_sweep,full}.yaml; the logic is in
`steerkit.refusal.sweep`). Directions per layer (rejected with a reason when tiny next to the residual norm or no
longer than label-shuffled ones; the run fails if none passes); every (intervention, layer, alpha) runs as a nested
MLflow run over harm_train, harm_test, benign eval and benign test prompts, every reply judged (rule judge;
`judge=llm|both` adds the embedded model as grader; both validated on a held-out labelled set), with random and
label-shuffled direction controls and one alpha-0 baseline checked against the unhooked model. The best conditions
are chosen on harm_train and benign eval among those that beat the baseline on harm_train (else "no effective
configuration", no winner), and reported on harm_test and benign test with exact McNemar tests vs baseline (BH
per outcome) and action-clustered tests for the held-out-action claim.

Usage: mlflow run . -e refusal_sweep --env-manager local -P config=experiments/configs/smoke.yaml
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from steerkit import cli, tracking
from steerkit.core.checks import require_identity
from steerkit.core.models import load_model
from steerkit.errors import SteerkitError
from steerkit.refusal import report, sweep
from steerkit.refusal.config import SweepConfig, config_from_params
from steerkit.refusal.validation import validate_judges, validation_metrics

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "refusal"


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("refusal_sweep", __doc__)
    p.add_argument("--config", default="experiments/configs/smoke.yaml")
    cli.add_model_args(p)
    p.add_argument("--limit", default="", help="prompts per split (overrides the config; 0 = all)")
    p.add_argument("--seed", default="", help="control-direction seed (overrides the config)")
    p.add_argument("--batch-size", default="", help="overrides the config")
    p.add_argument("--max-new-tokens", default="", help="overrides the config")
    p.add_argument("--judge", default="rule", help="rule | llm | both (primary verdicts: llm only for 'llm')")
    p.add_argument("--corpus-dir", default=str(CORPUS))
    cli.add_run_args(p, output=False)
    cli.add_design_args(p)
    return p.parse_args(argv)


def log_judge_validation(found: dict[str, Any]) -> None:
    tracking.log_metrics(validation_metrics(found))
    tracking.log_json({k: a.to_dict() for k, a in found.items()}, "judge_validation.json")


@contextmanager
def condition_run(meta: dict[str, Any]) -> Iterator[tracking.SampleLog]:
    """One condition's nested run: its params, then its samples as they come, its table and split rates."""
    name = meta["condition"]
    with tracking.child_run(name, tags={"steerkit.condition": name}):
        tracking.log_params(meta)
        log = tracking.SampleLog("samples")
        yield log
        tracking.log_table(log.records, "samples.json")
        tracking.log_metrics(sweep.split_metrics(log.records))


def write_report(records: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, Any]:
    """summary.csv (+ one per split), paired tests, the selection reported on the test splits, and the figures."""
    summary = report.summarise(records)
    tracking.log_text(summary.to_csv(index=False), "summary.csv")
    for split in report.SPLITS:
        tracking.log_text(summary[summary.split == split].to_csv(index=False), f"summary_{split}.csv")
    tests = report.paired_tests(records, "harm_test")
    tracking.log_text(tests.to_csv(index=False), "paired_tests_harm_test.csv")
    train_tests = report.paired_tests(records, "harm_train")
    tracking.log_text(train_tests.to_csv(index=False), "paired_tests_harm_train.csv")
    picks = report.select(summary, cfg.helpfulness_max_drop, train_tests)
    for pick in picks.values():
        if not pick["effective"]:
            print(pick["reason"])
    metrics, tags = report.best_metrics(picks, tests)
    tracking.set_tags(tags)
    tracking.log_json({k: v for k, v in picks.items()}, "selection.json")
    tracking.log_figure(report.tradeoff_figure(summary), "plots/tradeoff.png")
    tracking.log_figure(report.generalisation_figure(summary), "plots/generalisation_gap.png")
    for kind in cfg.interventions:
        tracking.log_figure(report.heatmap_figure(summary, kind), f"plots/heatmap_{kind}.png")
    return metrics


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("refusal_sweep", vars(args), experiment=args.experiment):
        cfg = config_from_params(**cli.kwargs_for(config_from_params, args))
        cli.as_choice("judge", args.judge, sweep.JUDGES)
        corpora = sweep.load_corpora(args.corpus_dir)
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        for layer in cfg.layers:
            loaded.check_layer(layer)
        tracking.log_params(
            {
                "resolved_config": cfg.to_dict(),
                "direction_position": "last token of the chat-templated prompt (end of the assistant header)",
                "generation": sweep.generation_config(cfg).to_dict(),
                **{f"corpus_{k}_sha256": c.sha256 for k, c in corpora.items()},
                **loaded.params(),
            }
        )
        t0 = time.perf_counter()
        train, test = sweep.directions_for(loaded, corpora, cfg)
        directions = sweep.direction_report(train, test, cfg.seed)
        _log_directions(directions)
        accepted = train.accepted()
        if not accepted:
            reasons = "; ".join(f"L{r['layer']}: {r['reject_reason']}" for r in directions)
            raise SteerkitError(f"no layer passed the direction checks ({reasons})")
        log_judge_validation(validate_judges(loaded, args.judge, args.corpus_dir))
        items = sweep.eval_prompts(corpora, cfg.prompts_per_split)
        tracking.log_metrics(sweep.split_sizes(items))
        design = sweep.declared_design(cfg, accepted, items)
        tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        runner = sweep.Runner(loaded, cfg, items, args.judge, condition_run)
        checks = sweep.run_conditions(runner, train, accepted, on_identity=_require_identity)
        metrics = write_report(runner.records, cfg)
        tracking.log_table(runner.records, "samples.json")
        tracking.log_metrics({**checks, **metrics, "experiment_seconds": time.perf_counter() - t0})
        print(json.dumps({**checks, **metrics, "accepted_layers": accepted}, default=str))


def _require_identity(checks: dict[str, float]) -> None:
    tracking.log_metrics(checks)
    require_identity(checks, sweep.IDENTITY_FIGURES)


def _log_directions(rows: list[dict[str, Any]]) -> None:
    tracking.log_text(pd.DataFrame(rows).to_csv(index=False), "directions.csv")
    metrics, tags = sweep.direction_metrics(rows)
    tracking.log_metrics(metrics)
    tracking.set_tags(tags)


if __name__ == "__main__":
    tracking.entry_point(main)
