"""Entry point `calibrate_dose` (seed 000, phase 1): which attention scale gives the edges the wanted share?

An Optuna study (steerkit.search.run_study: one parent run, a nested run per trial, resumable from its storage)
over the scale of `AttentionEdit(op="scale")` at one layer. Two modes. `edge_rule=none`: the attention-pairs Rust
items' `#[test]` marker (and, with `sources=from_marker`, every later token) -> function-token edges; objective
|steered Rust level - Python reference level| (head-averaged `metric` at the layer; the reference from a
`measure_attention` run or measured here, `steerkit.attention.dose`). `edge_rule=<name>`: the edges generate_n50
scales, on the n50 `calibration` split (by prompt id, disjoint from the `eval` split generate_n50 reports on);
objective |edge share - target_share|, the share read over the baseline continuation teacher-forced, the figure
generate_n50 logs as its dose (`steerkit.attention.rule_dose`). Every trial logs KL(baseline || steered); the
baseline is the same edit at scale 1.0, checked bit-identical to the unhooked model, so KL is 0 at scale 1. The
chosen scale (closest to the target) goes to `chosen_scale.json`; generate_n50 reads it with `scale=from:RUN_ID`.

Usage: mlflow run . -e calibrate_dose --env-manager local -P limit=10 [-P measure_run_id=RUN_ID]
       mlflow run . -e calibrate_dose --env-manager local -P edge_rule=signature_to_doctest -P target_share=0.5
"""

from __future__ import annotations

import json
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import dose
from steerkit.attention.edge_rules import EDGE_RULES, edge_rule
from steerkit.attention.measure import METRICS, TARGET_CHOICES
from steerkit.attention.rule_dose import RuleDoseObjective
from steerkit.core.checks import IDENTITY_KEY, require_identity
from steerkit.core.models import load_model
from steerkit.corpora.attention_pairs import load_attention_pairs
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.corpora.splits import SPLITS, ids_digest, select_split
from steerkit.search import StudyConfig, redact_storage, run_study, study_name

TRIAL_ENTRY_POINT = "calibrate_dose_trial"
PAIRS, N50 = "corpus/attention_pairs.json", "corpus/generation_prompts_n50.json"


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
    p.add_argument("--corpus", default="auto", help="auto = attention pairs, or the n50 corpus with an edge_rule")
    p.add_argument("--edge-rule", default="none", help="none (marker -> function edges) or " + ", ".join(EDGE_RULES))
    p.add_argument("--target-share", default="", help="edge_rule mode: the share to reach, in (0, 1)")
    p.add_argument("--split", default="calibration", help="edge_rule mode: prompts by id, " + ", ".join(SPLITS))
    p.add_argument("--max-new-tokens", default=48, help="edge_rule mode: baseline continuation length")
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


def _record(layer: int, items: list[Any]) -> Any:
    tags = {tracking.TAG_ENTRY_POINT: TRIAL_ENTRY_POINT}
    return tracking.recorder(tags, {"resolved_layer": layer, "n_items": len(items)}, "trial_items.json")


def _pairs(args: Any, settings: dose.DoseSettings, loaded: Any) -> tuple[Any, str, dict[str, Any]]:
    """Marker -> function-name edges of the attention-pairs Rust items, against the Python reference level."""
    path = PAIRS if args.corpus == "auto" else args.corpus
    corpus, pairs = load_attention_pairs(path, cli.as_int("limit", args.limit, 0))
    expect = {"model": loaded.spec, "target": args.target, "chat": str(settings.chat).lower()}
    rows = None
    if args.measure_run_id:
        rows = tracking.finished_run_table(args.measure_run_id, "measure_attention", expect, "layer_stats.json")
    layer = dose.resolve_layer(args.layer, loaded, rows)
    ctx = {"run_id": args.measure_run_id, "loaded": loaded, "target": args.target, "chat": settings.chat}
    log_items = lambda items: tracking.log_table(items, "reference_items.json")  # noqa: E731
    ctx["batch"] = settings.batch_size
    reference, source = dose.reference_level(rows, layer, args.metric, [p for p, _ in pairs], ctx, log_items)
    rust = [r for _, r in pairs]
    facts = {"corpus_sha256": corpus.sha256, "n_items": len(rust), "resolved_split": "all"}
    return dose.DoseObjective(loaded, rust, layer, reference, settings, _record(layer, rust)), source, facts


def _rule(args: Any, settings: dose.DoseSettings, loaded: Any) -> tuple[Any, str, dict[str, Any]]:
    """A named n50 edge rule (as generate_n50 scales it) on the calibration split, against `target_share`."""
    corpus = load_prompt_corpus(N50 if args.corpus == "auto" else args.corpus)
    prompts = [cp.as_prompt() for cp in select_split(corpus.prompts, args.split, cli.as_int("limit", args.limit, 0))]
    layer = cli.as_layer("layer", args.layer, loaded)
    share = cli.as_float("target_share", args.target_share)
    tokens, rec = cli.as_int("max_new_tokens", args.max_new_tokens, 1), _record(layer, prompts)
    objective = RuleDoseObjective(loaded, prompts, args.edge_rule, layer, share, settings, tokens, rec)
    facts = {"corpus_sha256": corpus.sha256, "n_items": len(prompts), "resolved_split": args.split}
    facts |= {"continuation_tokens": tokens, "prompt_ids_digest": ids_digest([p.id for p in prompts])}
    return objective, "target_share", facts


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("calibrate_dose", vars(args), experiment=args.experiment):
        seed = cli.as_int("seed", args.seed)
        settings, make_study = settings_and_study(args, seed)
        if args.edge_rule != "none":
            edge_rule(args.edge_rule)  # a bad name fails before the model loads
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        objective, source, facts = (_pairs if args.edge_rule == "none" else _rule)(args, settings, loaded)
        layer, reference = objective.layer, objective.reference
        tracking.set_tags({tracking.TAG_REFERENCE_SOURCE: source})
        described = {k: str(v) for k, v in objective.describe().items()}
        study_facts = {"model": loaded.describe(), "layer": layer, "reference": round(reference, 12), **facts}
        study_facts |= {**described, "chat": args.chat, "sampler": args.sampler, "code": tracking.code_version()}
        config = make_study(study_name(args.study_name, "dose", study_facts, label=[loaded.spec, f"L{layer}"]))
        logged = {"resolved_layer": layer, "hook": "attention_post_softmax", **facts}
        logged |= {"resolved_study_name": config.study_name, "resolved_storage": redact_storage(config.storage)}
        tracking.log_params(logged | loaded.params())
        checks = objective.identity_check()
        tracking.log_metrics({**checks, "reference_level": reference})
        require_identity(checks, [IDENTITY_KEY, "kl_at_scale_1"])
        study = run_study(objective, config, metric_names=["objective"])
        result = dose.chosen(study, reference, layer, objective.describe()) | {"reference_source": source, "seed": seed}
        tracking.log_json(result | {"split": facts["resolved_split"]}, "chosen_scale.json")
        keys = {"chosen_scale": "scale", "chosen_level": "level_reached", "chosen_objective": "objective"}
        keys |= {"chosen_kl_mean": "kl_mean", "reference_bracketed": "reference_bracketed"}
        tracking.log_metrics({k: result[v] for k, v in keys.items()})
        print(json.dumps({k: result[k] for k in ("scale", "level_reached", "reference_level", "kl_mean")} | checks))


if __name__ == "__main__":
    tracking.entry_point(main)
