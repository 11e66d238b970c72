"""The one SAE class every loader converts into, and the hook point it belongs to.

Design note: an SAE is only meaningful at the residual-stream point it was trained on, so `SAEConfig` records
it (`layer` + `hook`, steerkit's names: `resid_pre` = input of block L, `resid_post` = its output) and
`SAE.steering` builds a `ResidualAdd` there and nowhere else; asking for another point raises (the reference
implementation steered block L's input with an SAE trained on block L's output).

Maths (one convention for every source format):

    pre    = (x - b_dec) @ W_enc + b_enc                        [..., d_sae]
    relu:     f = relu(pre)
    jumprelu: f = relu(pre) * (pre > threshold)
    topk:     f = relu(pre) on the k largest entries of pre, 0 elsewhere
    x_hat  = f @ W_dec + b_dec                                   [..., d_in]

Formats that do not subtract `b_dec` before encoding (GemmaScope `params.npz`, SAELens configs with
`apply_b_dec_to_input: false`) are converted exactly at load time by folding `b_dec @ W_enc` into `b_enc`, so
`encode` reproduces the source format's pre-activations (up to float32 rounding); the loaded `b_enc` then differs
from the file's by that term.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from steerkit.core.positions import ALL, Selector
from steerkit.errors import SteerkitError
from steerkit.interventions.residual import HOOK_POINTS, HookPoint, ResidualAdd

Activation = Literal["relu", "jumprelu", "topk"]
ACTIVATIONS = ("relu", "jumprelu", "topk")
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post)$")


def hook_name(layer: int, hook: str) -> str:
    """TransformerLens/SAELens name of a residual hook point, e.g. `blocks.12.hook_resid_post`."""
    return f"blocks.{layer}.hook_{hook}"


def parse_hook_name(name: str) -> tuple[int, HookPoint]:
    """`blocks.12.hook_resid_post` -> (12, "resid_post"); anything but resid_pre/resid_post raises."""
    match = _HOOK_NAME.match(str(name))
    if match is None:
        raise SteerkitError(
            f"unsupported SAE hook_name {name!r}: steerkit steers the residual stream only "
            "(blocks.L.hook_resid_pre or blocks.L.hook_resid_post)"
        )
    hook: HookPoint = "resid_pre" if match.group(2) == "resid_pre" else "resid_post"
    return int(match.group(1)), hook


@dataclass(frozen=True)
class SAEConfig:
    """Shape, activation and provenance of an SAE.

    Attributes:
        d_in: input width (the model's d_model).
        d_sae: number of features.
        activation: `relu`, `jumprelu` (per-feature `threshold`) or `topk` (keep the `k` largest).
        k: features kept per token; required iff `activation == "topk"`.
        layer: block index the SAE was trained on.
        hook: `resid_post` (output of block `layer`) or `resid_pre` (its input).
        model: the model spec/name it was trained on (informational).
        source: path or repository it was loaded from ("" when built in memory).
    """

    d_in: int
    d_sae: int
    activation: Activation = "relu"
    k: int | None = None
    layer: int = 0
    hook: HookPoint = "resid_post"
    model: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SteerkitError(f"SAEConfig {name} must be a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise SteerkitError(f"unknown SAE activation {self.activation!r} (choose from {', '.join(ACTIVATIONS)})")
        if self.activation == "topk":
            if not _is_int(self.k) or not 1 <= self.k <= self.d_sae:  # type: ignore[operator]
                raise SteerkitError(f"topk SAE needs an integer k in 1..{self.d_sae}, got {self.k!r}")
        elif self.k is not None:
            raise SteerkitError(f"k={self.k!r} is only meaningful for activation 'topk', not {self.activation!r}")
        if not _is_int(self.layer) or self.layer < 0:
            raise SteerkitError(f"SAEConfig layer must be a non-negative integer, got {self.layer!r}")
        if self.hook not in HOOK_POINTS:
            raise SteerkitError(f"unknown hook point {self.hook!r} (choose from {', '.join(HOOK_POINTS)})")

    @property
    def hook_name(self) -> str:
        """`blocks.L.hook_resid_post` style name of where the SAE was trained."""
        return hook_name(self.layer, self.hook)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Inverse of `to_dict`; unknown keys raise (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SteerkitError(f"unknown SAEConfig keys {unknown}")
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SAE(nn.Module):
    """A sparse autoencoder at one residual hook point (maths in the module docstring).

    Attributes:
        cfg: the `SAEConfig`.
        W_enc: `[d_in, d_sae]`; b_enc: `[d_sae]`; W_dec: `[d_sae, d_in]`; b_dec: `[d_in]` (parameters).
        threshold: `[d_sae]` buffer; the JumpReLU thresholds, zeros for relu/topk.
    """

    threshold: torch.Tensor

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("threshold", torch.zeros(cfg.d_sae))

    @classmethod
    def from_tensors(cls, cfg: SAEConfig, tensors: dict[str, torch.Tensor]) -> SAE:
        """An SAE holding `tensors` (`W_enc`, `b_enc`, `W_dec`, `b_dec`, optional `threshold`), shapes checked."""
        sae = cls(cfg)
        missing = sorted({"W_enc", "b_enc", "W_dec", "b_dec"} - set(tensors))
        if missing:
            raise SteerkitError(f"SAE weights from {cfg.source or 'memory'} lack {missing}")
        if cfg.activation == "jumprelu" and "threshold" not in tensors:
            raise SteerkitError(f"jumprelu SAE weights from {cfg.source or 'memory'} lack 'threshold'")
        with torch.no_grad():
            for name, target in [*sae.named_parameters(), ("threshold", sae.threshold)]:
                if name not in tensors:
                    continue
                value = torch.as_tensor(tensors[name]).detach().to(torch.float32)
                if tuple(value.shape) != tuple(target.shape):
                    raise SteerkitError(
                        f"SAE tensor {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)} "
                        f"for d_in={cfg.d_in}, d_sae={cfg.d_sae}"
                    )
                if not torch.isfinite(value).all():
                    raise SteerkitError(f"SAE tensor {name} from {cfg.source or 'memory'} contains NaN or inf")
                target.copy_(value)
        return sae

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations: `[..., d_in]` -> `[..., d_sae]`."""
        if x.shape[-1] != self.cfg.d_in:
            raise SteerkitError(f"SAE expects inputs of width {self.cfg.d_in}, got shape {tuple(x.shape)}")
        pre = (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc
        return self.activate(pre)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The activation function on pre-activations `[..., d_sae]`."""
        if self.cfg.activation == "relu":
            return torch.relu(pre)
        if self.cfg.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        values, indices = pre.topk(int(self.cfg.k or 0), dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction: `[..., d_sae]` -> `[..., d_in]`."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`decode(encode(x))`, `[..., d_in]`."""
        return self.decode(self.encode(x))

    def _check_feature(self, feature: int) -> None:
        if not _is_int(feature) or not 0 <= feature < self.cfg.d_sae:
            raise SteerkitError(f"feature {feature!r} out of range for an SAE with {self.cfg.d_sae} features")

    def decoder_direction(self, feature: int) -> torch.Tensor:
        """`W_dec[feature]` as a float32 CPU `[d_in]` copy, raw (not normalised).

        Raw is what `decode` adds per unit of activation, so `coef` in `steering` is in units of feature
        activation. SAEs trained here keep decoder rows at unit norm; loaded ones need not.
        """
        self._check_feature(feature)
        return self.W_dec[feature].detach().to(device="cpu", dtype=torch.float32).clone()

    def check_hook(self, layer: int, hook: str) -> None:
        """Raise unless (`layer`, `hook`) is the point the SAE was trained on."""
        if (layer, hook) != (self.cfg.layer, self.cfg.hook):
            raise SteerkitError(
                f"SAE was trained at {self.cfg.hook_name} (layer {self.cfg.layer}, {self.cfg.hook}) but was asked "
                f"to act at {hook_name(layer, hook)} (layer {layer}, {hook}); use the SAE's own hook point"
            )

    def steering(
        self,
        feature: int,
        coef: float,
        *,
        layer: int | None = None,
        hook: str | None = None,
        positions: Selector = ALL,
    ) -> ResidualAdd:
        """`ResidualAdd` of `coef × W_dec[feature]` at the SAE's own layer and hook point.

        `layer`/`hook` may be passed to state intent; anything but the SAE's own point raises.
        """
        self.check_hook(self.cfg.layer if layer is None else layer, self.cfg.hook if hook is None else hook)
        if not isinstance(coef, int | float) or not math.isfinite(coef):
            raise SteerkitError(f"steering coef must be a finite number, got {coef!r}")
        return ResidualAdd(
            layer=self.cfg.layer,
            vector=self.decoder_direction(feature),
            coef=float(coef),
            hook=self.cfg.hook,
            positions=positions,
        )

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k is not None else ""
        return f"d_in={c.d_in}, d_sae={c.d_sae}, activation={c.activation}{k}, at={c.hook_name}"
