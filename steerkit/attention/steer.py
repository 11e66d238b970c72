"""Seed 000, phase 2: generate Rust tests with the marker's attention to the function set to chosen shares.

Design note: every condition is an `AttentionEdit` at one layer from the `#[test]` marker (and every later token)
to the function's tokens, applied while generating from the Rust item cut after `fn test_<name>() {`: the baseline
is the identity (`scale` 1.0, the same code path; its logits are checked bit-identical to the unhooked model),
`steered` sets the share to the Python reference, `over_steered` above it, then a ladder of absolute shares.
Primary outcome (`outcome_plan`): where every item has a `reference` and a `mutant`, the executable `valid_test`
of `steerkit.metrics.rust_validity` (the test the model completed, compiled and run against the reference in the
sandbox; the same `score_valid_tests` generate_n50 scores with), with `test_compiles` and `test_fails_on_mutant`;
the text scores of `rust_quality` are secondary and named so (`text_quality`, `text_calls_function`, ...), and are
the primary only for a corpus without references. Each condition is compared with the baseline by exact McNemar
and a paired risk difference on rows joined by prompt id, BH over the conditions on the primary outcome. The
dose-response data (`dose_data`) hold the assigned shares only, clustered by prompt id.
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
from steerkit.metrics.rust_validity import Runner, TestProblem, score_valid_tests
from steerkit.stats import benjamini_hochberg, join_by_id, mcnemar_exact, paired_outcomes, paired_risk_difference

TEXT_OUTCOMES = ("text_quality", "text_calls_function", "text_arg_count_ok", "text_arg_types_ok", "text_has_assert")
EXEC_OUTCOMES = ("valid_test", "test_compiles", "test_fails_on_mutant")


def outcome_plan(items: list[AttentionItem]) -> tuple[str, tuple[str, ...]]:
    """(primary, secondary outcomes): `valid_test` when every item has a reference and a mutant, else the text
    score `text_quality` (a partly referenced corpus would score the two outcomes on different items)."""
    if items and all(i.reference is not None and i.mutant is not None for i in items):
        return "valid_test", (*EXEC_OUTCOMES[1:], *TEXT_OUTCOMES)
    return "text_quality", TEXT_OUTCOMES[1:]


def _test_problem(item: AttentionItem) -> tuple[TestProblem, str]:
    """(problem, test head): the cut prompt split at its `#[test]` marker; the head is prepended to the completion
    so the scored text is the whole test function the model completed."""
    start = item.code.find("#[test]")
    if start < 0 or item.reference is None or item.mutant is None:
        raise SteerkitError(f"item {item.id!r} has no `#[test]` marker or no reference and mutant to score against")
    return TestProblem(item.code[:start], item.reference, item.mutant), item.code[start:]


def score_executable(items: list[AttentionItem], results: dict[str, list[dict]], run: Runner | None = None) -> None:
    """Add `valid_test`, `test_compiles`, `test_fails_on_mutant`, `valid_reason` to every record of every condition,
    all scored in one sandbox batch (`rust_validity.score_valid_tests`; `run` = its sandbox runner when None)."""
    problems = {i.id: _test_problem(i) for i in items}
    todo = [r for recs in results.values() for r in recs]
    pairs = [(problems[r["id"]][0], problems[r["id"]][1] + r["text"]) for r in todo]
    for record, v in zip(todo, score_valid_tests(pairs, run)):
        record |= {k: getattr(v, k) for k in EXEC_OUTCOMES} | {"valid_reason": v.reason}


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
        score = {f"text_{k}": v for k, v in score_rust_test(gen.text, code[gen.prompt_id]).to_dict().items()}
        log.append({"id": gen.prompt_id, "condition": name, **gen.to_dict(), **score})
        if len(log.records) % cfg.batch_size == 0 or len(log.records) == len(items):
            log.flush()

    generate(loaded, [i.as_prompt() for i in items], interventions=[edit], config=cfg, on_result=on_result)
    log.flush()
    order = {i.id: n for n, i in enumerate(items)}
    return sorted(log.records, key=lambda r: order[r["id"]])


def compare_to_baseline(
    results: dict[str, list[dict]], alpha: float, primary: str, outcomes: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Per steered condition and outcome (rows joined by prompt id): McNemar exact + paired risk difference; BH
    over the conditions on `primary`."""
    rows = []
    for name, recs in results.items():
        if name == "baseline":
            continue
        pairs = join_by_id(results["baseline"], recs, key="id", names=("baseline", name))
        for outcome in (primary, *outcomes):
            b_flags, s_flags = [bool(b[outcome]) for b, _ in pairs], [bool(s[outcome]) for _, s in pairs]
            counts = paired_outcomes(b_flags, s_flags)
            rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
            rows.append(
                {
                    "condition": name,
                    "outcome": outcome,
                    "primary": outcome == primary,
                    "n": counts.n,
                    "baseline_rate": sum(b_flags) / counts.n,
                    "rate": sum(s_flags) / counts.n,
                    "b": counts.b,
                    "c": counts.c,
                    "mcnemar_p": mcnemar_exact(counts.b, counts.c).p_value,
                    "risk_difference": rd.estimate,
                    "rd_low": rd.low,
                    "rd_high": rd.high,
                    "n_identical_outputs": sum(b["token_ids"] == s["token_ids"] for b, s in pairs),
                }
            )
    first = [r for r in rows if r["primary"]]
    bh = benjamini_hochberg([r["mcnemar_p"] for r in first], alpha)
    for r, q, rej in zip(first, bh.q_values, bh.rejected):
        r["bh_q"], r["bh_reject"] = q, rej
    return rows


def rates(results: dict[str, list[dict]], outcomes: tuple[str, ...]) -> dict[str, float]:
    """`<outcome>_rate_<condition>` for each outcome and condition."""
    return {f"{o}_rate_{n}": sum(bool(r[o]) for r in recs) / len(recs) for o in outcomes for n, recs in results.items()}


def dose_data(
    results: dict[str, list[dict]], plan: dict[str, tuple[str, float]], outcome: str = "valid_test"
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
