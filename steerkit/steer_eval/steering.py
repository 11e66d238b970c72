"""What `steer_eval` does to the model: a spec string or arguments in, one `Steering` out.

Design note: every intervention kind is reduced to a `Steering` that builds its interventions for one coefficient
and knows its identity value (0 for a residual addition or an ablation, 1 for an attention scale), so the identity
control and every coefficient go through the same builder and the same generation code. Spec strings (an MLflow
parameter) name the kind and its source:

- `direction=PATH[#KEY]`: a residual vector from `.pt` (a tensor, or a `{layer: tensor}` dict such as
  steering-vectors' `SteeringVector.layer_activations`), `.npy` or `.safetensors` (the one tensor, or `#KEY`),
  added as `coef x vector` (raw, not normalised) at `hook` of each layer.
- `mean_diff=POS_FILE,NEG_FILE`: mean(POS) - mean(NEG) of the residual stream at the last prompt token (a position
  the model has seen; seed 003's difference was taken at unseen tokens), per layer, with the norm check of
  `steerkit.refusal.direction` (a direction whose raw norm is under `min_relative_norm` x the mean residual norm
  is refused).
- `sae=PATH:feature=N`: the SAE's decoder row N at the SAE's own layer and hook (`steerkit.sae`; a `runs:/` URI
  or run id is resolved to a path by the caller, which may read MLflow).
- `ablate=PATH[#KEY]`: `DirectionAblation` of that direction, alpha = coef (0 = identity, 1 = projected out).
- `attention=RULE`: `AttentionEdit(op="scale")` with a named edge rule (`steerkit.attention.edge_rules`) or
  `SOURCES->TARGETS` position selectors (`from:RE->pattern:RE`); coef is the scale, 1 the identity.

Not read: steering-vectors has no file format of its own (a pickled Python object; save its
`layer_activations` dict with `torch.save`), and repeng's `.gguf` export does not document which block output
its `direction.N` tensors belong to, so neither is guessed at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from steerkit.attention.edge_rules import EDGE_RULES, edge_rule
from steerkit.core.activations import last_token_residuals
from steerkit.core.generation import Prompt
from steerkit.core.models import LoadedModel
from steerkit.core.positions import ALL, Selector, parse_selector
from steerkit.corpora.loader import load_prompt_table
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionEdit, DirectionAblation, ResidualAdd
from steerkit.interventions.residual import HOOK_POINTS
from steerkit.refusal.direction import check_direction, mean_difference
from steerkit.sae import load_sae

Kind = Literal["add", "ablate", "attention"]
SPEC_KINDS = ("direction", "mean_diff", "sae", "ablate", "attention")
VECTOR_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")


@dataclass(frozen=True)
class Steering:
    """Interventions for any coefficient, and the coefficient that leaves the model unchanged.

    Attributes:
        kind: `add` (ResidualAdd), `ablate` (DirectionAblation) or `attention` (AttentionEdit scale).
        layers: blocks acted on.
        hook: `resid_pre` / `resid_post` (residual kinds).
        positions: where a residual edit applies (`ALL`, `GENERATED`, ...).
        vectors: per layer, the `[d_model]` vector (add) or direction (ablate).
        edges: (sources, targets) of an attention edit.
        facts: what a run logs about it (source, norms, ...).
    """

    kind: Kind
    layers: tuple[int, ...]
    hook: str = "resid_post"
    positions: Selector = ALL
    vectors: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    edges: tuple[Selector, Selector] | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> float:
        return 1.0 if self.kind == "attention" else 0.0

    def interventions(self, coef: float) -> list[Any]:
        """The interventions at `coef` (`identity` gives the control, bit-identical to the unhooked model)."""
        if self.kind == "attention":
            assert self.edges is not None
            layer = self.layers[0] if len(self.layers) == 1 else self.layers
            return [AttentionEdit(layer, self.edges[0], self.edges[1], "scale", float(coef))]
        if self.kind == "add":
            return [ResidualAdd(i, self.vectors[i], float(coef), self.hook, self.positions) for i in self.layers]  # type: ignore[arg-type]
        return [DirectionAblation(i, self.vectors[i], float(coef), self.hook, self.positions) for i in self.layers]  # type: ignore[arg-type]


def load_vector(path: str | Path, layer: int | None = None) -> torch.Tensor:
    """A `[d_model]` float32 vector from `.pt`/`.pth`, `.npy` or `.safetensors` (`PATH#KEY` picks a tensor).

    A `.pt` dict keyed by layer (steering-vectors' `layer_activations`) gives the entry of `layer`.
    """
    text = str(path)
    file_part, _, key = text.partition("#")
    file = Path(file_part)
    if not file.is_file():
        raise SteerkitError(f"direction file not found: {file_part}")
    if file.suffix not in VECTOR_SUFFIXES:
        raise SteerkitError(f"direction file {file_part} must end in {', '.join(VECTOR_SUFFIXES)}")
    try:
        if file.suffix == ".npy":
            import numpy as np

            obj: Any = torch.from_numpy(np.load(file, allow_pickle=False))
        elif file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(file))
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/numpy/safetensors raise many types for a bad file
        raise SteerkitError(f"cannot read direction file {file_part}: {type(exc).__name__}: {exc}") from exc
    return _pick(obj, key, layer, file_part)


def _pick(obj: Any, key: str, layer: int | None, where: str) -> torch.Tensor:
    if isinstance(obj, dict):
        if key:
            if key not in obj:
                raise SteerkitError(f"direction file {where} has no tensor {key!r} (has {', '.join(map(str, obj))})")
            obj = obj[key]
        elif layer is not None and (layer in obj or str(layer) in obj):
            obj = obj[layer] if layer in obj else obj[str(layer)]
        elif len(obj) == 1:
            obj = next(iter(obj.values()))
        else:
            raise SteerkitError(f"direction file {where} holds {len(obj)} tensors and none for layer {layer}: use #KEY")
    if not isinstance(obj, torch.Tensor):
        raise SteerkitError(f"direction file {where} holds a {type(obj).__name__}, not a tensor")
    vec = obj.detach().to(torch.float32).squeeze()
    if vec.ndim != 1:
        raise SteerkitError(f"direction in {where} has shape {tuple(obj.shape)}, expected [d_model]")
    if not torch.isfinite(vec).all() or float(vec.norm()) == 0.0:
        raise SteerkitError(f"direction in {where} is zero or holds NaN/inf")
    return vec


def _mean_diff(
    loaded: LoadedModel, source: str, layers: Sequence[int], hook: str, text_field: str, chat: bool, min_norm: float
) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    files = [p.strip() for p in source.split(",")]
    if len(files) != 2 or not all(files):
        raise SteerkitError(f"mean_diff needs two prompt files POS,NEG, got {source!r}")
    tables = [load_prompt_table(f, text_field=text_field) for f in files]
    groups = [[Prompt(r.id, r.text) for r in t.rows] for t in tables]
    acts = last_token_residuals(loaded, [*groups[0], *groups[1]], list(layers), hook=hook, chat=chat)  # type: ignore[arg-type]
    vectors = {}
    facts: dict[str, Any] = {"pos_sha256": tables[0].sha256, "neg_sha256": tables[1].sha256}
    for layer in layers:
        rows = acts[layer]
        vec = mean_difference(rows[: len(groups[0])], rows[len(groups[0]) :])
        checked = check_direction(layer, hook, vec, rows, min_norm)
        if not checked.accepted:
            raise SteerkitError(f"mean_diff direction at layer {layer} refused: {checked.reason}")
        vectors[layer] = vec
        facts[f"norm_L{layer}"], facts[f"relative_norm_L{layer}"] = checked.norm, checked.ratio
    return vectors, facts


def parse_spec(spec: str) -> tuple[str, str]:
    """`KIND=SOURCE` -> (kind, source), the kind checked."""
    kind, sep, source = spec.partition("=")
    if not sep or kind not in SPEC_KINDS or not source:
        raise SteerkitError(f"intervention must be KIND=SOURCE with KIND in {', '.join(SPEC_KINDS)}, got {spec!r}")
    return kind, source


def build_steering(
    loaded: LoadedModel,
    spec: str,
    *,
    layers: Sequence[int] | None,
    hook: str = "resid_post",
    positions: str | Selector = "all",
    text_field: str = "prompt",
    chat: bool = False,
    min_relative_norm: float = 0.01,
) -> Steering:
    """The `Steering` of a spec string (see the module note); `layers=None` means the SAE's own layer for `sae`
    and is an error for the other kinds (the caller resolves 'auto')."""
    kind, source = parse_spec(spec)
    if hook not in HOOK_POINTS:
        raise SteerkitError(f"hook must be one of {', '.join(HOOK_POINTS)}, got {hook!r}")
    where = parse_selector(positions) if isinstance(positions, str) else positions
    if kind == "sae":
        return _sae_steering(source, layers, hook, where)
    if not layers:
        raise SteerkitError(f"intervention {kind} needs at least one layer")
    for layer in layers:
        loaded.check_layer(layer)
    facts: dict[str, Any] = {"kind": kind, "source": source}
    if kind == "attention":
        return Steering("attention", tuple(layers), hook, where, edges=_edges(source), facts=facts)
    if kind == "mean_diff":
        vectors, more = _mean_diff(loaded, source, layers, hook, text_field, chat, min_relative_norm)
        facts.update(more)
    else:
        vectors = {layer: load_vector(source, layer) for layer in layers}
        facts.update({f"norm_L{layer}": float(v.norm()) for layer, v in vectors.items()})
    bad = next((v.numel() for v in vectors.values() if v.numel() != loaded.d_model), None)
    if bad is not None:
        raise SteerkitError(f"direction {source!r} has size {bad} but {loaded.spec} has d_model {loaded.d_model}")
    return Steering("ablate" if kind == "ablate" else "add", tuple(layers), hook, where, vectors, facts=facts)


def _edges(source: str) -> tuple[Selector, Selector]:
    if source in EDGE_RULES:
        return edge_rule(source)
    src, sep, tgt = source.partition("->")
    if not sep:
        raise SteerkitError(f"attention must be a rule ({', '.join(EDGE_RULES)}) or SOURCES->TARGETS, got {source!r}")
    return parse_selector(src.strip()), parse_selector(tgt.strip())


def _sae_steering(source: str, layers: Sequence[int] | None, hook: str, where: Selector) -> Steering:
    path, sep, feature_part = source.rpartition(":feature=")
    if not sep:
        raise SteerkitError(f"sae must be PATH:feature=N, got {source!r}")
    try:
        feature = int(feature_part)
    except ValueError as exc:
        raise SteerkitError(f"sae feature must be an integer, got {feature_part!r}") from exc
    sae = load_sae(path)
    if layers and (len(layers) != 1 or layers[0] != sae.cfg.layer):
        raise SteerkitError(f"SAE {path} acts at layer {sae.cfg.layer}, not at layers {list(layers)}")
    add = sae.steering(feature, 1.0, hook=hook if hook != "resid_post" else None, positions=where)
    vec = sae.decoder_direction(feature)  # the raw decoder row: coef is in units of feature activation
    facts = {"kind": "sae", "source": path, "feature": feature, f"norm_L{add.layer}": float(vec.norm())}
    return Steering("add", (add.layer,), add.hook, where, {add.layer: vec}, facts=facts)


__all__ = ["SPEC_KINDS", "Steering", "build_steering", "load_vector", "parse_spec"]
