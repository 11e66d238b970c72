"""Residual-stream interventions: add a vector, or ablate a direction, at a named hook point.

Design note: hook points are named like TransformerLens's: `resid_pre` is the input of block L (a forward
pre-hook), `resid_post` its output (a forward hook); nothing is inferred. The edit at a position is masked by
the resolved positions, so with `coef=0` / `alpha=0` the stream is unchanged to the bit (adding an exact zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from steerkit.core.positions import ALL, EncodedPrompt, RowPositions, Selector
from steerkit.errors import SteerkitError

if TYPE_CHECKING:
    from steerkit.core.models import LoadedModel
    from steerkit.interventions.base import Handle, SteerState

HookPoint = Literal["resid_pre", "resid_post"]
HOOK_POINTS = ("resid_pre", "resid_post")
EditFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_vector(value: Any, name: str) -> torch.Tensor:
    vec = torch.as_tensor(value).detach().flatten().to(torch.float32)
    if not torch.isfinite(vec).all():
        raise SteerkitError(f"{name} contains NaN or inf")
    return vec


def _check_common(layer: int, hook: str, loaded: LoadedModel, vec: torch.Tensor, name: str) -> None:
    loaded.check_layer(layer)
    if hook not in HOOK_POINTS:
        raise SteerkitError(f"unknown hook point {hook!r} (choose from {', '.join(HOOK_POINTS)})")
    if vec.numel() != loaded.d_model:
        raise SteerkitError(f"{name} has size {vec.numel()} but {loaded.spec} has d_model {loaded.d_model}")


def _check_finite(value: float, name: str) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise SteerkitError(f"{name} must be a finite number, got {value!r}")


def _create_residual_hook(
    state: SteerState, index: int, selector: Selector, edit: EditFn, pre: bool
) -> Callable[..., Any]:
    """Hook applying `edit(hidden [b, q, d], mask [b, q])` to a block's input (`pre`) or output."""

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        batch, q_len = hidden.shape[:2]
        table = state.table(index, "positions", selector, batch)
        mask = table.mask(state.query_positions(batch, q_len))
        return edit(hidden, mask)

    return wrap_block_hook(apply, pre)


def wrap_block_hook(apply: Callable[[torch.Tensor], torch.Tensor], pre: bool) -> Callable[..., Any]:
    """A block's forward pre-hook (`pre`, edits its input) or forward hook (edits its output) applying `apply`."""
    if pre:

        def pre_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (apply(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": apply(kwargs["hidden_states"])}

        return pre_hook

    def post_hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (apply(output[0]), *output[1:])
        return apply(output)

    return post_hook


def _register(loaded: LoadedModel, layer: int, hook: str, fn: Callable[..., Any]) -> list[Handle]:
    block = loaded.layers()[layer]
    if hook == "resid_pre":
        return [block.register_forward_pre_hook(fn, with_kwargs=True)]
    return [block.register_forward_hook(fn)]


@dataclass(frozen=True)
class ResidualAdd:
    """Add `coef × vector` to the residual stream at `hook` of block `layer`, at `positions`.

    Attributes:
        layer: block index.
        vector: `[d_model]` steering vector (not normalised here; `coef` scales it as given).
        coef: multiplier; 0 leaves the model bit-identical.
        hook: `resid_post` (output of block L, default) or `resid_pre` (input of block L).
        positions: `ALL`, `PROMPT`, `GENERATED`, `Explicit(...)`, `Pattern(...)`, ...
    """

    layer: int
    vector: Any
    coef: float = 1.0
    hook: HookPoint = "resid_post"
    positions: Selector = ALL
    _vec: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_finite(self.coef, "coef")
        object.__setattr__(self, "_vec", _as_vector(self.vector, "vector"))

    def validate(self, loaded: LoadedModel) -> None:
        _check_common(self.layer, self.hook, loaded, self._vec, "vector")

    def selectors(self) -> dict[str, Selector]:
        return {"positions": self.positions}

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None:
        return None

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]:
        delta = (self.coef * self._vec).to(device=loaded.device, dtype=loaded.dtype)

        def edit(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return hidden + mask[..., None].to(hidden.dtype) * delta

        hook = _create_residual_hook(state, index, self.positions, edit, self.hook == "resid_pre")
        return _register(loaded, self.layer, self.hook, hook)


@dataclass(frozen=True)
class DirectionAblation:
    """Remove `alpha ×` the component of the residual stream along `direction`.

    `alpha=1` projects the direction out (h - (h·d̂)d̂); `alpha=0` is the identity; `alpha=2` reflects the
    component (flips its sign); values in between shrink it. The direction is normalised here.
    """

    layer: int
    direction: Any
    alpha: float = 1.0
    hook: HookPoint = "resid_post"
    positions: Selector = ALL
    _unit: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_finite(self.alpha, "alpha")
        vec = _as_vector(self.direction, "direction")
        norm = float(vec.norm())
        if norm == 0.0:
            raise SteerkitError("direction has zero norm")
        object.__setattr__(self, "_unit", vec / norm)

    def validate(self, loaded: LoadedModel) -> None:
        _check_common(self.layer, self.hook, loaded, self._unit, "direction")

    def selectors(self) -> dict[str, Selector]:
        return {"positions": self.positions}

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None:
        return None

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]:
        unit = self._unit.to(device=loaded.device, dtype=loaded.dtype)
        alpha = self.alpha

        def edit(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            coeff = (hidden @ unit) * mask.to(hidden.dtype) * alpha
            return hidden - coeff[..., None] * unit

        hook = _create_residual_hook(state, index, self.positions, edit, self.hook == "resid_pre")
        return _register(loaded, self.layer, self.hook, hook)
