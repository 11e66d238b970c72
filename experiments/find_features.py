"""Entry point `find_features` (seed 001, phase 2.5): SAE features whose firing predicts baseline correctness.

Activations are read where the SAE was trained (its layer and hook point; a `layer`/`hook` parameter that
disagrees is an error, the reference pipeline steered block L's input with an SAE of block L's output) at the
last prompt token of each SAE-split problem, with the baseline run's prompts and chat setting, and encoded by
the SAE. Per feature: firing rate on problems the baseline solved minus on those it did not (separation) and a
two-sided Fisher exact test, Benjamini-Hochberg over the declared family. The family is fixed by label-blind
filters before any test: features that fire on at least one SAE-split prompt and on at most `generic_max_rate`
of a generic-text set (stdlib module docstrings + the entropy corpus prompts, same chat formatting), so broadly
firing features are neither tested nor chosen. Selection uses only the SAE split; coefficients are tuned on
`hyper` and effects reported on `validation` by the next phases.

Also the difference-of-means direction (mean residual of correct - incorrect, same position), with its norm
relative to the mean residual norm; it is marked unusable when that ratio is below `dom_min_relative_norm`.

Logged: `features.json` (top features per direction with statistics, control pools of similar firing rate, the
DoM direction; read by select_coefficients/evaluate_steering), `feature_tests.json` (table of every tested
feature), `dom_direction.npy`, metrics (family size, number significant after BH, ...).

Usage: mlflow run . -e find_features --env-manager local -P baseline_run_id=RUN -P sae=runs:/TRAIN_RUN/sae
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline as baseline_ep  # noqa: E402

from steerkit import tracking  # noqa: E402
from steerkit.cli import as_float, as_int  # noqa: E402
from steerkit.codegen import build_prompt  # noqa: E402
from steerkit.core.activations import last_token_residuals  # noqa: E402
from steerkit.core.generation import Prompt  # noqa: E402
from steerkit.core.models import LoadedModel, load_model  # noqa: E402
from steerkit.corpora.prompts import load_prompt_corpus  # noqa: E402
from steerkit.errors import SteerkitError  # noqa: E402
from steerkit.feature_stats import feature_fisher_tests, firing_rates, top_features  # noqa: E402
from steerkit.sae import SAE, load_sae  # noqa: E402

FEATURES_FILE = "features.json"
GENERIC_MODULES = (
    "abc argparse array asyncio base64 bisect calendar collections contextlib copy csv dataclasses datetime "
    "decimal difflib email enum fractions functools glob gzip hashlib heapq hmac html inspect io itertools json "
    "logging math mimetypes operator os pathlib pickle pprint queue random re secrets shutil socket sqlite3 "
    "statistics string struct subprocess tempfile textwrap threading timeit tokenize unittest uuid warnings zipfile"
).split()
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="find_features", description=__doc__.splitlines()[0])
    p.add_argument("--baseline-run-id", required=True)
    p.add_argument("--sae", required=True, help="SAE dir, GemmaScope params.npz, runs:/<id>/sae, or a train_sae run id")
    p.add_argument("--layer", default="auto", help="'auto' = the SAE's layer; anything else must equal it")
    p.add_argument("--hook", default="auto", help="'auto' = the SAE's hook point; resid_pre/resid_post must equal it")
    p.add_argument("--limit", default=0, help="first N problems of the SAE split (0 = all)")
    p.add_argument("--top-n", default=10, help="features saved per direction")
    p.add_argument("--alpha", default=0.05, help="BH false discovery rate")
    p.add_argument("--generic-max-rate", default=0.5, help="drop features firing on more of the generic texts")
    p.add_argument("--generic-limit", default=0, help="first N generic texts (0 = all)")
    p.add_argument("--control-pool", default=50, help="candidate control features of similar firing rate")
    p.add_argument("--dom-min-relative-norm", default=0.01, help="DoM norm / mean residual norm below this: unusable")
    p.add_argument("--batch-size", default=16)
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def resolve_sae(source: str) -> SAE:
    """An SAE from a local path, `runs:/<run_id>/<path>`, a run id (its `sae/` artifact), or a Hub path."""
    match = re.match(r"^runs:/([0-9a-f]{32})/(.+)$", source)
    if match:
        return load_sae(tracking.download_artifacts(match.group(1), match.group(2).strip("/")))
    if not Path(source).exists() and _RUN_ID.match(source):
        return load_sae(tracking.download_artifacts(source, "sae"))
    return load_sae(source)


def hook_point(sae: SAE, layer: str, hook: str) -> tuple[int, str]:
    """The (layer, hook) to read/steer: the SAE's own; explicit values must agree (else SteerkitError)."""
    chosen_layer = sae.cfg.layer if layer == "auto" else as_int("layer", layer, 0)
    chosen_hook = sae.cfg.hook if hook == "auto" else hook
    sae.check_hook(chosen_layer, chosen_hook)
    return chosen_layer, chosen_hook


