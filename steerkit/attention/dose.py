"""Seed 000, phase 1: the attention scale that brings Rust's marker -> function attention to the Python level.

Design note: the objective (`DoseObjective`) is |steered Rust level - Python reference level| for one scale of
`AttentionEdit(op="scale")` at one layer, the level being the head-averaged `metric` of marker -> target attention
read from the same forward pass (the capture sees the edited weights). Its baseline is the same edit at scale
1.0 through the same path, so KL(baseline || steered) is exactly 0 at scale 1. The reference comes from a
`measure_attention` run's per-layer table or is measured here on the Python items. No MLflow here: a trial's
logging is the `record(metrics, rows)` callback the script passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from steerkit.attention.measure import METRICS, TARGET_CHOICES, edge_edit, level, measure
from steerkit.cli import as_choice, as_layer
from steerkit.core.checks import IDENTITY_KEY, max_abs_diff
from steerkit.core.generation import next_token_logits
from steerkit.core.models import LoadedModel
from steerkit.corpora.attention_pairs import AttentionItem
from steerkit.errors import SteerkitError
from steerkit.metrics import kl_divergence

Row = dict[str, Any]
SOURCES = ("marker", "from_marker")


def resolve_layer(value: str, loaded: LoadedModel, rows: list[Row] | None) -> int:
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
    rows: list[Row] | None,
    layer: int,
    metric: str,
    python: list[AttentionItem],
    ctx: dict[str, Any],
    log_items: Callable[[list[Row]], None] = lambda rows: None,
) -> tuple[float, str]:
    """The Python level at `layer`: from the measure run's table, or measured here on `python` items (their
    per-item levels go to `log_items`)."""
    if rows is not None:
        match = [r for r in rows if int(r["layer"]) == layer]
        if not match:
            raise SteerkitError(f"measure run did not measure layer {layer}")
        return float(match[0][f"python_{metric}"]), f"measure_run:{ctx['run_id']}"
    found = measure(
        ctx["loaded"], python, layers=[layer], target=ctx["target"], chat=ctx["chat"], batch_size=ctx["batch"]
    )
    levels = level(found.items, layer, metric)
    log_items([{"id": i.id, "level": float(v)} for i, v in zip(python, levels)])
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
        as_choice("metric", self.metric, METRICS)
        as_choice("target", self.target, TARGET_CHOICES)
        as_choice("sources", self.sources, SOURCES)


class ScaleTrials(ABC):
    """One Optuna trial of a dose objective: `evaluate(scale)` gives the level reached, |level - reference| and the
    KL; the trial logs them (`record`) and minimises the objective. Shared by `DoseObjective` and
    `rule_dose.RuleDoseObjective`, which differ only in what they measure."""

    settings: DoseSettings
    reference: float
    record: Callable[[Row, list[Row]], None]

    @abstractmethod
    def evaluate(self, scale: float) -> dict[str, Any]:
        """scale, steered_level, objective, kl_mean, kl_max and the per-item rows at one scale."""

    def __call__(self, trial: Any) -> float:
        scale = trial.suggest_float("scale", self.settings.scale_low, self.settings.scale_high)
        out = self.evaluate(scale)
        metrics = {k: out[k] for k in ("steered_level", "objective", "kl_mean", "kl_max")}
        self.record({**metrics, "reference_level": self.reference, "dose": scale}, out["rows"])
        for key in ("steered_level", "kl_mean", "kl_max"):
            trial.set_user_attr(key, out[key])
        return float(out["objective"])


class DoseObjective(ScaleTrials):
    """|steered Rust level - reference| for one scale, with KL against the scale-1.0 baseline of the same path."""

    def __init__(
        self,
        loaded: LoadedModel,
        rust: list[AttentionItem],
        layer: int,
        reference: float,
        s: DoseSettings,
        record: Callable[[Row, list[Row]], None] = lambda metrics, rows: None,
    ):
        self.loaded, self.rust, self.layer, self.reference, self.settings = loaded, rust, layer, reference, s
        self.record = record
        base = self.measure(1.0)
        self.base_logits = base.logits
        self.natural = level(base.items, layer, s.metric)

    def measure(self, scale: float) -> Any:
        """Capture at the layer under the scale-`scale` edit (scale 1.0 = the identity baseline, same path)."""
        s, edit = self.settings, self.edit(scale)
        layers = [self.layer]
        return measure(
            self.loaded,
            self.rust,
            layers=layers,
            target=s.target,
            chat=s.chat,
            batch_size=s.batch_size,
            interventions=[edit],
        )

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

    def describe(self) -> dict[str, Any]:
        return {"metric": self.settings.metric, "target": self.settings.target, "sources": self.settings.sources}

    def identity_check(self) -> dict[str, float]:
        """Unhooked vs scale-1.0 logits (must be identical), and KL at scale 1.0 through the trial code path."""
        s = self.settings
        plain = next_token_logits(self.loaded, [i.as_prompt() for i in self.rust], chat=s.chat, batch_size=s.batch_size)
        return {
            IDENTITY_KEY: max_abs_diff(plain, self.base_logits),
            "kl_at_scale_1": self.evaluate(1.0)["kl_max"],
            "natural_rust_level": float(self.natural.mean()),
        }


def chosen(study: Any, reference: float, layer: int, described: Mapping[str, Any]) -> dict[str, Any]:
    """The trial closest to the reference; `reference_bracketed` says whether the tried scales reached it.

    `described`: what the objective calibrated (its `describe()`: metric, target and sources, or the edge rule)."""
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
        **described,
        "trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
    }


__all__ = ["SOURCES", "DoseObjective", "DoseSettings", "chosen", "reference_level", "resolve_layer"]
