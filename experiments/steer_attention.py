"""Entry point `steer_attention` (seed 002, phase 4): does steering Rust test attention to the Python level help?

Prompts: each Rust test item of the attention corpus cut right after `fn test_<name>() {` plus a newline, so the
model writes the test body. Edit: `AttentionEdit(op="target")` at one layer from the `#[test]` marker and every
later position (generated tokens included) to the function's tokens in the definition above (`target`), which
sets those edges' share of each row. Conditions, all through the same generation path (greedy, batched):
`baseline` (op="scale", value 1.0: the identity, checked bit-identical to the unhooked model), `steered` (share =
the Python reference total mass at the layer, from a `measure_attention` run or measured here), `over_steered`
(the reference x (1 + over_steer)), and a ladder of absolute shares `level_<v>`. Each completion is scored by
`steerkit.rust_test_quality` (calls the function, argument count, literal argument types, asserts; `quality` =
all four). Per condition vs baseline on `quality`: exact McNemar (paired) and the paired risk difference with a
Newcombe CI, BH over the declared family of steered conditions. Dose-response: logistic regression of `quality`
on the share (the baseline's dose is each item's natural share, measured at the marker), or a Cochran-Armitage
trend test when the fit separates.

Usage: mlflow run . -e steer_attention --env-manager local -P limit=8
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibrate_dose as cd  # noqa: E402
import measure_attention as ma  # noqa: E402

from steerkit import tracking  # noqa: E402
from steerkit.attention_measure import TARGET_CHOICES, edge_edit, level, measure  # noqa: E402
from steerkit.attention_stats import dose_response  # noqa: E402
from steerkit.cli import as_bool, as_float, as_float_list, as_int  # noqa: E402
from steerkit.core.generation import GenerationConfig, Prompt, generate, next_token_logits  # noqa: E402
from steerkit.core.models import LoadedModel, load_model  # noqa: E402
from steerkit.corpora.attention_pairs import AttentionItem  # noqa: E402
from steerkit.errors import SteerkitError  # noqa: E402
from steerkit.metrics import kl_divergence  # noqa: E402
from steerkit.rust_test_quality import score_rust_test  # noqa: E402
from steerkit.stats import benjamini_hochberg, mcnemar_exact, paired_outcomes, paired_risk_difference  # noqa: E402

OUTCOMES = ("quality", "calls_function", "arg_count_ok", "arg_types_ok", "has_assert")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="steer_attention", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layer", default="auto", help="index, 'auto' = round(0.6 * n_layers), or 'measure'")
    p.add_argument("--levels", default="0.01,0.03,0.1,0.3", help="ladder of absolute shares in (0, 1)")
    p.add_argument("--over-steer", default=0.15, help="over_steered share = reference x (1 + over_steer)")
    p.add_argument("--measure-run-id", default="", help="a FINISHED measure_attention run ('' = measure here)")
    p.add_argument("--target", default="function_name", help=", ".join(TARGET_CHOICES))
    p.add_argument("--max-new-tokens", default=64)
    p.add_argument("--batch-size", default=16)
    p.add_argument("--limit", default=0, help="first N Rust test items (0 = all)")
    p.add_argument("--alpha", default=0.05)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--chat", default="false")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def cut_prompt(item: AttentionItem) -> Prompt:
    """The Rust item cut right after `fn test_<name>() {`, plus a newline."""
    found = re.search(r"^fn test_\w*\(\)\s*\{", item.code, re.M)
    if found is None:
        raise SteerkitError(f"item {item.id!r} has no `fn test_...() {{` line to cut after")
    return Prompt(item.id, item.code[: found.end()] + "\n")


def as_prompt_items(items: list[AttentionItem]) -> list[AttentionItem]:
    """The items with their code replaced by the cut prompt (selectors then resolve on what the model sees)."""
    from dataclasses import replace

    return [replace(i, code=cut_prompt(i).text) for i in items]


def conditions(reference: float, over: float, ladder: list[float]) -> dict[str, tuple[str, float]]:
    """Condition name -> (op, value): baseline identity, steered, over-steered, then the ladder."""
    out = {
        "baseline": ("scale", 1.0),
        "steered": ("target", reference),
        "over_steered": ("target", reference * (1 + over)),
    }
    for v in ladder:
        out[f"level_{v:g}"] = ("target", v)
    for name, (op, v) in out.items():
        if op == "target" and not 0.0 < v < 1.0:
            raise SteerkitError(f"condition {name} needs a share in (0, 1), got {v!r}")
    return out


def run_condition(
    loaded: LoadedModel, items: list[AttentionItem], edit: Any, cfg: GenerationConfig, name: str
) -> list[dict]:
    """Generate under `edit`, appending each scored completion to `samples/<name>.jsonl` per batch."""
    log = tracking.SampleLog(name)
    code = {i.id: i.code for i in items}

    def on_result(gen: Any) -> None:
        score = score_rust_test(gen.text, code[gen.prompt_id]).to_dict()
        log.append({"id": gen.prompt_id, "condition": name, **gen.to_dict(), **score})
        if len(log.records) % cfg.batch_size == 0 or len(log.records) == len(items):
            log.flush()

    generate(loaded, [i.as_prompt() for i in items], interventions=[edit], config=cfg, on_result=on_result)
    log.flush()
    order = {i.id: n for n, i in enumerate(items)}
    return sorted(log.records, key=lambda r: order[r["id"]])


def compare_to_baseline(results: dict[str, list[dict]], alpha: float) -> list[dict[str, Any]]:
    """Per steered condition and outcome: McNemar exact + paired risk difference; BH over conditions on quality."""
    base = results["baseline"]
    rows = []
    for name, recs in results.items():
        if name == "baseline":
            continue
        for outcome in OUTCOMES:
            b_flags, s_flags = [r[outcome] for r in base], [r[outcome] for r in recs]
            counts = paired_outcomes(b_flags, s_flags)
            rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
            rows.append(
                {
                    "condition": name,
                    "outcome": outcome,
                    "n": counts.n,
                    "baseline_rate": sum(b_flags) / counts.n,
                    "rate": sum(s_flags) / counts.n,
                    "b": counts.b,
                    "c": counts.c,
                    "mcnemar_p": mcnemar_exact(counts.b, counts.c).p_value,
                    "risk_difference": rd.estimate,
                    "rd_low": rd.low,
                    "rd_high": rd.high,
                    "n_identical_outputs": sum(x["token_ids"] == y["token_ids"] for x, y in zip(base, recs)),
                }
            )
    primary = [r for r in rows if r["outcome"] == "quality"]
    bh = benjamini_hochberg([r["mcnemar_p"] for r in primary], alpha)
    for r, q, rej in zip(primary, bh.q_values, bh.rejected):
        r["bh_q"], r["bh_reject"] = q, rej
    return rows


def dose_data(results: dict[str, list[dict]], plan: dict[str, tuple[str, float]], natural: dict[str, float]):
    """(dose, quality) per sample: the baseline's dose is the item's natural share, others the set share."""
    doses, flags = [], []
    for name, recs in results.items():
        for r in recs:
            doses.append(natural[r["id"]] if name == "baseline" else plan[name][1])
            flags.append(bool(r["quality"]))
    return doses, flags


def plot_dose(results: dict[str, list[dict]], plan: dict[str, tuple[str, float]], natural: dict[str, float]) -> Any:
    from steerkit.plots import plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in results.items():
        x = sum(natural.values()) / len(natural) if name == "baseline" else plan[name][1]
        ax.scatter([x], [sum(r["quality"] for r in recs) / len(recs)], label=name)
    ax.set_xlabel("attention share at the layer (marker and later -> function tokens)")
    ax.set_ylabel("quality rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def reference_share(args: Any, loaded: LoadedModel, pairs: list, chat: bool) -> tuple[int, float, str]:
    """Layer and Python reference total mass (the share the `steered` condition sets)."""
    rows = cd.measure_run_rows(args.measure_run_id, loaded, args.target, chat) if args.measure_run_id else None
    layer = cd.resolve_layer(args.layer, loaded, rows)
    ctx = {"run_id": args.measure_run_id, "loaded": loaded, "target": args.target, "chat": chat, "batch": 8}
    reference, source = cd.reference_level(rows, layer, "total_mass", [p for p, _ in pairs], ctx)
    return layer, reference, source


def natural_shares(loaded: LoadedModel, items: list[AttentionItem], layer: int, target: str, chat: bool) -> tuple:
    """Per item the unsteered share at the marker (identity edit in the pass), and the identity logit check."""
    ident = edge_edit(items, layer, op="scale", value=1.0, target=target, sources="from_marker")
    found = measure(loaded, items, layers=[layer], target=target, chat=chat, interventions=[ident])
    plain = next_token_logits(loaded, [i.as_prompt() for i in items], chat=chat)
    shares = dict(zip((i.id for i in items), level(found.items, layer, "total_mass").tolist()))
    return shares, float((plain - found.logits).abs().max()), found.logits


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("steer_attention", vars(args), experiment=args.experiment):
        ma.choice("target", args.target, TARGET_CHOICES)
        ladder = as_float_list("levels", args.levels)
        bad = [v for v in ladder if not 0.0 < v < 1.0]
        if bad:
            raise SteerkitError(f"levels must be shares in (0, 1), got {bad[0]!r}")
        over = as_float("over_steer", args.over_steer, 0.0)
        chat, alpha = as_bool("chat", args.chat), as_float("alpha", args.alpha, 0.0)
        cfg = GenerationConfig(
            max_new_tokens=as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=as_int("batch_size", args.batch_size, 1),
            chat=chat,
        )
        corpus, pairs = ma.load_pairs(args.corpus, as_int("limit", args.limit, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        layer, reference, source = reference_share(args, loaded, pairs, chat)
        plan = conditions(reference, over, ladder)
        items = as_prompt_items([r for _, r in pairs])
        natural, ident_diff, base_logits = natural_shares(loaded, items, layer, args.target, chat)
        tracking.set_tags({"steerkit.reference_source": source})
        tracking.log_params(
            {
                "resolved_layer": layer,
                "hook": "attention_post_softmax",
                "n_prompts": len(items),
                "corpus_sha256": corpus.sha256,
                "conditions": {k: list(v) for k, v in plan.items()},
                "generation": cfg.to_dict(),
                **{f"model_{k}": v for k, v in loaded.describe().items()},
            }
        )
        t0 = time.perf_counter()
        results, kl = {}, {}
        for name, (op, value) in plan.items():
            edit = edge_edit(items, layer, op=op, value=value, target=args.target, sources="from_marker")
            steered_logits = next_token_logits(loaded, [i.as_prompt() for i in items], interventions=[edit], chat=chat)
            kl[f"kl_{name}"] = float(kl_divergence(base_logits, steered_logits).mean())
            results[name] = run_condition(loaded, items, edit, cfg, name)
        rows = compare_to_baseline(results, alpha)
        dr = dose_response(*dose_data(results, plan, natural))
        tracking.log_table([r for recs in results.values() for r in recs], "samples.json")
        tracking.log_table(rows, "conditions.json")
        tracking.log_json(dr.to_dict(), "dose_response.json")
        tracking.log_figure(plot_dose(results, plan, natural), "quality_vs_share.png")
        rates = {f"rate_{n}": sum(r["quality"] for r in recs) / len(recs) for n, recs in results.items()}
        primary = {f"mcnemar_p_{r['condition']}": r["mcnemar_p"] for r in rows if r["outcome"] == "quality"}
        tracking.log_metrics(
            {
                **rates,
                **primary,
                **kl,
                "reference_share": reference,
                "natural_share_mean": sum(natural.values()) / len(natural),
                "identity_max_abs_logit_diff": ident_diff,
                "dose_slope": dr.slope,
                "dose_slope_low": dr.low,
                "dose_slope_high": dr.high,
                "dose_p": dr.p_value,
                "family_size": len(primary),
                "experiment_seconds": time.perf_counter() - t0,
            }
        )
        print(json.dumps(rates | {"dose": dr.to_dict(), "reference_share": reference, "identity": ident_diff}))


if __name__ == "__main__":
    tracking.entry_point(main)
