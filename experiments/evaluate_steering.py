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

A direction whose selection found no coefficient that beat coefficient 0 on the hyper split is refused (FAILED,
naming the selection run) unless `allow_ineffective=true`, which tags the run. Each direction's coefficient is
logged raw and relative to the mean residual norm at the hook on the validation prompts (`_relative_coefficient`).
Pairs whose baseline or steered program timed out (the baseline re-runs in the same sandbox batch) are missing.

Logged: `samples.json` (per task x arm), `evaluation.json`, metrics, `rates.png` (bars with Wilson CIs).

Usage: mlflow run . -e evaluate_steering --env-manager local -P selection_run_id=RUN -P limit=20
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerkit import cli, tracking
from steerkit.core.checks import require_identity
from steerkit.core.models import load_model
from steerkit.errors import SteerkitError
from steerkit.sae import effect, load_sae, pipeline, reports
from steerkit.sae.evaluation import CONTROLS, apply_bh, evaluate
from steerkit.sae.selection import POSITIONS, Context
from steerkit.stats.design import Design


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("evaluate_steering", __doc__)
    p.add_argument("--selection-run-id", required=True)
    p.add_argument("--limit", default=0, help="first N problems of the validation split (0 = all)")
    p.add_argument("--controls", default="feature,random", help="random SAE feature and/or random direction")
    p.add_argument("--alpha", default=0.05, help="BH false discovery rate")
    p.add_argument("--identity", default="true", help="run the coefficient-0 identity arm")
    p.add_argument("--seed", default=0, help="seed of the control feature and the random direction")
    p.add_argument("--allow-ineffective", default="false", help="evaluate directions with no effective coefficient")
    cli.add_threads_arg(p)
    p.add_argument("--experiment", default="steerkit")
    cli.add_design_args(p)
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("evaluate_steering", vars(args), experiment=args.experiment):
        limit, seed = cli.as_int("limit", args.limit, 0), cli.as_int("seed", args.seed, 0)
        alpha, identity = cli.as_float("alpha", args.alpha, 0.0), cli.as_bool("identity", args.identity)
        controls = [c.strip() for c in args.controls.split(",") if c.strip()]
        if not controls or any(c not in CONTROLS for c in controls):
            raise SteerkitError(f"controls must be values of {', '.join(CONTROLS)}, got {args.controls!r}")
        selection = tracking.phase_record(args.selection_run_id, "select_coefficients", pipeline.SELECTED_FILE)
        chosen = {d: s for d, s in selection["selected"].items() if s["coefficient"] is not None}
        if not chosen:
            raise SteerkitError(f"selection run {args.selection_run_id} has no feasible coefficient for any direction")
        allow_weak = cli.as_bool("allow_ineffective", args.allow_ineffective)
        weak = effect.require_effective(chosen, args.selection_run_id, allow_weak)
        tracking.set_tags({"steerkit.allow_ineffective": ",".join(weak)} if weak else {})
        features = tracking.phase_record(selection["features_run_id"], "find_features", pipeline.FEATURES_FILE)
        tracking.finished_run_of(selection["baseline_run_id"], "baseline")
        bcfg, manifest, base = pipeline.load_baseline(selection["baseline_run_id"], tracking.load_jsonl_artifact)
        sae = load_sae(tracking.local_artifact(features["sae_source"], default_artifact="sae"))
        loaded = load_model(bcfg["model"], dtype=bcfg["dtype"], device=bcfg["device"], threads=args.threads)
        tracking.set_tags(pipeline.check_sae_model(sae, loaded))
        problems = pipeline.load_split(bcfg, manifest, "validation", limit)
        positions = POSITIONS[selection["positions"]]
        ctx = Context(loaded, problems, base, bcfg, positions, tracking.SampleLog)
        norm = ctx.measure_resid_norm(sae.cfg.layer, sae.cfg.hook)
        tracking.log_params(
            {"n_problems": len(problems), "resolved_directions": sorted(chosen), "resolved_controls": controls}
            | loaded.params()
        )
        # the BH family (every `_p`): per direction, each arm vs baseline and the direction vs each control
        family = len(chosen) * (1 + 2 * len(controls))
        design = Design("passed", "mcnemar_exact", len(problems), family_size=family, alpha=alpha)
        tracking.log_design(design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        t0 = time.perf_counter()
        metrics, rows, arm_names, info = evaluate(ctx, chosen, features, sae, controls, seed, identity)
        metrics.update(apply_bh(metrics, alpha))
        metrics["resid_norm_mean"] = norm
        for a in info:
            rel = effect.relative_coefficient(a["coefficient"], a["norm"], norm)
            metrics |= {f"{a['name']}_coefficient".replace(":", "_"): a["coefficient"]}
            metrics |= {f"{a['name']}_relative_coefficient".replace(":", "_"): rel}
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
        tracking.log_figure(reports.plot_rates(metrics, arm_names), "rates.png")
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        require_identity(metrics, ["identity_flips"] if identity else [])
        print(json.dumps({k: v for k, v in metrics.items() if k.endswith(("_rate", "_p", "_q", "family_size"))}))


if __name__ == "__main__":
    tracking.entry_point(main)
