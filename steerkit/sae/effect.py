"""Seed 001: did a steering coefficient do anything, and how strong was it next to the residual stream?

Design note: the reference pipeline kept the coefficient with the best raw flip rate, so on a small hyper split
noise always "won". Here every coefficient tried is tested against the coefficient-0 arm of the same tasks
(joined by task id, pairs lost to a sandbox timeout on either side left out): an exact one-sided McNemar test
on pass/fail, in the direction's goal (more passes for the correct feature and DoM, fewer for the incorrect
one), so corrections bought with corruptions do not count. Benjamini-Hochberg runs over the coefficients of
one direction (the declared family, logged). The selection rule (similarity floor, syntax-error ceiling,
highest objective) then picks among the effective coefficients; when there is none the direction is marked
"no effective coefficient" and `evaluate_steering` refuses to spend the validation split on it unless asked.

A raw coefficient means nothing across layers and models (the residual norm grows with depth and differs by
model), so each coefficient is also reported as the norm of the added vector over the mean residual norm at the
hook, measured on the prompts of the split (every prompt token except the first, whose norm is an outlier).
For a unit-norm direction (DoM, random controls, GemmaScope decoder rows) that is coef / mean residual norm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from steerkit.core.activations import token_residuals
from steerkit.core.generation import Prompt
from steerkit.core.models import LoadedModel
from steerkit.errors import SteerkitError
from steerkit.interventions.residual import HookPoint
from steerkit.sae.features import select_coefficient
from steerkit.stats import benjamini_hochberg, design, mcnemar_exact

GOAL = {"correct": "greater", "dom": "greater", "incorrect": "less"}
NO_EFFECT = "no effective coefficient"


def mean_residual_norm(
    loaded: LoadedModel, prompts: Sequence[Prompt | str], layer: int, hook: HookPoint, *, chat: bool, batch: int = 16
) -> float:
    """Mean L2 norm of the residual `[d_model]` at `layer`/`hook` over every prompt token but the first."""
    rows = token_residuals(loaded, prompts, layer, hook=hook, chat=chat, batch_size=batch, skip_first=True)
    norms = torch.cat([r.float().norm(dim=-1) for r in rows])
    if norms.numel() == 0:
        raise SteerkitError("mean_residual_norm: the prompts have no tokens after the first")
    return float(norms.mean())


def relative_coefficient(coef: float, direction_norm: float, resid_norm: float) -> float:
    """|coef| x direction norm / mean residual norm: the added vector's size next to the residual's."""
    return abs(coef) * direction_norm / resid_norm if resid_norm > 0 else math.nan


def check_alpha(alpha: float) -> float:
    """The false discovery rate of the effect test, in (0, 1)."""
    if not 0.0 < alpha < 1.0:
        raise SteerkitError(f"alpha must be in (0, 1), got {alpha!r}")
    return alpha


def effect_p(trial: Mapping[str, Any], direction: str) -> float:
    """One-sided exact McNemar p of a trial vs the coefficient-0 arm (`vs_zero_b`/`vs_zero_c` of `arm_metrics`)."""
    b, c = int(trial["vs_zero_b"]), int(trial["vs_zero_c"])
    return mcnemar_exact(b, c, GOAL[direction]).p_value  # type: ignore[arg-type]


def choose(
    trials: Sequence[Mapping[str, Any]],
    *,
    direction: str,
    objective: str,
    min_similarity: float,
    max_syntax_error: float,
    alpha: float,
    direction_norm: float,
    resid_norm: float,
    not_run: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The selection of one direction and its trials, each marked with `effect_p`, `effect_q`, `effective` and
    `relative_coefficient`.

    Returns:
        (choice, trials): `choice` is `features.select_coefficient`'s record over the effective trials, or over
        all trials with `effective` False and `reason` = NO_EFFECT when none is effective (`coefficient` is then
        the best feasible one, for a user who overrides the refusal, or None), plus `effect_family_size`.
    """
    rule: dict[str, Any] = {
        "objective": objective,
        "min_similarity": min_similarity,
        "max_syntax_error": max_syntax_error,
    }
    # A pruned coefficient stays in the family at p = 1: pruning looks at the data, so dropping it would shrink the
    # family after the fact.
    bh = benjamini_hochberg([effect_p(t, direction) for t in trials] + [1.0] * not_run, alpha=alpha)
    marked = []
    for t, q, rejected in zip(trials, bh.q_values, bh.rejected):
        better = (int(t["vs_zero_b"]) - int(t["vs_zero_c"])) * (1 if GOAL[direction] == "greater" else -1) > 0
        marked.append(
            {
                **t,
                "effect_p": effect_p(t, direction),
                "effect_q": q,
                "effective": bool(rejected and better),
                "relative_coefficient": relative_coefficient(float(t["coefficient"]), direction_norm, resid_norm),
            }
        )
    effective = [t for t in marked if t["effective"]]
    choice = select_coefficient(effective, **rule) if effective else {"feasible": False}
    reason = ""
    if not choice["feasible"]:
        choice = select_coefficient(marked, **rule)
        test = f"one-sided exact McNemar vs coefficient 0, BH over {bh.family_size} coefficients, q < {alpha}"
        beat = f"{len(effective)} beat coefficient 0 but none is feasible" if effective else "none beat coefficient 0"
        reason = f"{NO_EFFECT}: of {len(marked)} coefficients {beat} ({test})"
    by_coef = {t["coefficient"]: t for t in marked}
    chosen = by_coef.get(choice["coefficient"], {})
    extra = {k: chosen.get(k) for k in ("effect_p", "effect_q", "relative_coefficient")}
    summary = {**choice, **extra, "effective": not reason, "reason": reason, "effect_family_size": bh.family_size}
    return summary, marked


def selection_metrics(selected: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per direction: the selected coefficient, its relative value and whether it was effective (NaN: none)."""
    out: dict[str, float] = {}
    for d, s in selected.items():
        for key in ("coefficient", "relative_coefficient"):
            out[f"{d}_{key}"] = math.nan if s.get(key) is None else float(s[key])
        out[f"{d}_effective"] = float(bool(s.get("effective")))
    return out


def no_effect_tags(selected: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """`stats.design.no_effect_tags` of the directions without an effective coefficient."""
    return design.no_effect_tags(selected, "coefficient")


def require_effective(selected: Mapping[str, Mapping[str, Any]], run_id: str, allow: bool) -> list[str]:
    """The directions (of a selection record's `selected`) without an effective coefficient; SteerkitError
    naming the selection run unless `allow`. A record from before the test (no `effective` key) is not effective.
    """
    weak = sorted(d for d, s in selected.items() if not s.get("effective", False))
    if weak and not allow:
        raise SteerkitError(
            f"selection run {run_id} has {NO_EFFECT} for {', '.join(weak)} (no coefficient beat coefficient 0 on "
            "the hyper split): the validation split is not spent on it; pass allow_ineffective=true to override"
        )
    return weak
