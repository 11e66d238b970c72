"""Run names that say what a run is (`n50 scale=3.0 L18`, `trial 4 coef=50`), made in one place.

Design note: every entry point calls `tracked_run(entry_point, params)`, so the name is derived here from the entry
point and a few of its params (`KEY_PARAMS`), never written in a script. The layer shows as `L<n>` once resolved
(`resolved_layer`, logged after the model loads; the run is renamed then); a value that says nothing (`auto`,
`none`, empty) is left out, and a model other than the embedded default is appended. Under `mlflow run` the run
already has a random name; setting the `mlflow.runName` tag replaces it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"
_SILENT = ("", "auto", "none", "config", "all", "sweep")
_SHORT = {"coefficient": "coef", "noise_scale": "noise", "primary_test": "test"}

# entry point -> (short label, params that tell its runs apart); "layer"/"layers" render as L<n>
KEY_PARAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "generate_n50": ("n50", ("scale", "layer")),
    "sweep_scales": ("sweep", ("grid", "layer")),
    "main": ("main", ("scales", "layer")),
    "search_worker": ("worker", ("objective", "grid", "layer")),
    "measure_attention": ("attention", ("metric", "target", "layers")),
    "calibrate_dose": ("dose", ("sampler", "grid", "layer")),
    "steer_attention": ("steer-attention", ("levels", "layer")),
    "knockout": ("knockout", ("target", "layers")),
    "knockout_generate": ("knockout-generate", ("amplify", "layers")),
    "patch_activations": ("patch", ("layers",)),
    "refusal_sweep": ("refusal", ("config", "judge")),
    "train_sae": ("sae", ("activation", "k", "hook", "layer")),
    "baseline": ("baseline", ("problems",)),
    "find_features": ("features", ("top_n", "layer")),
    "select_coefficients": ("select", ("directions", "sampler", "grid")),
    "evaluate_steering": ("evaluate", ("controls",)),
    "entropy_seeds": ("entropy", ("mode", "sources")),
    "entropy_control": ("entropy-control", ("seed_source",)),
    "direct_injection": ("injection", ("method", "noise_scale")),
    "entropy_analysis": ("entropy-analysis", ("primary_test", "controls")),
    "compare_runs": ("compare", ("entry_point", "reference")),
    "steer_eval": ("steer-eval", ("scorer", "coef", "grid", "layer")),
}


def run_name(entry_point: str, params: Mapping[str, Any]) -> str:
    """`<label> k=v ... L<layer> [model]` for a run of `entry_point` (params as logged or as parsed)."""
    label, keys = KEY_PARAMS.get(entry_point, (entry_point, ()))
    values = {k: _plain(v) for k, v in params.items()}
    if values.get("resolved_layer", "") not in _SILENT:
        values["layer"] = values["resolved_layer"]
    parts = [label]
    for key in keys:
        value = values.get(key, "")
        if value.lower() in _SILENT or (key == "coef" and values.get("grid", "").lower() not in _SILENT):
            continue  # a grid replaces the single coefficient: its default would read as if it were used
        if key in ("layer", "layers"):
            parts.append(f"L{value}")
        elif key in ("config", "problems", "entry_point"):
            parts.append(Path(value).stem)
        else:
            parts.append(f"{_SHORT.get(key, key)}={value}")
    model = values.get("model", DEFAULT_MODEL)
    if model and model != DEFAULT_MODEL:
        parts.append(Path(model).name)
    return " ".join(parts)[:250]


def trial_run_name(number: int, params: Mapping[str, Any]) -> str:
    """`trial <n> coef=50` for an Optuna trial (its params once sampled; none yet: `trial <n>`)."""
    shown = " ".join(f"{_SHORT.get(k, k)}={_number(v)}" for k, v in params.items())
    return f"trial {number} {shown}".strip()


def _plain(value: Any) -> str:
    """A param as text, unquoted (`mlflow run` logs its parameters shell-quoted)."""
    text = str(value)
    try:
        tokens = shlex.split(text)
    except ValueError:
        return text
    return tokens[0] if len(tokens) == 1 else text


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
