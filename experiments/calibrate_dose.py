"""Entry point `calibrate_dose` (seed 000, phase 1): which attention scale brings Rust to the Python level?

An Optuna study (steerkit.search.run_study: one parent run, a nested run per trial, resumable from its storage)
over the scale of `AttentionEdit(op="scale")` at one layer, on the Rust test items: sources are the `#[test]`
marker tokens (and, with `sources=from_marker`, every later position), targets the function's tokens in the
definition before it, so the edited edges are causally valid (queries attend back to earlier keys). Objective:
|steered Rust level - Python reference level|, the level being the head-averaged `metric` of marker -> target
attention at the layer, read from the same forward pass (the capture sees the edited weights). The reference
comes from a `measure_attention` run (`measure_run_id`, its `layer_stats.json`) or is measured in-process on the
Python items (tag `steerkit.reference_source`). Each trial also logs KL(baseline || steered) between last-token
vocabulary distributions; the baseline is the same edit at scale 1.0 through the same code path, which is
checked bit-identical to the unhooked model (`identity_max_abs_logit_diff`), so KL is exactly 0 at scale 1.

The chosen scale (the trial closest to the reference) is logged as metrics and as `chosen_scale.json`. It is
chosen on these items: report its effect on other prompts.

Usage: mlflow run . -e calibrate_dose --env-manager local -P limit=10 [-P measure_run_id=RUN_ID]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure_attention as ma  # noqa: E402

from steerkit import tracking  # noqa: E402
from steerkit.attention_measure import METRICS, TARGET_CHOICES, edge_edit, level, measure  # noqa: E402
from steerkit.cli import as_bool, as_float, as_float_list, as_int, as_layer  # noqa: E402
from steerkit.core.generation import next_token_logits  # noqa: E402
from steerkit.core.models import LoadedModel, load_model  # noqa: E402
from steerkit.corpora.attention_pairs import AttentionItem  # noqa: E402
from steerkit.errors import SteerkitError  # noqa: E402
from steerkit.metrics import kl_divergence  # noqa: E402
from steerkit.search import StudyConfig, redact_storage, run_study  # noqa: E402

TRIAL_ENTRY_POINT = "calibrate_dose_trial"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="calibrate_dose", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layer", default="auto", help="index, 'auto' = round(0.6 * n_layers), or 'measure' (see README)")
    p.add_argument("--measure-run-id", default="", help="a FINISHED measure_attention run ('' = measure here)")
    p.add_argument("--grid", default="1.0,2.0,2.5,3.0,3.5,4.0", help="scales for sampler=grid (keep 1.0)")
    p.add_argument("--sampler", default="grid", help="grid or tpe")
    p.add_argument("--n-trials", default=12, help="trials for sampler=tpe")
    p.add_argument("--scale-range", default="1.0,8.0", help="low,high scale for sampler=tpe")
    p.add_argument("--storage", default="sqlite:///optuna.db")
    p.add_argument("--study-name", default="auto")
    p.add_argument("--limit", default=10, help="first N Rust test items (0 = all)")
    p.add_argument("--metric", default="total_mass", help=", ".join(METRICS))
    p.add_argument("--target", default="function_name", help=", ".join(TARGET_CHOICES))
    p.add_argument("--sources", default="from_marker", help="marker, or from_marker (marker and every later token)")
    p.add_argument("--seed", default=0)
    p.add_argument("--batch-size", default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/attention_pairs.json")
    p.add_argument("--chat", default="false")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def measure_run_rows(run_id: str, loaded: LoadedModel, target: str, chat: bool) -> list[dict[str, Any]]:
    """The per-layer table of a FINISHED measure_attention run, after checking it measured the same thing."""
    run = tracking.get_finished_run(run_id)
    params = run.data.params
    if run.data.tags.get(tracking.TAG_ENTRY_POINT) != "measure_attention":
        raise SteerkitError(f"run {run_id!r} is not a measure_attention run")
    for key, want in (("model", loaded.spec), ("target", target), ("chat", str(chat).lower())):
        if str(params.get(key, "")).lower() != str(want).lower():
            raise SteerkitError(f"measure run {run_id} has {key}={params.get(key)!r}, this run needs {want!r}")
    return tracking.load_run_table(run_id, "layer_stats.json")


def resolve_layer(value: str, loaded: LoadedModel, rows: list[dict[str, Any]] | None) -> int:
    """An index, 'auto' (round(0.6 * n_layers), as generate_n50), or 'measure': the measure run's layer with the
    smallest paired-test q-value (ties: the largest Python - Rust difference)."""
    if value == "measure":
        if not rows:
            raise SteerkitError("layer='measure' needs measure_run_id")
        best = min(rows, key=lambda r: (_nan_high(r.get("paired_wilcoxon_q")), -float(r["difference"])))
        return int(best["layer"])
    return as_layer("layer", value, loaded, others="'auto' or 'measure'")


def _nan_high(x: Any) -> float:
    return 2.0 if x is None or not np.isfinite(float(x)) else float(x)


def reference_level(
    rows: list[dict[str, Any]] | None, layer: int, metric: str, python: list[AttentionItem], ctx: dict[str, Any]
) -> tuple[float, str]:
    """The Python level at `layer`: from the measure run's table, or measured here on `python` items."""
    if rows is not None:
        match = [r for r in rows if int(r["layer"]) == layer]
        if not match:
            raise SteerkitError(f"measure run did not measure layer {layer}")
        return float(match[0][f"python_{metric}"]), f"measure_run:{ctx['run_id']}"
    found = measure(
        ctx["loaded"], python, layers=[layer], target=ctx["target"], chat=ctx["chat"], batch_size=ctx["batch"]
    )
    levels = level(found.items, layer, metric)
    tracking.log_table([{"id": i.id, "level": float(v)} for i, v in zip(python, levels)], "reference_items.json")
    return float(levels.mean()), "in_process"


