"""Training a small SAE on cached residual activations, and the metrics it is judged by.

Design note: pure torch on an in-memory `[n, d_in]` tensor. Two standard recipes:

- `topk` (Gao et al. 2024, default): keep the k largest pre-activations, loss = reconstruction error + AuxK
  (the `aux_k` largest pre-activations of *dead* features reconstruct the residual error, weight `aux_coefficient`),
  which revives dead features without an L1 coefficient to tune.
- `relu`: loss = reconstruction error + `l1_coefficient` × Σ_i f_i ‖W_dec[i]‖ (decoder-norm-weighted L1).

Both keep decoder rows at unit norm (the gradient component along each row is removed before the step and rows
are renormalised after it), initialise `W_dec` with random unit rows, `W_enc = W_dec.T` and `b_dec` = the data
mean. Inputs are scaled by one constant so that E‖x‖² = d_in while training (hyperparameters transfer across
models), and the scale is folded back at the end: the returned SAE reads raw activations, its decoder rows
stay unit norm, and feature activations are in raw residual units. Reconstruction error = squared error summed
over d_in, averaged over tokens. Everything is seeded (`TrainConfig.seed`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from steerkit.core.progress import progress
from steerkit.errors import SteerkitError
from steerkit.sae.model import SAE, SAEConfig


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the SAE's shape and activation live in `SAEConfig`).

    Attributes:
        lr: Adam learning rate (linearly decayed to 0 over the last `decay_fraction` of steps).
        batch_size: tokens per step.
        epochs: passes over the data; ignored when `steps` is set.
        steps: number of optimiser steps (None = from `epochs`).
        l1_coefficient: relu only: weight of the decoder-norm-weighted L1 penalty.
        aux_k: topk only: dead features used by the AuxK loss (0 = off).
        aux_coefficient: topk only: weight of the AuxK loss.
        dead_after_tokens: a feature not fired for this many training tokens counts as dead (AuxK, logging).
        log_every: steps between `on_step` records.
        seed: seeds initialisation and shuffling.
        decay_fraction: final fraction of steps over which lr decays linearly to 0.
    """

    lr: float = 1e-3
    batch_size: int = 512
    epochs: float = 1.0
    steps: int | None = None
    l1_coefficient: float = 1.0
    aux_k: int = 256
    aux_coefficient: float = 1.0 / 32.0
    dead_after_tokens: int = 20_000
    log_every: int = 10
    seed: int = 0
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs, "log_every": self.log_every}
        for name, value in positive.items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise SteerkitError(f"TrainConfig {name} must be a positive number, got {value!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise SteerkitError(f"TrainConfig steps must be a positive integer or None, got {self.steps!r}")
        non_negative = {
            "l1_coefficient": self.l1_coefficient,
            "aux_k": self.aux_k,
            "aux_coefficient": self.aux_coefficient,
            "dead_after_tokens": self.dead_after_tokens,
        }
        for name, value in non_negative.items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise SteerkitError(f"TrainConfig {name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise SteerkitError(f"TrainConfig decay_fraction must be in [0, 1], got {self.decay_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def n_steps(self, n_tokens: int) -> int:
        """Optimiser steps for `n_tokens` of training data."""
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * n_tokens / self.batch_size))


def _check_data(activations: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    if activations.ndim != 2 or activations.shape[1] != cfg.d_in:
        raise SteerkitError(f"activations must be [n, {cfg.d_in}], got shape {tuple(activations.shape)}")
    if activations.shape[0] < 2:
        raise SteerkitError(f"need at least 2 activation rows to train an SAE, got {activations.shape[0]}")
    x = activations.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise SteerkitError("activations contain NaN or inf")
    return x


def _init_sae(cfg: SAEConfig, x: torch.Tensor, gen: torch.Generator) -> SAE:
    """Unit-norm random decoder rows, tied encoder, `b_dec` = data mean."""
    w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    tensors = {"W_dec": w_dec, "W_enc": w_dec.T.clone(), "b_enc": torch.zeros(cfg.d_sae), "b_dec": x.mean(0)}
    return SAE.from_tensors(cfg, tensors)


def _aux_loss(sae: SAE, pre: torch.Tensor, err: torch.Tensor, dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """AuxK: the top-`aux_k` dead features' pre-activations reconstruct the residual error `err` `[b, d_in]`."""
    n_dead = int(dead.sum())
    if n_dead == 0 or aux_k == 0:
        return pre.new_zeros(())
    masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
    values, indices = masked.topk(min(aux_k, n_dead), dim=-1)
    f_aux = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    return ((f_aux @ sae.W_dec - err) ** 2).sum(-1).mean()


def _project_decoder_grad(sae: SAE) -> None:
    """Remove the gradient component along each (unit) decoder row, so the step does not fight the norm."""
    grad = sae.W_dec.grad
    if grad is not None:
        grad -= (grad * sae.W_dec).sum(1, keepdim=True) * sae.W_dec


def _fold_scale(sae: SAE, scale: float) -> SAE:
    """The SAE trained on `x * scale`, rewritten to read raw `x` (see module note); features in raw units."""
    tensors = {
        "W_enc": sae.W_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_enc": sae.b_enc.detach() / scale,
        "b_dec": sae.b_dec.detach() / scale,
        "threshold": sae.threshold.detach() / scale,
    }
    return SAE.from_tensors(sae.cfg, tensors)


def _lr_factor(step: int, total: int, decay_fraction: float) -> float:
    start = int(total * (1.0 - decay_fraction))
    return 1.0 if step < start else max(0.0, (total - step) / max(1, total - start))


def train_sae(
    activations: torch.Tensor,
    cfg: SAEConfig,
    train: TrainConfig,
    *,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> tuple[SAE, list[dict[str, float]]]:
    """Train an SAE of shape `cfg` on `activations` `[n, d_in]` (raw residuals, float32).

    Args:
        activations: training rows (hold validation rows out yourself).
        cfg: shape, activation (`relu` or `topk`; `jumprelu` is for loading only), hook point and provenance.
        train: optimisation settings.
        on_step: called with each logged record (`step`, `loss`, `mse`, `sparsity_loss`, `l0`,
            `explained_variance` on the batch, `dead_fraction`, `lr`, `seconds`).

    Returns:
        (the trained SAE reading raw activations, the logged records).
    """
    if cfg.activation == "jumprelu":
        raise SteerkitError("training a jumprelu SAE is not supported (train relu or topk; load jumprelu SAEs)")
    x_all = _check_data(activations, cfg)
    gen = torch.Generator().manual_seed(train.seed)
    scale = math.sqrt(cfg.d_in / float((x_all**2).sum(1).mean().clamp_min(1e-12)))
    x_all = x_all * scale
    sae = _init_sae(cfg, x_all, gen)
    optimiser = torch.optim.Adam(sae.parameters(), lr=train.lr)
    total, n = train.n_steps(x_all.shape[0]), x_all.shape[0]
    last_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    order, cursor, tokens_seen, history, t0 = torch.randperm(n, generator=gen), 0, 0, [], time.perf_counter()
    for step in progress(range(total), desc="train SAE", unit="step"):
        if cursor + train.batch_size > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        x = x_all[order[cursor : cursor + train.batch_size]]
        cursor += train.batch_size
        tokens_seen += x.shape[0]
        factor = _lr_factor(step, total, train.decay_fraction)
        record = _train_step(sae, optimiser, x, last_fired, tokens_seen, train, factor)
        if step % train.log_every == 0 or step == total - 1:
            record.update(step=float(step), seconds=time.perf_counter() - t0)
            history.append(record)
            if on_step is not None:
                on_step(record)
    return _fold_scale(sae, scale), history


def _train_step(
    sae: SAE,
    optimiser: torch.optim.Optimizer,
    x: torch.Tensor,
    last_fired: torch.Tensor,
    tokens_seen: int,
    train: TrainConfig,
    lr_factor: float,
) -> dict[str, float]:
    """One optimiser step on batch `x` `[b, d_in]`; updates `last_fired` `[d_sae]` in place."""
    for group in optimiser.param_groups:
        group["lr"] = train.lr * lr_factor
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = sae.activate(pre)
    x_hat = sae.decode(f)
    mse = ((x_hat - x) ** 2).sum(-1).mean()
    dead = (tokens_seen - last_fired) > train.dead_after_tokens
    if sae.cfg.activation == "topk":
        sparsity = train.aux_coefficient * _aux_loss(sae, pre, (x - x_hat).detach(), dead, train.aux_k)
    else:
        sparsity = train.l1_coefficient * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    loss = mse + sparsity
    optimiser.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    _project_decoder_grad(sae)
    optimiser.step()
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        fired = (f > 0).any(0)
        last_fired[fired] = tokens_seen
        total_var = ((x - x.mean(0)) ** 2).sum(-1).mean()
    return {
        "loss": float(loss.detach()),
        "mse": float(mse.detach()),
        "sparsity_loss": float(sparsity.detach()),
        "l0": float((f > 0).float().sum(-1).mean()),
        "explained_variance": float(1.0 - mse.detach() / total_var.clamp_min(1e-12)),
        "dead_fraction": float(dead.float().mean()),
        "lr": train.lr * lr_factor,
    }


@torch.no_grad()
def sae_metrics(sae: SAE, activations: torch.Tensor, *, batch_size: int = 4096) -> dict[str, float]:
    """Reconstruction quality of `sae` on `activations` `[n, d_in]` (raw, e.g. held-out).

    Returns:
        `mse` (squared error summed over d_in, mean over tokens), `mse_per_dim` (mean over elements),
        `explained_variance` = 1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖², `l0` (mean active features per token),
        `dead_fraction` (features that never fire on these rows), `n_tokens`.
    """
    x_all = _check_data(activations, sae.cfg)
    sq_err, fired, l0_sum = 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool), 0.0
    for b0 in range(0, x_all.shape[0], batch_size):
        x = x_all[b0 : b0 + batch_size]
        f = sae.encode(x)
        sq_err += float(((sae.decode(f) - x).double() ** 2).sum())
        fired |= (f > 0).any(0).cpu()
        l0_sum += float((f > 0).sum())
    n = x_all.shape[0]
    total_var = float(((x_all.double() - x_all.double().mean(0)) ** 2).sum())
    return {
        "mse": sq_err / n,
        "mse_per_dim": sq_err / (n * sae.cfg.d_in),
        "explained_variance": 1.0 - sq_err / total_var if total_var > 0 else float("nan"),
        "l0": l0_sum / n,
        "dead_fraction": float((~fired).float().mean()),
        "n_tokens": float(n),
    }
