"""Seed 002, generation: complete Python doctests with the marker's attention to the signature knocked out.

Design note: three arms generate from the same prompts through the same path: the baseline (scale 1.0 on the
edges, checked bit-identical to the unhooked model), `knockout` (the edges from the last `>>>` marker and every
later position to the function-name and parameter tokens removed before softmax) and `amplify` (scaled). Each
completion is scored statically (`doctest_scoring.SCORES`) and, for `passes`, run in the sandbox against the
reference; every (arm, score) is compared with the baseline by exact McNemar, BH over all of them.
"""

from __future__ import annotations

from typing import Any

from steerkit.attention.doctest_scoring import SCORES, run_passes, score_static
from steerkit.core.generation import GenerationConfig, encode_prompts, generate
from steerkit.core.models import LoadedModel
from steerkit.core.positions import Explicit, PerPrompt, Selector
from steerkit.core.records import RecordLog
from steerkit.corpora.doctests import DoctestPrompt
from steerkit.stats import benjamini_hochberg, mcnemar_exact, paired_outcomes, paired_risk_difference

MARKER = r">>>"
ARMS = ("knockout", "amplify")


def target_selector(loaded: LoadedModel, items: list[DoctestPrompt]) -> PerPrompt:
    """Per prompt: the tokens of the function name and of every parameter name in the signature."""
    encoded = encode_prompts(loaded, [i.as_prompt() for i in items], chat=False)
    by_id: dict[str, Selector] = {}
    for item, enc in zip(items, encoded):
        spans = [s for group in item.target_spans().values() for s in group]
        tokens = sorted({t for a, b in spans for t in enc.char_span_tokens(a, b)})
        by_id[item.id] = Explicit(tuple(tokens))
    return PerPrompt.of(by_id)


def run_arm(
    loaded: LoadedModel, items: list[DoctestPrompt], edit: Any, cfg: GenerationConfig, log: RecordLog
) -> list[dict]:
    """Generate one arm, writing each completion to `log` as its batch finishes; records in corpus order."""

    def on_result(gen: Any) -> None:
        log.append(gen.to_dict())
        if len(log.records) % cfg.batch_size == 0 or len(log.records) == len(items):
            log.flush()

    generate(loaded, [i.as_prompt() for i in items], interventions=[edit], config=cfg, on_result=on_result)
    by_id = {r["prompt_id"]: r for r in log.records}
    return [by_id[i.id] for i in items]


def score_arm(items: list[DoctestPrompt], records: list[dict], arm: str, workers: int, log: RecordLog) -> list[dict]:
    """Static scores, then `passes` from the sandbox; one row per item, appended to `log`."""
    static = [score_static(item, rec["text"]) for item, rec in zip(items, records)]
    passes = run_passes(items, static, workers=workers)
    rows = []
    for item, rec, score, (passed, result) in zip(items, records, static, passes):
        row = {"id": item.id, "arm": arm, "text": rec["text"], "n_tokens": rec["n_tokens"], **score.to_dict()}
        row |= {"passes": passed, "sandbox_status": result.status if result else None}
        row |= {"sandbox_error": result.error_kind if result else None}
        row.pop("examples")
        log.append(row)
        rows.append(row)
    log.flush()
    return rows


def paired_stats(base: list[dict], arms: dict[str, list[dict]], alpha: float) -> list[dict]:
    """McNemar (exact) and the paired risk difference per (arm, score) vs baseline; BH over all of them."""
    out: list[dict[str, Any]] = []
    for arm, rows in arms.items():
        for score in SCORES:
            b_flags, a_flags = [bool(r[score]) for r in base], [bool(r[score]) for r in rows]
            counts = paired_outcomes(b_flags, a_flags)
            rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
            out.append({
                "arm": arm, "score": score, "n": counts.n, "baseline_rate": sum(b_flags) / counts.n,
                "arm_rate": sum(a_flags) / counts.n, "b": counts.b, "c": counts.c,
                "mcnemar_p": mcnemar_exact(counts.b, counts.c).p_value,
                "risk_difference": rd.estimate, "rd_low": rd.low, "rd_high": rd.high,
            })  # fmt: skip
    bh = benjamini_hochberg([r["mcnemar_p"] for r in out], alpha=alpha)
    for r, q, rej in zip(out, bh.q_values, bh.rejected):
        r["q_value"], r["rejected"] = q, rej
    return out


def arm_metrics(scored: dict[str, list[dict]], stats: list[dict], n: int) -> dict[str, Any]:
    """Rates per (arm, score), outputs identical to the baseline per arm, and each paired test's p, q and RD."""
    metrics: dict[str, Any] = {}
    for arm in scored:
        metrics |= {f"{arm}_{s}_rate": sum(bool(r[s]) for r in scored[arm]) / n for s in SCORES}
        metrics[f"{arm}_identical_to_baseline"] = sum(
            a["text"] == b["text"] for a, b in zip(scored[arm], scored["baseline"])
        )
    for r in stats:
        key = f"{r['arm']}.{r['score']}"
        metrics |= {f"{key}.mcnemar_p": r["mcnemar_p"], f"{key}.q": r["q_value"], f"{key}.rd": r["risk_difference"]}
    return metrics