@dataclass(frozen=True)
class DoseSettings:
    """What every trial shares: which edges are scaled, which level is read, and the scale bounds."""

    metric: str
    target: str
    sources: str
    chat: bool
    batch_size: int
    scale_low: float
    scale_high: float

    def __post_init__(self) -> None:
        ma.choice("metric", self.metric, METRICS)
        ma.choice("target", self.target, TARGET_CHOICES)
        ma.choice("sources", self.sources, ("marker", "from_marker"))


def _measure_kw(s: DoseSettings) -> dict[str, Any]:
    return {"target": s.target, "chat": s.chat, "batch_size": s.batch_size}


class DoseObjective:
    """|steered Rust level - reference| for one scale, with KL against the scale-1.0 baseline of the same path."""

    def __init__(self, loaded: LoadedModel, rust: list[AttentionItem], layer: int, reference: float, s: DoseSettings):
        self.loaded, self.rust, self.layer, self.reference, self.settings = loaded, rust, layer, reference, s
        base = self.measure(1.0)
        self.base_logits = base.logits
        self.natural = level(base.items, layer, s.metric)

    def measure(self, scale: float) -> Any:
        """Capture at the layer under the scale-`scale` edit (scale 1.0 = the identity baseline, same path)."""
        s = self.settings
        edit = self.edit(scale)
        return measure(self.loaded, self.rust, layers=[self.layer], interventions=[edit], **_measure_kw(s))

    def edit(self, scale: float) -> Any:
        s = self.settings
        return edge_edit(self.rust, self.layer, op="scale", value=scale, target=s.target, sources=s.sources)

    def evaluate(self, scale: float) -> dict[str, Any]:
        """Steered level, objective and KL at `scale`, with the per-item rows."""
        found = self.measure(scale)
        levels = level(found.items, self.layer, self.settings.metric)
        kl = kl_divergence(self.base_logits, found.logits).numpy()
        rows = [
            {"id": i.id, "natural_level": float(n), "steered_level": float(s), "kl": float(k)}
            for i, n, s, k in zip(self.rust, self.natural, levels, kl)
        ]
        steered = float(levels.mean())
        return {
            "scale": scale,
            "steered_level": steered,
            "objective": abs(steered - self.reference),
            "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()),
            "rows": rows,
        }

    def __call__(self, trial: Any) -> float:
        scale = trial.suggest_float("scale", self.settings.scale_low, self.settings.scale_high)
        out = self.evaluate(scale)
        tracking.set_tags({tracking.TAG_ENTRY_POINT: TRIAL_ENTRY_POINT})
        tracking.log_params({"resolved_layer": self.layer, "n_items": len(self.rust)})
        tracking.log_table(out["rows"], "trial_items.json")
        metrics = {k: out[k] for k in ("steered_level", "objective", "kl_mean", "kl_max")}
        tracking.log_metrics({**metrics, "reference_level": self.reference, "dose": scale})
        for key in ("steered_level", "kl_mean", "kl_max"):
            trial.set_user_attr(key, out[key])
        return float(out["objective"])


def study_name(args: Any, loaded: LoadedModel, corpus_sha: str, layer: int, reference: float, n: int) -> str:
    """'auto' names the study after everything fixed across its trials, so a changed setting starts afresh."""
    if args.study_name != "auto":
        return str(args.study_name)
    facts = {
        "model": loaded.describe(),
        "corpus": corpus_sha,
        "layer": layer,
        "n": n,
        "reference": round(reference, 12),
        **{k: str(getattr(args, k)) for k in ("metric", "target", "sources", "chat", "sampler")},
        "code": tracking.code_version(),
    }
    return f"calibrate_dose-{hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]}"


