"""Entry point `evaluate_steering` (seed 001, phase 4.8): selected coefficients on the validation split, vs controls.

Each direction selected by a select_coefficients run is applied at its selected coefficient on the validation
split (never used for selection), together with two controls at the SAME coefficient, hook point and positions:
a random SAE feature (seeded, drawn from the find_features control pool: features with the firing rate closest
to the chosen one's, excluding every top or significant feature) and a random direction with the steered
direction's norm (seeded Gaussian). A coefficient-0 identity arm runs through the same path (0 flips expected).

Statistics (paired throughout: every arm runs on the same tasks):
- per arm, correction rate (fail->pass | baseline fail) and corruption rate (pass->fail | baseline pass) with
  Wilson 95% intervals, and an exact McNemar test against the baseline (discordant pairs = the flips);
- the primary test, steered vs each control, never vs 0: on the direction's target tasks (baseline failures
  for the correct feature and DoM, baseline passes for the incorrect feature), an exact McNemar test of
  "target event happened" (corrected / corrupted) in the steered arm vs the control arm on the same task, with
  the paired risk difference steered - control and its Newcombe interval;
- Benjamini-Hochberg over the declared family: every McNemar test above (3 vs baseline + 2 vs control per
  direction); `family_size` is logged. A direction is called effective only if it beats BOTH controls
  (q < alpha, positive difference).

Logged: `samples.json` (per task x arm), `evaluation.json`, metrics, `rates.png` (bars with Wilson CIs).

Usage: mlflow run . -e evaluate_steering --env-manager local -P selection_run_id=RUN -P limit=20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline as baseline_ep  # noqa: E402
import find_features as features_ep  # noqa: E402
import select_coefficients as select_ep  # noqa: E402

from steerkit import tracking  # noqa: E402
from steerkit.cli import as_bool, as_float, as_int  # noqa: E402
from steerkit.core.models import load_model  # noqa: E402
from steerkit.errors import SteerkitError  # noqa: E402
from steerkit.feature_stats import flip_counts  # noqa: E402
from steerkit.sae import SAE  # noqa: E402
from steerkit.stats import (  # noqa: E402
    benjamini_hochberg,
    mcnemar_exact,
    paired_outcomes,
    paired_risk_difference,
    wilson_interval,
)
from steerkit.steering_arms import Arm, public  # noqa: E402

CONTROLS = ("feature", "random")
TARGET = {"correct": "corrected", "dom": "corrected", "incorrect": "corrupted"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate_steering", description=__doc__.splitlines()[0])
    p.add_argument("--selection-run-id", required=True)
    p.add_argument("--limit", default=0, help="first N problems of the validation split (0 = all)")
    p.add_argument("--controls", default="feature,random", help="random SAE feature and/or random direction")
    p.add_argument("--alpha", default=0.05, help="BH false discovery rate")
    p.add_argument("--identity", default="true", help="run the coefficient-0 identity arm")
    p.add_argument("--seed", default=0, help="seed of the control feature and the random direction")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def load_selection(run_id: str) -> dict[str, Any]:
    run = tracking.get_finished_run(run_id)
    if run.data.tags.get(tracking.TAG_ENTRY_POINT) != "select_coefficients":
        raise SteerkitError(f"run {run_id!r} is not a select_coefficients run")
    return tracking.load_jsonl_artifact(run_id, select_ep.SELECTED_FILE)[0]


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
    """Correction/corruption rates with Wilson CIs and the McNemar p vs baseline of one arm."""
    flips = flip_counts([r["baseline_passed"] for r in rows], [r["steered_passed"] for r in rows])
    out: dict[str, float] = {f"{prefix}_corrected": flips.corrected, f"{prefix}_corrupted": flips.corrupted}
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
    """Steered vs control on the direction's target tasks: McNemar on the target event, paired RD + Newcombe CI."""
    subset = [i for i, r in enumerate(steered) if r["baseline_passed"] == (target == "corrupted")]
    if not subset:
        return {f"{prefix}_n": 0, f"{prefix}_p": math.nan}
    counts = paired_outcomes([bool(control[i][target]) for i in subset], [bool(steered[i][target]) for i in subset])
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


