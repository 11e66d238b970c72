"""The refusal-sweep config: a YAML file validated into a frozen dataclass.

Design note: the seed's iteration ladder (smoke -> layer_test -> alpha_sweep -> full) is four YAML files under
experiments/configs/. A file is parsed once at the boundary; unknown keys are an error naming them (a typo like
`alpah` must not silently fall back to a default). Alpha 0 is the identity: it is not a condition of its own,
because one baseline (alpha 0 through the same hooked code path) serves every layer and intervention.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from steerkit.cli import as_int
from steerkit.errors import SteerkitError
from steerkit.interventions.residual import HOOK_POINTS, HookPoint
from steerkit.refusal.direction import ABLATE_RANGE, INTERVENTIONS

CONTROLS: tuple[str, ...] = ("random", "shuffled")


@dataclass(frozen=True)
class SweepConfig:
    """One level of the refusal ladder.

    Attributes:
        name: the level's name (logged).
        layers: block indices whose direction is computed and used (validated against the model at run time).
        interventions: `{"add": [alphas], "ablate": [alphas]}`; add alpha is a fraction of the mean residual
            norm at the layer (negative subtracts), ablate alpha is in [0, 1] (applied at every block).
        prompts_per_split: prompts evaluated per split (harm_train, harm_test, benign eval); 0 = all.
        direction_prompts: prompts per set for the directions (harm_train, harm_test, benign direction split);
            0 = all (the smoke level uses fewer to fit its time budget).
        max_new_tokens, batch_size: generation (greedy, chat template on).
        hook: where directions are read and `add` steers (`resid_pre` = input of the block).
        norm_threshold: reject a layer whose direction norm / mean residual norm is below this.
        direction_alpha: reject a layer whose direction permutation p (200 label shuffles) exceeds this
            (1 disables the check).
        controls: control directions run at every steered condition (`random`, `shuffled`).
        helpfulness_max_drop: selection constraint: benign helpfulness may fall at most this much below baseline.
        seed: seeds the control directions.
    """

    name: str
    layers: tuple[int, ...]
    interventions: dict[str, tuple[float, ...]]
    prompts_per_split: int = 0
    direction_prompts: int = 0
    max_new_tokens: int = 64
    batch_size: int = 16
    hook: HookPoint = "resid_pre"
    norm_threshold: float = 0.05
    direction_alpha: float = 0.05
    controls: tuple[str, ...] = CONTROLS
    helpfulness_max_drop: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SteerkitError(f"config name must be a non-empty string, got {self.name!r}")
        layers = tuple(self.layers) if isinstance(self.layers, list | tuple) else ()
        if not layers or not all(_is_int(x) and x >= 0 for x in layers) or len(set(layers)) != len(layers):
            raise SteerkitError(f"layers must be a non-empty list of distinct integers >= 0, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "interventions", _check_interventions(self.interventions))
        for name, low in (
            ("prompts_per_split", 0),
            ("direction_prompts", 0),
            ("max_new_tokens", 1),
            ("batch_size", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise SteerkitError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.hook not in HOOK_POINTS:
            raise SteerkitError(f"hook must be one of {', '.join(HOOK_POINTS)}, got {self.hook!r}")
        for name in ("norm_threshold", "helpfulness_max_drop", "direction_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
                raise SteerkitError(f"{name} must be a number in [0, 1], got {value!r}")
        controls = tuple(self.controls) if isinstance(self.controls, list | tuple) else (self.controls,)
        bad = [c for c in controls if c not in CONTROLS]
        if bad:
            raise SteerkitError(f"unknown controls {bad} (choose from {', '.join(CONTROLS)})")
        object.__setattr__(self, "controls", controls)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> SweepConfig:
        """Build from a mapping; unknown keys raise naming them."""
        if not isinstance(data, dict):
            raise SteerkitError(f"{source} must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SteerkitError(f"unknown keys in {source}: {', '.join(map(str, unknown))}")
        missing = sorted(k for k in ("name", "layers", "interventions") if k not in data)
        if missing:
            raise SteerkitError(f"{source} lacks required keys: {', '.join(missing)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}

    def conditions(self) -> list[tuple[str, int, float]]:
        """Steered (intervention, layer, alpha) triples, alpha 0 excluded (that is the shared baseline)."""
        return [
            (kind, layer, a)
            for kind, alphas in self.interventions.items()
            for layer in self.layers
            for a in alphas
            if a
        ]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_interventions(value: Any) -> dict[str, tuple[float, ...]]:
    if not isinstance(value, dict) or not value:
        raise SteerkitError(f"interventions must map add/ablate to alpha lists, got {value!r}")
    out: dict[str, tuple[float, ...]] = {}
    for kind, alphas in value.items():
        if kind not in INTERVENTIONS:
            raise SteerkitError(f"unknown intervention {kind!r} (choose from {', '.join(INTERVENTIONS)})")
        if not isinstance(alphas, list | tuple) or not alphas:
            raise SteerkitError(f"{kind} alphas must be a non-empty list, got {alphas!r}")
        for a in alphas:
            if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a):
                raise SteerkitError(f"{kind} alpha must be a finite number, got {a!r}")
            if kind == "ablate" and not ABLATE_RANGE[0] <= a <= ABLATE_RANGE[1]:
                raise SteerkitError(f"ablate alpha must be in [0, 1] (applied at every block), got {a!r}")
        out[kind] = tuple(float(a) for a in alphas)
    return out


def load_sweep_config(path: str | Path, **overrides: Any) -> SweepConfig:
    """Read a YAML level file; non-None `overrides` replace its fields (e.g. prompts_per_split from `limit`)."""
    file = Path(path)
    if not file.is_file():
        raise SteerkitError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise SteerkitError(f"malformed YAML in {path}: {str(exc).splitlines()[0]}") from exc
    config = SweepConfig.from_dict(data, source=str(path))
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, **changes) if changes else config


def _override(name: str, value: str, minimum: int) -> int | None:
    return None if str(value).strip() in ("", "config") else as_int(name, value, minimum)


def config_from_params(*, config: str, limit: str, seed: str, batch_size: str, max_new_tokens: str) -> SweepConfig:
    """The YAML level file `config`, with the non-empty parameter overrides ("" or "config" = keep) applied."""
    return load_sweep_config(
        config,
        prompts_per_split=_override("limit", limit, 0),
        seed=_override("seed", seed, 0),
        batch_size=_override("batch_size", batch_size, 1),
        max_new_tokens=_override("max_new_tokens", max_new_tokens, 1),
    )
