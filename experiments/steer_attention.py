"""Entry point `steer_attention` (seed 002, phase 4): does steering Rust test attention to the Python level help?

Prompts: each Rust test item of the attention corpus cut right after `fn test_<name>() {` plus a newline, so the
model writes the test body. Edit: `AttentionEdit(op="target")` at one layer from the `#[test]` marker and every
later position (generated tokens included) to the function's tokens in the definition above (`target`), which
sets those edges' share of each row. Conditions, all through the same generation path (greedy, batched):
`baseline` (op="scale", value 1.0: the identity, checked bit-identical to the unhooked model), `steered` (share =
the Python reference total mass at the layer, from a `measure_attention` run or measured here), `over_steered`
(the reference x (1 + over_steer)), and a ladder of absolute shares `level_<v>`. Primary outcome, where every
item has a `reference` and `mutant` (the stock corpus does): `valid_test`, the completed test compiled and run
against the reference in the sandbox (generate_n50's scoring), with `test_compiles` / `test_fails_on_mutant`;
secondary: the text scores of `steerkit.attention.rust_quality` (`text_quality` = calls the function, argument
count, literal argument types, asserts), the primary only without references. Per condition vs baseline on the
primary: exact McNemar (paired by prompt id), paired risk difference (Newcombe CI), BH over the steered
conditions. Dose-response: GEE (Binomial, exchangeable, clustered by prompt id, robust SE) of the primary on the
ASSIGNED share of the target conditions (the baseline's natural share is measured, not assigned: left out).

Usage: mlflow run . -e steer_attention --env-manager local -P limit=8
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.attention import dose, steer
from steerkit.attention.measure import TARGET_CHOICES, edge_edit
from steerkit.attention.reports import plot_dose
from steerkit.core.checks import IDENTITY_KEY, require_identity
from steerkit.core.generation import GenerationConfig, next_token_logits
from steerkit.core.models import LoadedModel, load_model
from steerkit.corpora.attention_pairs import load_attention_pairs
from steerkit.errors import SteerkitError
from steerkit.metrics import kl_divergence
from steerkit.stats.design import Design
from steerkit.stats.dose_response import dose_response


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("steer_attention", __doc__)
    cli.add_model_args(p)
    p.add_argument("--layer", default="auto", help="index, 'auto' = round(0.6 * n_layers), or 'measure'")
    p.add_argument("--levels", default="0.01,0.03,0.1,0.3", help="ladder of absolute shares in (0, 1)")
    p.add_argument("--over-steer", default=0.15, help="over_steered share = reference x (1 + over_steer)")
    p.add_argument("--measure-run-id", default="", help="a FINISHED measure_attention run ('' = measure here)")
    p.add_argument("--target", default="function_name", help=", ".join(TARGET_CHOICES))
    p.add_argument("--max-new-tokens", default=64)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--limit", default=0, help="first N Rust test items (0 = all)")
    p.add_argument("--alpha", default=0.05)
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--chat", default="false")
    p.add_argument("--experiment", default="steerkit")
    cli.add_design_args(p)
    return p.parse_args(argv)


def reference_share(args: Any, loaded: LoadedModel, pairs: list, chat: bool) -> tuple[int, float, str]:
    """Layer and Python reference total mass (the share the `steered` condition sets)."""
    expect = {"model": loaded.spec, "target": args.target, "chat": str(chat).lower()}
    rows = None
    if args.measure_run_id:
        rows = tracking.finished_run_table(args.measure_run_id, "measure_attention", expect, "layer_stats.json")
    layer = dose.resolve_layer(args.layer, loaded, rows)
    ctx = {"run_id": args.measure_run_id, "loaded": loaded, "target": args.target, "chat": chat, "batch": 8}
    log_items = lambda items: tracking.log_table(items, "reference_items.json")  # noqa: E731
    reference, source = dose.reference_level(rows, layer, "total_mass", [p for p, _ in pairs], ctx, log_items)
    return layer, reference, source


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("steer_attention", vars(args), experiment=args.experiment):
        cli.as_choice("target", args.target, TARGET_CHOICES)
        ladder = cli.as_float_list("levels", args.levels)
        bad = [v for v in ladder if not 0.0 < v < 1.0]
        if bad:
            raise SteerkitError(f"levels must be shares in (0, 1), got {bad[0]!r}")
        over = cli.as_float("over_steer", args.over_steer, 0.0)
        chat, alpha = cli.as_bool("chat", args.chat), cli.as_float("alpha", args.alpha, 0.0)
        cfg = GenerationConfig(
            max_new_tokens=cli.as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=cli.as_int("batch_size", args.batch_size, 1),
            chat=chat,
        )
        corpus, pairs = load_attention_pairs(args.corpus, cli.as_int("limit", args.limit, 0))
        # family: every steered condition (steered, over_steered, the ladder) vs baseline on the primary outcome
        primary, secondary = steer.outcome_plan([r for _, r in pairs])
        design = Design(primary, "mcnemar_exact", len(pairs), family_size=2 + len(ladder), alpha=alpha)
        tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
        layer, reference, source = reference_share(args, loaded, pairs, chat)
        plan = steer.conditions(reference, over, ladder)
        items = steer.as_prompt_items([r for _, r in pairs])
        natural, ident_diff, base_logits = steer.natural_shares(loaded, items, layer, args.target, chat)
        tracking.set_tags({tracking.TAG_REFERENCE_SOURCE: source, "steerkit.primary_outcome": primary})
        tracking.log_params(
            {
                "resolved_layer": layer,
                "hook": "attention_post_softmax",
                "n_prompts": len(items),
                "corpus_sha256": corpus.sha256,
                "primary_outcome": primary,
                "secondary_outcomes": ",".join(secondary),
                "conditions": {k: list(v) for k, v in plan.items()},
                "generation": cfg.to_dict(),
                **loaded.params(),
            }
        )
        tracking.log_metrics({IDENTITY_KEY: ident_diff})
        require_identity({IDENTITY_KEY: ident_diff})
        t0 = time.perf_counter()
        results, kl = {}, {}
        for name, (op, value) in plan.items():
            edit = edge_edit(items, layer, op=op, value=value, target=args.target, sources="from_marker")
            steered_logits = next_token_logits(loaded, [i.as_prompt() for i in items], interventions=[edit], chat=chat)
            kl[f"kl_{name}"] = float(kl_divergence(base_logits, steered_logits).mean())
            results[name] = steer.run_condition(loaded, items, edit, cfg, name, tracking.SampleLog(name))
        if primary == "valid_test":
            steer.score_executable(items, results)  # every condition's completions in one sandbox batch
        rows = steer.compare_to_baseline(results, alpha, primary, secondary)
        dr = dose_response(*steer.dose_data(results, plan, primary))  # assigned shares only, clustered by prompt
        tracking.log_table([r for recs in results.values() for r in recs], "samples.json")
        tracking.log_table(rows, "conditions.json")
        tracking.log_json(dr.to_dict(), "dose_response.json")
        tracking.log_figure(plot_dose(results, plan, natural, primary), f"{primary}_vs_share.png")
        rates = steer.rates(results, tuple(dict.fromkeys((primary, "text_quality"))))
        tests = {f"mcnemar_p_{r['condition']}": r["mcnemar_p"] for r in rows if r["primary"]}
        tracking.log_metrics(
            {**rates, **tests, **kl, "reference_share": reference, "family_size": len(tests)}
            | {"natural_share_mean": sum(natural.values()) / len(natural), "dose_p": dr.p_value}
            | {"dose_slope": dr.slope, "dose_slope_low": dr.low, "dose_slope_high": dr.high, "dose_slope_se": dr.se}
            | {"experiment_seconds": time.perf_counter() - t0}
        )
        print(json.dumps(rates | {"dose": dr.to_dict(), "reference_share": reference, "identity": ident_diff}))


if __name__ == "__main__":
    tracking.entry_point(main)