def check_sae_model(sae: SAE, loaded: LoadedModel) -> None:
    if sae.cfg.d_in != loaded.d_model:
        raise SteerkitError(f"SAE d_in {sae.cfg.d_in} does not match {loaded.spec} d_model {loaded.d_model}")
    loaded.check_layer(sae.cfg.layer)
    if sae.cfg.model and sae.cfg.model != loaded.spec:
        tracking.set_tags({"steerkit.sae_model_mismatch": f"{sae.cfg.model} != {loaded.spec}"})


def generic_texts(limit: int) -> list[str]:
    """Generic (non-task) texts: first paragraphs of stdlib module docstrings + the entropy corpus prompts."""
    texts = []
    for name in GENERIC_MODULES:
        doc = (importlib.import_module(name).__doc__ or "").strip()
        if doc:
            texts.append(doc.split("\n\n")[0].strip())
    corpus = Path(__file__).resolve().parents[1] / "corpus" / "entropy_prompts.json"
    texts += [cp.prompt for cp in load_prompt_corpus(corpus).prompts]
    return texts[:limit] if limit else texts


def encode_last_token(
    loaded: LoadedModel, sae: SAE, prompts: list[Any], layer: int, hook: str, chat: bool, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residuals `[n, d_model]`, SAE feature activations `[n, d_sae]`) at the last prompt token."""
    resid = last_token_residuals(loaded, prompts, layer, hook=hook, chat=chat, batch_size=batch)[layer]  # type: ignore[arg-type]
    with torch.no_grad():
        return resid, sae.encode(resid)


def dom_direction(resid: torch.Tensor, passed: np.ndarray, min_relative: float) -> dict[str, Any]:
    """Difference of means (correct - incorrect) `[d_model]`, its norm and norm / mean residual norm."""
    labels = torch.as_tensor(passed, dtype=torch.bool)
    vec = resid[labels].mean(0) - resid[~labels].mean(0)
    norm, mean_norm = float(vec.norm()), float(resid.norm(dim=-1).mean())
    relative = norm / mean_norm if mean_norm > 0 else 0.0
    return {
        "vector": vec.tolist(),
        "norm": norm,
        "mean_residual_norm": mean_norm,
        "relative_norm": relative,
        "usable": bool(relative >= min_relative),
    }


def control_pool(rates: np.ndarray, target: int, exclude: set[int], size: int) -> list[int]:
    """Up to `size` features with firing rate closest to `target`'s (ties by index), excluding `exclude`."""
    order = sorted((abs(float(rates[j]) - float(rates[target])), j) for j in range(rates.size) if j not in exclude)
    return [int(j) for _, j in order[:size]]


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("find_features", vars(args), experiment=args.experiment):
        limit, top_n = as_int("limit", args.limit, 0), as_int("top_n", args.top_n, 1)
        alpha = as_float("alpha", args.alpha, 0.0)
        generic_max = as_float("generic_max_rate", args.generic_max_rate, 0.0)
        pool_size = as_int("control_pool", args.control_pool, 1)
        min_rel = as_float("dom_min_relative_norm", args.dom_min_relative_norm, 0.0)
        batch = as_int("batch_size", args.batch_size, 1)
        cfg, manifest, records = baseline_ep.load_baseline(args.baseline_run_id)
        sae = resolve_sae(args.sae)
        layer, hook = hook_point(sae, args.layer, args.hook)
        loaded = load_model(cfg["model"], dtype=cfg["dtype"], device=cfg["device"])
        check_sae_model(sae, loaded)
        problems = baseline_ep.load_split(cfg, manifest, "sae", limit)
        passed = np.array([bool(records[p.task_id]["passed"]) for p in problems])
        tracking.log_params(
            {
                "resolved_layer": layer,
                "resolved_hook": hook,
                "sae_config": sae.cfg.to_dict(),
                "n_problems": len(problems),
            }
        )
        t0 = time.perf_counter()
        prompts = [Prompt(str(p.task_id), build_prompt(p)) for p in problems]
        resid, acts = encode_last_token(loaded, sae, prompts, layer, hook, cfg["chat"], batch)
        generic = generic_texts(as_int("generic_limit", args.generic_limit, 0))
        _, generic_acts = encode_last_token(loaded, sae, generic, layer, hook, cfg["chat"], batch)
        generic_rates = firing_rates(generic_acts.numpy())
        tests = feature_fisher_tests(acts.numpy(), passed, eligible=generic_rates <= generic_max, alpha=alpha)
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
            "n_significant": int(tests.significant.sum()),
            "top": {d: [{**tests.row(j), "firing_rate": float(rates[j])} for j in ids] for d, ids in best.items()},
            "control_pool": {
                d: control_pool(rates, ids[0], chosen, pool_size) if ids else [] for d, ids in best.items()
            },
            "dom": dom_direction(resid, passed, min_rel),
        }
        _log(result, tests, rates, generic_rates, time.perf_counter() - t0, len(generic))


def _log(
    result: dict[str, Any], tests: Any, rates: np.ndarray, generic_rates: np.ndarray, seconds: float, n_generic: int
) -> None:
    tracking.log_text(json.dumps(result), FEATURES_FILE)
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
    metrics: dict[str, float | None] = {
        "n_features": int(rates.size),
        "n_firing": int((rates > 0).sum()),
        "n_generic_texts": n_generic,
        "n_generic_dropped": int(((rates > 0) & ~tests.tested).sum()),
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