def plot_rates(metrics: dict[str, float], arms: list[str]) -> Any:
    """Correction and corruption rate of every arm with Wilson 95% intervals."""
    from steerkit.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(arms)), 4.5), sharey=True)
    for ax, name in zip(axes, ("correction", "corruption")):
        rates = [metrics.get(f"{a}_{name}_rate", math.nan) for a in arms]
        low = [r - metrics.get(f"{a}_{name}_low", math.nan) for a, r in zip(arms, rates)]
        high = [metrics.get(f"{a}_{name}_high", math.nan) - r for a, r in zip(arms, rates)]
        ax.bar(range(len(arms)), rates, yerr=np.clip(np.nan_to_num(np.array([low, high])), 0.0, None), capsize=4)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(f"{name} rate (Wilson 95% CI)")
    fig.tight_layout()
    return fig


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("evaluate_steering", vars(args), experiment=args.experiment):
        limit, seed = as_int("limit", args.limit, 0), as_int("seed", args.seed, 0)
        alpha, identity = as_float("alpha", args.alpha, 0.0), as_bool("identity", args.identity)
        controls = [c.strip() for c in args.controls.split(",") if c.strip()]
        if not controls or any(c not in CONTROLS for c in controls):
            raise SteerkitError(f"controls must be values of {', '.join(CONTROLS)}, got {args.controls!r}")
        selection = load_selection(args.selection_run_id)
        chosen = {d: s for d, s in selection["selected"].items() if s["coefficient"] is not None}
        if not chosen:
            raise SteerkitError(f"selection run {args.selection_run_id} has no feasible coefficient for any direction")
        features = select_ep.load_features(selection["features_run_id"])
        bcfg, manifest, base = baseline_ep.load_baseline(selection["baseline_run_id"])
        sae = features_ep.resolve_sae(features["sae_source"])
        loaded = load_model(bcfg["model"], dtype=bcfg["dtype"], device=bcfg["device"])
        features_ep.check_sae_model(sae, loaded)
        problems = baseline_ep.load_split(bcfg, manifest, "validation", limit)
        ctx = select_ep.Context(loaded, problems, base, bcfg, select_ep.POSITIONS[selection["positions"]])
        tracking.log_params(
            {"n_problems": len(problems), "resolved_directions": sorted(chosen), "resolved_controls": controls}
        )
        t0 = time.perf_counter()
        metrics, rows, arm_names, info = evaluate(ctx, chosen, features, sae, controls, seed, identity)
        metrics.update(apply_bh(metrics, alpha))
        for direction in chosen:
            beats = [
                metrics.get(f"{direction}_vs_{c}_q", 1.0) < alpha and metrics.get(f"{direction}_vs_{c}_rd", 0.0) > 0
                for c in controls
            ]
            metrics[f"{direction}_beats_controls"] = float(all(beats))
        tracking.log_table(rows, "samples.json")
        tracking.log_json(
            {"selection_run_id": args.selection_run_id, "arms": info, "metrics": metrics}, "evaluation.json"
        )
        tracking.log_figure(plot_rates(metrics, arm_names), "rates.png")
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        print(json.dumps({k: v for k, v in metrics.items() if k.endswith(("_rate", "_p", "_q", "family_size"))}))


def evaluate(
    ctx: select_ep.Context,
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
        arm = select_ep.build_arm(features, sae, direction)
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
        arm = select_ep.build_arm(features, sae, sorted(chosen)[0])
        rows = ctx.run(arm, 0.0, "identity")
        flips = flip_counts([r["baseline_passed"] for r in rows], [r["steered_passed"] for r in rows])
        metrics["identity_flips"] = flips.corrected + flips.corrupted
        metrics["identity_identical"] = sum(r["identical"] for r in rows)
        all_rows += [{**r, "arm": "identity", "direction": "identity"} for r in public(rows)]
    return metrics, all_rows, names, info


if __name__ == "__main__":
    tracking.entry_point(main)
