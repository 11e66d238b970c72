"""Entry point `calibrate_dose` (seed 000, phase 1): which attention scale brings Rust to the Python level?

An Optuna study (steerkit.search.run_study: one parent run, a nested run per trial, resumable from its storage)
over the scale of `AttentionEdit(op="scale")` at one layer, on the Rust test items: sources are the `#[test]`
marker tokens (and, with `sources=from_marker`, every later position), targets the function's tokens in the
definition before it, so the edited edges are causally valid (queries attend back to earlier keys). Objective:
|steered Rust level - Python reference level|, the level being the head-averaged `metric` of marker -> target
attention at the layer, read from the same forward pass (the capture sees the edited weights). The reference
comes from a `measure_attention` run (`measure_run_id`, its `layer_stats.json`) or is measured in-process on the
Python items (tag `steerkit.reference_source`). Each trial also logs KL(baseline || steered) between last-token
vocabulary distributions; the baseline is the same edit at scale 1.0 through the same code path, which is
checked bit-identical to the unhooked model (`identity_max_abs_logit_diff`), so KL is exactly 0 at scale 1.
The logic is in `steerkit.attention.dose`.

The chosen scale (the trial closest to the reference) is logged as metrics and as `chosen_scale.json`. It is
chosen on these items: report its effect on other prompts.

Usage: mlflow run . -e calibrate_dose --env-manager local -P limit=10 [-P measure_run_id=RUN_ID]
"""

from __future__ import annotations

import json
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import dose
from steerkit.attention.measure import METRICS, TARGET_CHOICES
from steerkit.core.checks import IDENTITY_KEY, require_identity
from steerkit.core.models import load_model
from steerkit.corpora.attention_pairs import load_attention_pairs
from steerkit.search import StudyConfig, redact_storage, run_study, study_name

TRIAL_ENTRY_POINT = "calibrate_dose_trial"


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("calibrate_dose", __doc__)
    cli.add_model_args(p)
    p.add_argument("--layer", default="auto", help="index, 'auto' = round(0.6 * n_layers), or 'measure' (see README)")
    p.add_argument("--measure-run-id", default="", help="a FINISHED measure_attention run ('' = measure here)")
    p.add_argument("--grid", default="1.0,2.0,2.5,3.0,3.5,4.0", help="scales for sampler=grid (keep 1.0)")
    p.add_argument("--sampler", default="grid", help="grid or tpe")
    p.add_argument("--n-trials", default=12, help="trials for sampler=tpe")
    p.add_argument("--scale-range", default="1.0,8.0", help="low,high scale for sampler=tpe")
    p.add_argument("--storage", default="default", help="Optuna storage URL ('default' = ~/.steerkit/optuna.db)")
    p.add_argument("--study-name", default="auto")
    p.add_argument("--limit", default=10, help="first N Rust test items (0 = all)")
    p.add_argument("--metric", default="total_mass", help=", ".join(METRICS))
    p.add_argument("--target", default="function_name", help=", ".join(TARGET_CHOICES))
    p.add_argument("--sources", default="from_marker", help="marker, or from_marker (marker and every later token)")
    p.add_argument("--seed", default=0)
    p.add_argument("--batch-size", default=8)
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--chat", default="false")
    cli.add_run_args(p, output=False)
    return p.parse_args(argv)


def settings_and_study(args: Any, seed: int) -> tuple[dose.DoseSettings, Any]:
    """The trial settings and a `StudyConfig` factory (name -> config) from the parameters."""
    cli.as_choice("sampler", args.sampler, ("grid", "tpe"))
    if args.sampler == "grid":
        grid = [cli.as_float("grid", v, minimum=0.0) for v in cli.as_float_list("grid", args.grid)]
        low, high = min(grid), max(grid)
        make = lambda name: StudyConfig(name, args.storage, ("minimize",), "grid", {"scale": grid}, seed)  # noqa: E731
    else:
        bounds = cli.as_float_list("scale_range", args.scale_range)
        if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1]:
            raise cli.SteerkitError(f"scale_range must be 'low,high' with 0 <= low < high, got {args.scale_range!r}")
        low, high, n = bounds[0], bounds[1], cli.as_int("n_trials", args.n_trials, 1)
        make = lambda name: StudyConfig(name, args.storage, ("minimize",), "tpe", {}, seed, n)  # noqa: E731
    chat, batch = cli.as_bool("chat", args.chat), cli.as_int("batch_size", args.batch_size, 1)
    return dose.DoseSettings(args.metric, args.target, args.sources, chat, batch, low, high), make


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("calibrate_dose", vars(args), experiment=args.experiment):
        seed = cli.as_int("seed", args.seed)
        settings, make_study = settings_and_study(args, seed)
        corpus, pairs = load_attention_pairs(args.corpus, cli.as_int("limit", args.limit, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        expect = {"model": loaded.spec, "target": args.target, "chat": str(settings.chat).lower()}
        rows = (
            tracking.finished_run_table(args.measure_run_id, "measure_attention", expect, "layer_stats.json")
            if args.measure_run_id
            else None
        )
        layer = dose.resolve_layer(args.layer, loaded, rows)
        python, rust = [p for p, _ in pairs], [r for _, r in pairs]
        ctx = {"run_id": args.measure_run_id, "loaded": loaded, "target": args.target, "chat": settings.chat}
        log_items = lambda items: tracking.log_table(items, "reference_items.json")  # noqa: E731
        ctx["batch"] = settings.batch_size
        reference, source = dose.reference_level(rows, layer, args.metric, python, ctx, log_items)
        tracking.set_tags({tracking.TAG_REFERENCE_SOURCE: source})
        facts = {
            "model": loaded.describe(),
            "corpus": corpus.sha256,
            "layer": layer,
            "n": len(rust),
            "reference": round(reference, 12),
            **{k: str(getattr(args, k)) for k in ("metric", "target", "sources", "chat", "sampler")},
            "code": tracking.code_version(),
        }
        config = make_study(study_name(args.study_name, "dose", facts, label=[loaded.spec, f"L{layer}"]))
        trial_tags = {tracking.TAG_ENTRY_POINT: TRIAL_ENTRY_POINT}
        record = tracking.recorder(trial_tags, {"resolved_layer": layer, "n_items": len(rust)}, "trial_items.json")
        objective = dose.DoseObjective(loaded, rust, layer, reference, settings, record)
        tracking.log_params(
            {
                "resolved_layer": layer,
                "hook": "attention_post_softmax",
                "n_items": len(rust),
                "corpus_sha256": corpus.sha256,
                "resolved_study_name": config.study_name,
                "resolved_storage": redact_storage(config.storage),
                **{f"model_{k}": v for k, v in loaded.describe().items()},
            }
        )
        checks = objective.identity_check()
        tracking.log_metrics({**checks, "reference_level": reference})
        require_identity(checks, [IDENTITY_KEY, "kl_at_scale_1"])
        study = run_study(objective, config, metric_names=["objective"])
        result = dose.chosen(study, reference, layer, settings) | {"reference_source": source, "seed": seed}
        tracking.log_json(result, "chosen_scale.json")
        keys = {"chosen_scale": "scale", "chosen_level": "level_reached", "chosen_objective": "objective"}
        keys |= {"chosen_kl_mean": "kl_mean", "reference_bracketed": "reference_bracketed"}
        tracking.log_metrics({k: result[v] for k, v in keys.items()})
        print(json.dumps({k: result[k] for k in ("scale", "level_reached", "reference_level", "kl_mean")} | checks))


if __name__ == "__main__":
    tracking.entry_point(main)
