"""Seed 000, phase 2: generate Rust tests with the marker's attention to the function set to chosen shares.

Design note: every condition is an `AttentionEdit` at one layer from the `#[test]` marker (and every later token)
to the function's tokens, applied while generating from the Rust item cut after `fn test_<name>() {`: the baseline
is the identity (`scale` 1.0, the same code path; its logits are checked bit-identical to the unhooked model),
`steered` sets the share to the Python reference, `over_steered` above it, then a ladder of absolute shares.
Completions are scored as Rust tests (`rust_quality`); each condition is compared with the baseline by exact
McNemar and a paired risk difference, BH over the conditions on the primary outcome (quality). The dose-response
data (`dose_data`) hold the assigned shares only, clustered by prompt id.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from steerkit.attention.measure import edge_edit, level, measure
from steerkit.attention.rust_quality import score_rust_test
from steerkit.core.checks import max_abs_diff
from steerkit.core.generation import GenerationConfig, Prompt, generate, next_token_logits
from steerkit.core.models import LoadedModel
from steerkit.core.records import RecordLog
from steerkit.corpora.attention_pairs import AttentionItem
from steerkit.errors import SteerkitError
from steerkit.stats import benjamini_hochberg, mcnemar_exact, paired_outcomes, paired_risk_difference

OUTCOMES = ("quality", "calls_function", "arg_count_ok", "arg_types_ok", "has_assert")


def cut_prompt(item: AttentionItem) -> Prompt:
    """The Rust item cut right after `fn test_<name>() {`, plus a newline."""
    found = re.search(r"^fn test_\w*\(\)\s*\{", item.code, re.M)
    if found is None:
        raise SteerkitError(f"item {item.id!r} has no `fn test_...() {{` line to cut after")
    return Prompt(item.id, item.code[: found.end()] + "\n")


def as_prompt_items(items: list[AttentionItem]) -> list[AttentionItem]:
    """The items with their code replaced by the cut prompt (selectors then resolve on what the model sees)."""
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
    loaded: LoadedModel, items: list[AttentionItem], edit: Any, cfg: GenerationConfig, name: str, log: RecordLog
) -> list[dict]:
    """Generate under `edit`, appending each scored completion to `log` (flushed per batch)."""
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


def dose_data(
    results: dict[str, list[dict]], plan: dict[str, tuple[str, float]], outcome: str = "quality"
) -> tuple[list[float], list[bool], list[str]]:
    """(dose, outcome, prompt id) per sample of every condition with an ASSIGNED share (`op="target"`).

    The baseline (identity) has no assigned share: its natural share is measured and varies by prompt, so it
    would confound the slope with prompt difficulty; it is left out. The prompt id is the GEE cluster.
    """
    doses, flags, ids = [], [], []
    for name, recs in results.items():
        op, value = plan[name]
        if op != "target":
            continue
        for r in recs:
            doses.append(value)
            flags.append(bool(r[outcome]))
            ids.append(str(r["id"]))
    return doses, flags, ids


def natural_shares(loaded: LoadedModel, items: list[AttentionItem], layer: int, target: str, chat: bool) -> tuple:
    """Per item the unsteered share at the marker (identity edit in the pass), and the identity logit check."""
    ident = edge_edit(items, layer, op="scale", value=1.0, target=target, sources="from_marker")
    found = measure(loaded, items, layers=[layer], target=target, chat=chat, interventions=[ident])
    plain = next_token_logits(loaded, [i.as_prompt() for i in items], chat=chat)
    shares = dict(zip((i.id for i in items), level(found.items, layer, "total_mass").tolist()))
    return shares, max_abs_diff(plain, found.logits), found.logits
