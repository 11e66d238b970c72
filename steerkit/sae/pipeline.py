"""The SAE steering pipeline's shared plumbing: what one phase writes and the next reads.

Design note: the four phases (`baseline` -> `find_features` -> `select_coefficients` -> `evaluate_steering`) pass
data by run id: each phase's resolved config and results are JSON artifacts named here once (`CONFIG_FILE`,
`SPLITS_FILE`, `SAMPLES_FILE`, `FEATURES_FILE`, `SELECTED_FILE`). Reading them takes a `read(run_id, file)`
callback (`tracking.load_jsonl_artifact`): this package never imports MLflow. The greedy generation config and
sandbox limits of every phase come from the baseline's resolved config, so all phases generate alike.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerkit.cli import as_int
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import LoadedModel
from steerkit.corpora.loader import read_json
from steerkit.corpora.mbpp import SPLITS, Problem, load_problems
from steerkit.errors import SteerkitError
from steerkit.execution import ExecutionLimits
from steerkit.sae.model import SAE
from steerkit.stats import wilson_interval

Reader = Callable[[str, str], list[dict[str, Any]]]

CONFIG_FILE = "baseline_config.json"
SPLITS_FILE = "splits.json"
SAMPLES_FILE = "samples/baseline.jsonl"


def generation_config(cfg: dict[str, Any]) -> GenerationConfig:
    """The greedy generation config from a resolved baseline config (also used by the later phases)."""
    return GenerationConfig(
        max_new_tokens=cfg["max_new_tokens"],
        batch_size=cfg["batch_size"],
        temperature=0.0,
        chat=cfg["chat"],
        stop_strings=("\n```\n",) if cfg["stop_at_fence"] else (),
    )


def execution_limits(cfg: dict[str, Any]) -> ExecutionLimits:
    """Sandbox limits of a resolved baseline config (also used by the later phases)."""
    return ExecutionLimits(wall_seconds=cfg["timeout"], cpu_seconds=max(1, math.ceil(cfg["timeout"])))


def load_split(cfg: dict[str, Any], manifest: dict[str, Any], split: str, limit: int = 0) -> list[Problem]:
    """The problems of one split of a baseline run (file hash checked), in manifest order; first `limit`."""
    problems = load_problems(cfg["problems"])
    if problems.sha256 != cfg["problems_sha256"]:
        raise SteerkitError(f"problems file {cfg['problems']} changed since the baseline run (sha256 differs)")
    by_id = problems.by_id()
    ids = manifest["task_ids"][split]
    chosen = [by_id[int(t)] for t in ids]
    return chosen[:limit] if limit else chosen


def load_baseline(run_id: str, read: Reader) -> tuple[dict[str, Any], dict[str, Any], dict[int, dict[str, Any]]]:
    """(config, split manifest, per-task records by task_id) of a baseline run, read with `read(run_id, file)`
    (`tracking.load_jsonl_artifact`; the script checks first that the run is a FINISHED `baseline` run)."""
    cfg = read(run_id, CONFIG_FILE)[0]
    manifest = read(run_id, SPLITS_FILE)[0]
    records = {int(r["task_id"]): r for r in read(run_id, SAMPLES_FILE)}
    return cfg, manifest, records


def pass_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Pass rate with its Wilson interval, syntax errors, sandbox statuses and per-split pass rates."""
    n, k = len(rows), sum(r["passed"] for r in rows)
    low, high = wilson_interval(k, n)
    out: dict[str, float] = {"n_tasks": n, "n_passed": k, "pass_rate": k / n, "pass_rate_low": low}
    out["pass_rate_high"] = high
    out["syntax_error_rate"] = sum(not r["syntax_ok"] for r in rows) / n
    for status, count in collections.Counter(r["status"] for r in rows).items():
        out[f"status_{status}"] = count
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        if part:
            out[f"pass_rate_{split}"] = sum(r["passed"] for r in part) / len(part)
            out[f"n_{split}"] = len(part)
    return out


FEATURES_FILE = "features.json"


def hook_point(sae: SAE, layer: str, hook: str) -> tuple[int, str]:
    """The (layer, hook) to read/steer: the SAE's own; explicit values must agree (else SteerkitError)."""
    chosen_layer = sae.cfg.layer if layer == "auto" else as_int("layer", layer, 0)
    chosen_hook = sae.cfg.hook if hook == "auto" else hook
    sae.check_hook(chosen_layer, chosen_hook)
    return chosen_layer, chosen_hook


def check_sae_model(sae: SAE, loaded: LoadedModel) -> dict[str, str]:
    """Refuse an SAE of another width or layer range; a different model name is only tagged (the tags returned)."""
    if sae.cfg.d_in != loaded.d_model:
        raise SteerkitError(f"SAE d_in {sae.cfg.d_in} does not match {loaded.spec} d_model {loaded.d_model}")
    loaded.check_layer(sae.cfg.layer)
    if sae.cfg.model and sae.cfg.model != loaded.spec:
        return {"steerkit.sae_model_mismatch": f"{sae.cfg.model} != {loaded.spec}"}
    return {}


SELECTED_FILE = "selected_coefficients.json"
TRAINED_IDS_FILE = "training_task_ids.json"  # in a trained SAE's directory: task ids whose text it was trained on


def holdout_ids(spec: str, splits_of: Callable[[str], dict[str, Any]]) -> set[int] | None:
    """Task ids kept out of SAE training: "all" -> None (every record with a task id), "none" -> {}, else a
    baseline run id -> its validation split (`splits_of(run_id)` returns the run's `SPLITS_FILE` record)."""
    if spec == "all":
        return None
    if spec == "none":
        return set()
    return {int(t) for t in splits_of(spec)["task_ids"]["validation"]}


def check_sae_holdout(sae_path: Any, manifest: dict[str, Any]) -> dict[str, str]:
    """Refuse an SAE whose training text (its `TRAINED_IDS_FILE`) holds a validation problem, by task id; tags."""
    path = Path(sae_path) / TRAINED_IDS_FILE
    if not path.is_file():
        return {"steerkit.sae_holdout": f"unchecked: the SAE has no {TRAINED_IDS_FILE}"}
    trained = {int(t) for t in read_json(path, "SAE training ids")[1]["task_ids"]}
    leaked = sorted(trained & {int(t) for t in manifest["task_ids"]["validation"]})
    if leaked:
        raise SteerkitError(f"SAE {sae_path} was trained on {len(leaked)} validation problems (task ids {leaked[:5]})")
    return {"steerkit.sae_holdout": "checked: no validation problem in the SAE's training text"}