def scale_bounds(args: Any) -> tuple[float, float]:
    """(low, high) scale: the grid's range, or `scale_range` for TPE (parsed and checked)."""
    if args.sampler == "grid":
        grid = [as_float("grid", v, minimum=0.0) for v in as_float_list("grid", args.grid)]
        return min(grid), max(grid)
    bounds = as_float_list("scale_range", args.scale_range)
    if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1]:
        raise SteerkitError(f"scale_range must be 'low,high' with 0 <= low < high, got {args.scale_range!r}")
    return bounds[0], bounds[1]


def study_config(args: Any, name: str, seed: int) -> StudyConfig:
    if args.sampler == "grid":
        grid = as_float_list("grid", args.grid)
        return StudyConfig(name, args.storage, ("minimize",), "grid", {"scale": grid}, seed)
    n_trials = as_int("n_trials", args.n_trials, 1)
    return StudyConfig(name, args.storage, ("minimize",), "tpe", {}, seed, n_trials)


def identity_check(loaded: LoadedModel, rust: list[AttentionItem], objective: DoseObjective) -> dict[str, float]:
    """Unhooked vs scale-1.0 logits (must be identical), and KL at scale 1.0 through the trial code path."""
    s = objective.settings
    plain = next_token_logits(loaded, [i.as_prompt() for i in rust], chat=s.chat, batch_size=s.batch_size)
    at_one = objective.evaluate(1.0)
    return {
        "identity_max_abs_logit_diff": float((plain - objective.base_logits).abs().max()),
        "kl_at_scale_1": at_one["kl_max"],
        "natural_rust_level": float(objective.natural.mean()),
    }


def chosen(study: Any, reference: float, layer: int, settings: DoseSettings) -> dict[str, Any]:
    """The trial closest to the reference; `reference_bracketed` says whether the tried scales reached it."""
    best = study.best_trial
    reached = [t.user_attrs["steered_level"] for t in study.trials if "steered_level" in t.user_attrs]
    return {
        "reference_bracketed": bool(reached) and min(reached) <= reference <= max(reached),
        "scale": float(best.params["scale"]),
        "level_reached": float(best.user_attrs["steered_level"]),
        "reference_level": reference,
        "objective": float(best.value),
        "kl_mean": float(best.user_attrs["kl_mean"]),
        "kl_max": float(best.user_attrs["kl_max"]),
        "layer": layer,
        "metric": settings.metric,
        "target": settings.target,
        "sources": settings.sources,
        "trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
    }


def settings_from(args: Any) -> DoseSettings:
    ma.choice("sampler", args.sampler, ("grid", "tpe"))
    low, high = scale_bounds(args)
    return DoseSettings(
        metric=args.metric,
        target=args.target,
        sources=args.sources,
        chat=as_bool("chat", args.chat),
        batch_size=as_int("batch_size", args.batch_size, 1),
        scale_low=low,
        scale_high=high,
    )


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("calibrate_dose", vars(args), experiment=args.experiment):
        settings = settings_from(args)
        seed = as_int("seed", args.seed)
        corpus, pairs = ma.load_pairs(args.corpus, as_int("limit", args.limit, 0))
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        rows = (
            measure_run_rows(args.measure_run_id, loaded, args.target, settings.chat) if args.measure_run_id else None
        )
        layer = resolve_layer(args.layer, loaded, rows)
        python, rust = [p for p, _ in pairs], [r for _, r in pairs]
        ctx = {"run_id": args.measure_run_id, "loaded": loaded, "target": args.target, "chat": settings.chat}
        reference, source = reference_level(rows, layer, args.metric, python, ctx | {"batch": settings.batch_size})
        tracking.set_tags({"steerkit.reference_source": source})
        name = study_name(args, loaded, corpus.sha256, layer, reference, len(rust))
        config = study_config(args, name, seed)
        objective = DoseObjective(loaded, rust, layer, reference, settings)
        tracking.log_params(
            {
                "resolved_layer": layer,
                "hook": "attention_post_softmax",
                "n_items": len(rust),
                "corpus_sha256": corpus.sha256,
                "resolved_study_name": name,
                "resolved_storage": redact_storage(args.storage),
                **{f"model_{k}": v for k, v in loaded.describe().items()},
            }
        )
        checks = identity_check(loaded, rust, objective)
        tracking.log_metrics({**checks, "reference_level": reference})
        study = run_study(objective, config, metric_names=["objective"])
        result = chosen(study, reference, layer, settings) | {"reference_source": source, "seed": seed}
        tracking.log_json(result, "chosen_scale.json")
        tracking.log_metrics(
            {
                "chosen_scale": result["scale"],
                "chosen_level": result["level_reached"],
                "chosen_objective": result["objective"],
                "chosen_kl_mean": result["kl_mean"],
                "reference_bracketed": result["reference_bracketed"],
            }
        )
        print(json.dumps({k: result[k] for k in ("scale", "level_reached", "reference_level", "kl_mean")} | checks))


if __name__ == "__main__":
    tracking.entry_point(main)
