"""The refusal direction: difference of means at the last prompt token, norm check, controls, interventions.

Design note: the reference (seed 003) took the activation difference at the last prompt token after appending
two suffixes the model could not yet see, a ~1e-5 vector that normalised into noise. Here the direction of
layer L is mean(harmful) - mean(benign) of the residual stream at `resid_pre` of block L (the input of the
block, as in the refusal-direction literature), read at the last token of the chat-templated prompt: the end
of the assistant header, a position the model has seen and from which its answer starts. A direction whose raw
norm is below `threshold` x the mean residual norm at that position is rejected with a logged reason; a
direction whose norm is no longer than label-shuffled ones (permutation p > `perm_alpha`) is rejected the same
way: it is sampling noise, and the sweep spends no generation on it. The same hook point is used for steering:

- `add`: `ResidualAdd(vector = unit direction, coef = alpha x mean residual norm at L)` at every position
  (prompt and generated) of block L's input. alpha = 0.1 adds 10% of a typical residual norm; negative alpha
  subtracts (expected: less refusal); alpha = 0 is the identity through the same code path.
- `ablate`: `DirectionAblation(alpha)` at the input of *every* block and at the output of the last one (the
  literature ablates everywhere, because every block can write the direction back). alpha = 1 projects the
  direction out; 0 < alpha < 1 shrinks it by (1 - alpha) per hook, which compounds over the hooks. A single
  hook with alpha = 2 would reflect the component (flip its sign), but reflections at consecutive blocks undo
  each other, so ablation alphas outside [0, 1] are rejected (`ABLATE_RANGE`).

Controls: a random direction of equal norm (seeded) and a label-shuffled direction (harmful/benign labels
permuted, then the same difference of means).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from steerkit.core.activations import last_token_residuals
from steerkit.core.generation import Prompt
from steerkit.core.positions import ALL
from steerkit.errors import SteerkitError
from steerkit.interventions.residual import DirectionAblation, HookPoint, ResidualAdd

if TYPE_CHECKING:
    from steerkit.core.models import LoadedModel

InterventionKind = Literal["add", "ablate"]
INTERVENTIONS: tuple[str, ...] = ("add", "ablate")
ABLATE_RANGE = (0.0, 1.0)


def mean_difference(harmful: torch.Tensor, benign: torch.Tensor) -> torch.Tensor:
    """mean(harmful) - mean(benign): `[n, d]`, `[m, d]` -> `[d]` (float64 accumulation, float32 result)."""
    if harmful.ndim != 2 or benign.ndim != 2 or harmful.shape[1] != benign.shape[1]:
        raise SteerkitError(f"need [n, d] and [m, d] activations, got {tuple(harmful.shape)} and {tuple(benign.shape)}")
    return (harmful.double().mean(0) - benign.double().mean(0)).float()


def shuffled_difference(harmful: torch.Tensor, benign: torch.Tensor, seed: int) -> torch.Tensor:
    """The label-shuffled control: permute the pooled rows, split them with the same group sizes, diff of means."""
    pooled = torch.cat([harmful, benign])
    order = torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed))
    return mean_difference(pooled[order[: len(harmful)]], pooled[order[len(harmful) :]])


def permutation_norm_p(harmful: torch.Tensor, benign: torch.Tensor, n_perm: int = 200, seed: int = 0) -> float:
    """Share of label shuffles whose difference of means is at least as long as the real one ((k + 1) / (n + 1)).

    A direction that is not longer than what shuffled labels give is sampling noise, however large its norm.
    """
    real = float(mean_difference(harmful, benign).norm())
    longer = sum(float(shuffled_difference(harmful, benign, seed + i).norm()) >= real for i in range(n_perm))
    return (longer + 1) / (n_perm + 1)


def random_direction(d_model: int, norm: float, seed: int) -> torch.Tensor:
    """A seeded Gaussian direction `[d_model]` rescaled to `norm` (the random control)."""
    vec = torch.randn(d_model, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (vec / vec.norm() * norm).float()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


@dataclass(frozen=True)
class LayerDirection:
    """The direction of one layer and its norm check.

    Attributes:
        layer, hook: where it was read (and where it steers).
        vector: raw `[d_model]` difference of means (not normalised).
        mean_resid_norm: mean L2 norm of the last-token residuals (harmful and benign) at this layer.
        accepted: whether `norm / mean_resid_norm >= threshold` (and permutation p <= alpha when checked);
            `reason` says why not.
        permutation_p: `permutation_norm_p` of the direction (NaN when not computed).
    """

    layer: int
    hook: str
    vector: torch.Tensor = field(repr=False)
    mean_resid_norm: float
    threshold: float
    accepted: bool
    reason: str
    permutation_p: float = math.nan

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def ratio(self) -> float:
        return self.norm / self.mean_resid_norm

    @property
    def unit(self) -> torch.Tensor:
        return self.vector / self.vector.norm()


def check_direction(
    layer: int, hook: str, vector: torch.Tensor, rows: torch.Tensor, threshold: float
) -> LayerDirection:
    """Norm check of `vector` against the mean norm of the residual `rows` `[n, d]` it was computed from."""
    mean_norm = float(rows.double().norm(dim=1).mean())
    ratio = float(vector.norm()) / mean_norm if mean_norm > 0 else 0.0
    ok = ratio >= threshold
    reason = "" if ok else f"raw norm {float(vector.norm()):.3g} is {ratio:.3g} x the mean residual norm < {threshold}"
    return LayerDirection(layer, hook, vector, mean_norm, threshold, ok, reason)


def check_permutation(direction: LayerDirection, p_value: float, alpha: float) -> LayerDirection:
    """Record `p_value` and reject an accepted direction whose permutation p exceeds `alpha` (one-line reason)."""
    out = dataclasses.replace(direction, permutation_p=p_value)
    if not direction.accepted or p_value <= alpha:
        return out
    reason = f"permutation p {p_value:.3g} > alpha {alpha}: no longer than label-shuffled directions"
    return dataclasses.replace(out, accepted=False, reason=reason)


@dataclass(frozen=True)
class Directions:
    """Per-layer directions from harmful vs benign prompts, plus the cached activations for the controls."""

    layers: dict[int, LayerDirection]
    harmful: dict[int, torch.Tensor] = field(repr=False)
    benign: dict[int, torch.Tensor] = field(repr=False)

    def accepted(self) -> list[int]:
        return [layer for layer, d in self.layers.items() if d.accepted]


def compute_directions(
    loaded: LoadedModel,
    harmful: Sequence[Prompt],
    benign: Sequence[Prompt],
    layers: Sequence[int],
    *,
    hook: HookPoint = "resid_pre",
    threshold: float = 0.05,
    batch_size: int = 16,
    perm_alpha: float | None = None,
    n_perm: int = 200,
    seed: int = 0,
) -> Directions:
    """Difference of means at the last chat-templated prompt token, per layer, with the norm check and, unless
    `perm_alpha` is None, the permutation check (`n_perm` label shuffles seeded from `seed`)."""
    acts = last_token_residuals(loaded, [*harmful, *benign], list(layers), hook=hook, chat=True, batch_size=batch_size)
    n = len(harmful)
    out, harm_acts, benign_acts = {}, {}, {}
    for layer in layers:
        harm_acts[layer], benign_acts[layer] = acts[layer][:n], acts[layer][n:]
        vec = mean_difference(harm_acts[layer], benign_acts[layer])
        out[layer] = check_direction(layer, hook, vec, acts[layer], threshold)
        if perm_alpha is not None:
            p_value = permutation_norm_p(harm_acts[layer], benign_acts[layer], n_perm, seed)
            out[layer] = check_permutation(out[layer], p_value, perm_alpha)
    return Directions(out, harm_acts, benign_acts)


def alpha_coef(alpha: float, mean_resid_norm: float) -> float:
    """The `ResidualAdd` coefficient of a unit direction: alpha x the mean residual norm at the layer."""
    return float(alpha) * float(mean_resid_norm)


def build_interventions(
    kind: str, layer: int, direction: torch.Tensor, alpha: float, mean_resid_norm: float, n_layers: int, hook: HookPoint
) -> list[Any]:
    """The hooks of one condition (see the module note): `add` at block `layer`, or `ablate` at every block."""
    unit = direction / direction.norm()
    if kind == "add":
        return [ResidualAdd(layer, unit, alpha_coef(alpha, mean_resid_norm), hook, ALL)]
    if kind == "ablate":
        lo, hi = ABLATE_RANGE
        if not lo <= alpha <= hi:
            raise SteerkitError(f"ablate alpha must be in [{lo}, {hi}] (applied at every block), got {alpha}")
        hooks: list[Any] = [DirectionAblation(i, unit, alpha, "resid_pre", ALL) for i in range(n_layers)]
        return [*hooks, DirectionAblation(n_layers - 1, unit, alpha, "resid_post", ALL)]
    raise SteerkitError(f"unknown intervention {kind!r} (choose from {', '.join(INTERVENTIONS)})")
