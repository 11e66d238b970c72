"""Entry point `find_features` (seed 001, phase 2.5): SAE features whose firing predicts baseline correctness.

Activations are read where the SAE was trained (its layer and hook point; a `layer`/`hook` parameter that disagrees
is an error, the reference pipeline steered block L's input with an SAE of block L's output) at the last prompt
token of each SAE-split problem, with the baseline run's prompts and chat setting, and encoded by the SAE. Per
feature: firing rate on problems the baseline solved minus on those it did not (separation) and a two-sided Fisher
exact test, Benjamini-Hochberg over the declared family; features are ranked by that test (p, then separation), and
every tested feature's p and q go to `feature_tests.json`. The family is fixed by label-blind filters before any
test: features that fire on at least `min_fires` SAE-split prompts and on at most `generic_max_rate` of a
generic-text set (stdlib module docstrings + the entropy corpus prompts, same chat formatting), so broadly firing
features are neither tested nor chosen. Selection uses only the SAE split; coefficients are tuned on `hyper` and
effects reported on `validation` by the next phases.

Also the difference-of-means direction (mean residual of correct - incorrect, same position), with its norm
relative to the mean residual norm; it is marked unusable when that ratio is below `dom_min_relative_norm`.
Logged: `features.json` (top features per direction with statistics, control pools of similar firing rate, the DoM
direction; read by the next phases), `feature_tests.json` (every tested feature), `dom_direction.npy`, metrics.

Usage: mlflow run . -e find_features --env-manager local -P baseline_run_id=RUN -P sae=runs:/TRAIN_RUN/sae
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from steerkit import cli, tracking
from steerkit.cli import as_float, as_int
from steerkit.core.generation import Prompt
from steerkit.core.models import load_model
from steerkit.sae import discovery, load_sae, pipeline
from steerkit.sae.codegen import build_prompt
from steerkit.sae.features import feature_fisher_tests, firing_rates, top_features


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("find_features", __doc__)
    p.add_argument("--baseline-run-id", required=True)
    p.add_argument("--sae", required=True, help="SAE dir, GemmaScope params.npz, runs:/<id>/sae, or a train_sae run id")
    p.add_argument("--layer", default="auto", help="'auto' = the SAE's layer; anything else must equal it")
    p.add_argument("--hook", default="auto", help="'auto' = the SAE's hook point; resid_pre/resid_post must equal it")
    p.add_argument("--limit", default=0, help="first N problems of the SAE split (0 = all)")
    p.add_argument("--top-n", default=10, help="features saved per direction")
    p.add_argument("--alpha", default=0.05, help="BH false discovery rate")
    p.add_argument("--min-fires", default=3, help="test only features firing on at least this many SAE-split prompts")
    p.add_argument("--generic-max-rate", default=0.5, help="drop features firing on more of the generic texts")
    p.add_argument("--generic-limit", default=0, help="first N generic texts (0 = all)")
    p.add_argument("--control-pool", default=50, help="candidate control features of similar firing rate")
    p.add_argument("--dom-min-relative-norm", default=0.01, help="DoM norm / mean residual norm below this: unusable")
    p.add_argument("--batch-size", default=16)
    cli.add_threads_arg(p)
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("find_features", vars(args), experiment=args.experiment):
        limit, top_n = as_int("limit", args.limit, 0), as_int("top_n", args.top_n, 1)
        alpha = as_float("alpha", args.alpha, 0.0)
        generic_max = as_float("generic_max_rate", args.generic_max_rate, 0.0)
        pool_size = as_int("control_pool", args.control_pool, 1)
        min_rel = as_float("dom_min_relative_norm", args.dom_min_relative_norm, 0.0)
        batch = as_int("batch_size", args.batch_size, 1)
        tracking.finished_run_of(args.baseline_run_id, "baseline")
        cfg, manifest, records = pipeline.load_baseline(args.baseline_run_id, tracking.load_jsonl_artifact)
        sae = load_sae(sae_path := tracking.local_artifact(args.sae, default_artifact="sae"))
        layer, hook = pipeline.hook_point(sae, args.layer, args.hook)
        loaded = load_model(cfg["model"], dtype=cfg["dtype"], device=cfg["device"], threads=args.threads)
        tracking.set_tags(pipeline.check_sae_model(sae, loaded) | pipeline.check_sae_holdout(sae_path, manifest))
        problems = pipeline.load_split(cfg, manifest, "sae", limit)
        passed = np.array([bool(records[p.task_id]["passed"]) for p in problems])
        resolved = {"resolved_layer": layer, "resolved_hook": hook, "sae_config": sae.cfg.to_dict()}
        tracking.log_params({**resolved, "n_problems": len(problems), **loaded.params()})
        t0 = time.perf_counter()
        prompts = [Prompt(str(p.task_id), build_prompt(p)) for p in problems]
        resid, acts = discovery.encode_last_token(loaded, sae, prompts, layer, hook, cfg["chat"], batch)
        generic = discovery.generic_texts(as_int("generic_limit", args.generic_limit, 0))
        _, generic_acts = discovery.encode_last_token(loaded, sae, generic, layer, hook, cfg["chat"], batch)
        generic_rates = firing_rates(generic_acts.numpy())
        min_fires = as_int("min_fires", args.min_fires, 1)
        tests = feature_fisher_tests(
            acts.numpy(), passed, eligible=generic_rates <= generic_max, alpha=alpha, min_fires=min_fires
        )
        rates = firing_rates(acts.numpy())
        best = {d: top_features(tests, top_n, prefer=d) for d in ("correct", "incorrect")}
        chosen = set(best["correct"]) | set(best["incorrect"]) | set(np.flatnonzero(tests.significant).tolist())
        result = {
            "baseline_run_id": args.baseline_run_id,
            "sae_source": args.sae,
            "sae_config": sae.cfg.to_dict(),
            "layer": layer,
            "hook": hook,
            "chat": cfg["chat"],
            "alpha": alpha,
            "family_size": tests.family_size,
            "min_fires": min_fires,
            "n_significant": int(tests.significant.sum()),
            "top": {d: [{**tests.row(j), "firing_rate": float(rates[j])} for j in ids] for d, ids in best.items()},
            "control_pool": {
                d: discovery.control_pool(rates, ids[0], chosen, pool_size) if ids else [] for d, ids in best.items()
            },
            "dom": discovery.dom_direction(resid, passed, min_rel),
        }
        _log(result, tests, rates, generic_rates, time.perf_counter() - t0, len(generic))


def _log(
    result: dict[str, Any], tests: Any, rates: np.ndarray, generic_rates: np.ndarray, seconds: float, n_generic: int
) -> None:
    tracking.log_text(json.dumps(result), pipeline.FEATURES_FILE)
    rows = [
        {**tests.row(j), "firing_rate": float(rates[j]), "generic_rate": float(generic_rates[j])}
        for j in np.flatnonzero(tests.tested)
    ]
    tracking.log_table(rows or [{"feature": None}], "feature_tests.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dom_direction.npy"
        np.save(path, np.asarray(result["dom"]["vector"], dtype=np.float32))
        tracking.log_artifact(path)
    top = {d: rows_[0] for d, rows_ in result["top"].items() if rows_}
    enough = tests.fires_correct + tests.fires_incorrect >= result["min_fires"]
    metrics: dict[str, float | None] = {
        "n_features": int(rates.size),
        "n_firing": int((rates > 0).sum()),
        "n_generic_texts": n_generic,
        "n_generic_dropped": int((enough & ~tests.tested).sum()),
        "n_below_min_fires": int(((rates > 0) & ~enough).sum()),
        "family_size": result["family_size"],
        "n_significant": result["n_significant"],
        "n_correct": tests.n_correct,
        "n_incorrect": tests.n_incorrect,
        "dom_norm": result["dom"]["norm"],
        "dom_relative_norm": result["dom"]["relative_norm"],
        "experiment_seconds": seconds,
    }
    for d, row in top.items():
        metrics.update({f"top_{d}_feature": row["feature"], f"top_{d}_separation": row["separation"]})
        metrics.update({f"top_{d}_p": row["p_value"], f"top_{d}_q": row["q_value"]})
    tracking.log_metrics(metrics)
    print(json.dumps({k: metrics[k] for k in ("family_size", "n_significant", "n_correct", "n_incorrect")}))


if __name__ == "__main__":
    tracking.entry_point(main)
