"""Seed 001, phase 5: the chosen coefficients on the validation split, against controls.

Design note: each direction's arm runs at its chosen coefficient next to its controls (a random SAE feature of
similar firing rate, a random direction of the same norm), all through the same path; rates get Wilson intervals,
each arm is compared with the baseline (McNemar on flips) and with each control on the direction's target tasks
(McNemar + paired risk difference), and BH runs over every p-value logged (the declared family).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from steerkit.errors import SteerkitError
from steerkit.sae.arms import Arm, paired_rows, public
from steerkit.sae.features import flip_counts
from steerkit.sae.model import SAE
from steerkit.sae.selection import Context, build_arm
from steerkit.stats import (
    benjamini_hochberg,
    join_by_id,
    mcnemar_exact,
    paired_outcomes,
    paired_risk_difference,
    wilson_interval,
)

CONTROLS = ("feature", "random")
TARGET = {"correct": "corrected", "dom": "corrected", "incorrect": "corrupted"}


def control_arms(arm: Arm, features: dict[str, Any], sae: SAE, controls: list[str], seed: int, k: int) -> list[Arm]:
    """The control arms of one steered arm (`k` numbers the direction, so each gets its own draws)."""
    arms = []
    if "feature" in controls:
        pool = [f for f in features["control_pool"]["incorrect" if arm.name == "incorrect" else "correct"]]
        pool = [f for f in pool if f != arm.feature]
        if not pool:
            raise SteerkitError(f"find_features run has no control pool for direction {arm.name!r}")
        pick = int(np.random.default_rng([seed, k]).choice(pool))
        arms.append(Arm(f"{arm.name}:control_feature", sae, feature=pick))
    if "random" in controls:
        gen = torch.Generator().manual_seed(seed * 1009 + k)
        vec = torch.randn(sae.cfg.d_in, generator=gen)
        arms.append(Arm(f"{arm.name}:control_random", sae, vector=vec / vec.norm() * arm.norm()))
    return arms


def rate_stats(prefix: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Correction/corruption rates with Wilson CIs and the McNemar p vs baseline of one arm (paired rows only)."""
    both = paired_rows(rows)
    flips = flip_counts([r["baseline_passed"] for r in both], [r["steered_passed"] for r in both])
    out: dict[str, float] = {f"{prefix}_corrected": flips.corrected, f"{prefix}_corrupted": flips.corrupted}
    out[f"{prefix}_n_missing"] = len(rows) - len(both)
    for name, k, n in (
        ("correction", flips.corrected, flips.n_baseline_fail),
        ("corruption", flips.corrupted, flips.n_baseline_pass),
    ):
        out[f"{prefix}_{name}_rate"] = k / n if n else math.nan
        low, high = wilson_interval(k, n) if n else (math.nan, math.nan)
        out[f"{prefix}_{name}_low"], out[f"{prefix}_{name}_high"] = low, high
    out[f"{prefix}_vs_baseline_p"] = mcnemar_exact(flips.corrected, flips.corrupted).p_value
    return out


def versus_control(prefix: str, target: str, steered: list[dict], control: list[dict]) -> dict[str, float]:
    """Steered vs control on the direction's target tasks: McNemar on the target event, paired RD + Newcombe CI.

    Tasks are joined by id; a task is used when both arms' pairs ran (no timeout) and agree on the baseline."""
    joined = join_by_id(steered, control, key="task_id", names=("steered", "control"))
    wanted = target == "corrupted"
    pairs = [(s, c) for s, c in joined if s["paired"] and c["paired"] and s["baseline_passed"] == c["baseline_passed"]]
    subset = [(s, c) for s, c in pairs if s["baseline_passed"] == wanted]
    if not subset:
        return {f"{prefix}_n": 0, f"{prefix}_p": math.nan}
    counts = paired_outcomes([bool(c[target]) for _, c in subset], [bool(s[target]) for s, _ in subset])
    rd = paired_risk_difference(counts.b, counts.c, counts.n, both=counts.both)
    return {
        f"{prefix}_n": counts.n,
        f"{prefix}_steered_only": counts.b,
        f"{prefix}_control_only": counts.c,
        f"{prefix}_p": mcnemar_exact(counts.b, counts.c).p_value,
        f"{prefix}_rd": rd.estimate,
        f"{prefix}_rd_low": rd.low,
        f"{prefix}_rd_high": rd.high,
    }


def apply_bh(metrics: dict[str, float], alpha: float) -> dict[str, float]:
    """BH over every p-value in `metrics` (keys ending in `_p`): the declared family. Adds `_q` and family_size."""
    keys = sorted(k for k in metrics if k.endswith("_p"))
    bh = benjamini_hochberg([metrics[k] for k in keys], alpha=alpha)
    out = {f"{k[:-2]}_q": q for k, q in zip(keys, bh.q_values) if q is not None}
    return {**out, "family_size": bh.family_size}


def evaluate(
    ctx: Context,
    chosen: dict[str, Any],
    features: dict[str, Any],
    sae: SAE,
    controls: list[str],
    seed: int,
    identity: bool,
) -> tuple[dict[str, float], list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """Run every arm; returns (metrics, per-task rows of all arms, arm names in plot order, arm descriptions)."""
    metrics: dict[str, float] = {}
    all_rows: list[dict[str, Any]] = []
    names: list[str] = []
    info: list[dict[str, Any]] = []
    for k, (direction, sel) in enumerate(sorted(chosen.items())):
        coef = float(sel["coefficient"])
        arm = build_arm(features, sae, direction)
        outcome: dict[str, list[dict[str, Any]]] = {}
        for a in [arm, *control_arms(arm, features, sae, controls, seed, k)]:
            rows = ctx.run(a, coef, a.name.replace(":", "_"))
            outcome[a.name] = rows
            all_rows += [{**r, "direction": direction} for r in public(rows)]
            metrics.update(rate_stats(a.name.replace(":", "_"), rows))
            names.append(a.name.replace(":", "_"))
            info.append({**a.describe(), "direction": direction, "coefficient": coef})
        for c in controls:
            ctrl = outcome[f"{direction}:control_{c}"]
            metrics.update(versus_control(f"{direction}_vs_{c}", TARGET[direction], outcome[direction], ctrl))
    if identity:
        arm = build_arm(features, sae, sorted(chosen)[0])
        rows = ctx.run(arm, 0.0, "identity")
        both = paired_rows(rows)
        flips = flip_counts([r["baseline_passed"] for r in both], [r["steered_passed"] for r in both])
        metrics["identity_flips"] = flips.corrected + flips.corrupted
        metrics["identity_identical"] = sum(r["identical"] for r in rows)
        all_rows += [{**r, "arm": "identity", "direction": "identity"} for r in public(rows)]
    return metrics, all_rows, names, info
