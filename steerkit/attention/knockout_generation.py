"""Seed 002, generation: complete Python doctests with the marker's attention to the signature knocked out.

Design note: four arms generate from the same prompts through the same path: the baseline (scale 1.0 on the
edges, checked bit-identical to the unhooked model), `knockout` (the edges from the last `>>>` marker and every
later position to the function-name and parameter tokens removed before softmax), `control` (the same queries'
edges to random keys before the marker removed instead, the keys drawn per prompt so that the prompt's baseline
attention mass on them matches the targets' within a tolerance: `knockout_controls`) and `amplify` (scaled).
The mass is measured on the prompt (the generated tokens are not known beforehand). Each completion is scored
statically (`doctest_scoring.SCORES`) and, for `passes`, run in the sandbox against the reference. Contrasts
(`CONTRASTS`): every arm vs the baseline and knockout vs control, each (contrast, score) by exact McNemar on
rows joined by prompt id, BH over all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from steerkit.attention.doctest_scoring import SCORES, run_passes, score_static
from steerkit.attention.knockout_controls import MatchedControl, key_mass, matched_control_keys
from steerkit.core.generation import GenerationConfig, encode_prompts, generate
from steerkit.core.models import LoadedModel
from steerkit.core.positions import Explicit, Pattern, PerPrompt, Selector
from steerkit.core.records import RecordLog
from steerkit.corpora.doctests import DoctestPrompt
from steerkit.errors import SteerkitError
from steerkit.stats import benjamini_hochberg, join_by_id, mcnemar_exact, paired_outcomes, paired_risk_difference

MARKER = r">>>"
ARMS = ("knockout", "control", "amplify")
CONTRASTS = (*((arm, "baseline") for arm in ARMS), ("knockout", "control"))  # (arm, reference)


@dataclass(frozen=True)
class PromptEdges:
    """One prompt's knocked edges: queries from the last marker's first token to the prompt end, target keys."""

    id: str
    sources: tuple[int, ...]
    targets: tuple[int, ...]
    first_marker: int


def control_selector(
    loaded: LoadedModel,
    items: list[DoctestPrompt],
    targets: PerPrompt,
    layers: tuple[int, ...],
    tolerance: float,
    seed: int,
) -> tuple[PerPrompt, list[dict[str, Any]]]:
    """Per prompt: random keys whose baseline attention mass (from the prompt's marker rows, averaged over
    `layers`) is within `tolerance` of the targets'; and one row per prompt with both masses."""
    encoded = encode_prompts(loaded, [i.as_prompt() for i in items], chat=False)
    by_id: dict[str, Selector] = {}
    rows = []
    for enc in encoded:
        start = min(Pattern(MARKER, "last").resolve(enc).indices)
        edges = PromptEdges(enc.id, tuple(range(start, len(enc))), tuple(sorted(targets.resolve(enc).indices)), start)
        masses = key_mass(loaded, enc, edges, layers)
        control: MatchedControl = matched_control_keys(edges, np.mean([masses[x] for x in layers], 0), seed, tolerance)
        by_id[enc.id] = Explicit(control.keys)
        rows.append({"id": enc.id, "n_targets": len(edges.targets), "n_control_keys": len(control.keys),
                     "target_mass": control.target_mass, "control_mass": control.control_mass,
                     "mass_matched": control.matched, "control_keys": list(control.keys)})  # fmt: skip
    return PerPrompt.of(by_id), rows


def layers_from_knockout(rows: list[dict[str, Any]]) -> tuple[int, ...]:
    """The single layers at which a `knockout` run's primary test (kl_last, knockout vs control) was rejected."""
    found = tuple(sorted(int(r["layer"]) for r in rows if r["layer"] != "all" and r.get("kl_last_rejected")))
    if not found:
        raise SteerkitError("the knockout run rejected no single layer on kl_last: no layer set to take from it")
    return found


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


def paired_stats(scored: dict[str, list[dict]], alpha: float) -> list[dict]:
    """McNemar (exact) and the paired risk difference per (contrast, score), rows joined by prompt id; BH over all.

    `scored` maps each arm (and `baseline`) to its rows; `CONTRASTS` whose arms are present are tested.
    """
    out: list[dict[str, Any]] = []
    for arm, ref in (c for c in CONTRASTS if c[0] in scored and c[1] in scored):
        pairs = join_by_id(scored[ref], scored[arm], key="id", names=(ref, arm))
        for score in SCORES:
            b_flags, a_flags = [bool(r[score]) for r, _ in pairs], [bool(a[score]) for _, a in pairs]
            counts = paired_outcomes(b_flags, a_flags)
            rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
            out.append({
                "arm": arm, "reference": ref, "score": score, "n": counts.n,
                "baseline_rate": sum(b_flags) / counts.n, "arm_rate": sum(a_flags) / counts.n,
                "b": counts.b, "c": counts.c, "mcnemar_p": mcnemar_exact(counts.b, counts.c).p_value,
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
        pairs = join_by_id(scored["baseline"], scored[arm], key="id", names=("baseline", arm))
        metrics[f"{arm}_identical_to_baseline"] = sum(a["text"] == b["text"] for b, a in pairs)
    for r in stats:
        key = (
            f"{r['arm']}.{r['score']}"
            if r["reference"] == "baseline"
            else f"{r['arm']}_vs_{r['reference']}.{r['score']}"
        )
        metrics |= {f"{key}.mcnemar_p": r["mcnemar_p"], f"{key}.q": r["q_value"], f"{key}.rd": r["risk_difference"]}
    return metrics
