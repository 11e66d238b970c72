"""Training an SAE from an entry point's parameters: configs, residuals collected at the hook, densities.

Design note: residuals are read with `core.activations.token_residuals` at the SAE's layer and hook point (first
token of each window skipped: its residual is an outlier); windows go longest first so batches hold similar
lengths. The training itself is `sae.train.train_sae`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import torch

from steerkit.cli import as_bool, as_float, as_int
from steerkit.core.activations import token_residuals
from steerkit.core.models import LoadedModel
from steerkit.errors import SteerkitError
from steerkit.interventions.residual import HOOK_POINTS, HookPoint
from steerkit.sae.data import Window, split_windows, token_windows
from steerkit.sae.model import ACTIVATIONS, SAE, Activation, SAEConfig
from steerkit.sae.train import TrainConfig


def build_configs(
    loaded: LoadedModel,
    layer: int,
    *,
    hook: str,
    activation: str,
    d_sae: str | int,
    k: str | int,
    lr: str | float,
    batch_size: str | int,
    epochs: str | float,
    l1_coefficient: str | float,
    seed: str | int,
) -> tuple[SAEConfig, TrainConfig]:
    """The SAE and training configs from the entry point's parameters (strings, validated here)."""
    if hook not in HOOK_POINTS:
        raise SteerkitError(f"unknown hook point {hook!r} (choose from {', '.join(HOOK_POINTS)})")
    if activation not in ("topk", "relu"):
        raise SteerkitError(f"activation must be topk or relu for training, got {activation!r} ({ACTIVATIONS})")
    cfg = SAEConfig(
        d_in=loaded.d_model,
        d_sae=4 * loaded.d_model if d_sae == "auto" else as_int("d_sae", d_sae, 1),
        activation=cast(Activation, activation),  # checked above
        k=as_int("k", k, 1) if activation == "topk" else None,
        layer=layer,
        hook=cast(HookPoint, hook),  # checked above
        model=loaded.spec,
    )
    train = TrainConfig(
        lr=as_float("lr", lr, 0.0),
        batch_size=as_int("batch_size", batch_size, 1),
        epochs=as_float("epochs", epochs, 0.0),
        l1_coefficient=as_float("l1_coefficient", l1_coefficient, 0.0),
        seed=as_int("seed", seed),
    )
    return cfg, train


def collect(loaded: LoadedModel, windows: list[Window], cfg: SAEConfig, batch_size: int) -> torch.Tensor:
    """Residuals `[n_tokens, d_model]` at the SAE's layer/hook over `windows`, first token of each skipped.

    Windows go longest first, so batches hold similar lengths (little padding); row order does not matter to
    training, which shuffles.
    """
    prompts = [w.as_prompt() for w in sorted(windows, key=lambda w: -w.n_tokens)]
    acts = token_residuals(loaded, prompts, cfg.layer, hook=cfg.hook, batch_size=batch_size, skip_first=True)
    return torch.cat(acts)


def firing_frequency(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """Fraction of rows `[n, d_in]` on which each feature fires, `[d_sae]`."""
    with torch.no_grad():
        return torch.cat([(sae.encode(x[i : i + 4096]) > 0).float() for i in range(0, x.shape[0], 4096)]).mean(0)


def files_sha256(files: list[dict[str, Any]]) -> str:
    """One hash over every training file used (path and content hash), logged as `corpus_sha256`."""
    return hashlib.sha256(json.dumps(sorted((f["path"], f["sha256"]) for f in files)).encode()).hexdigest()


def windows(
    tokenizer: Any,
    corpus: Path,
    seed: int,
    *,
    stdlib: str | bool,
    tokens: str | int,
    window: str | int,
    corpus_fraction: str | float,
    val_fraction: str | float,
) -> tuple[list[Window], list[Window], list[dict]]:
    """Train and validation token windows from the corpora (+ stdlib) under the token budget, and the files used."""
    found, files = token_windows(
        tokenizer,
        corpus,
        stdlib=as_bool("stdlib", stdlib),
        budget_tokens=as_int("tokens", tokens, 64),
        window=as_int("window", window, 16),
        corpus_fraction=as_float("corpus_fraction", corpus_fraction, 0.0),
        seed=seed,
    )
    train_w, val_w = split_windows(found, as_float("val_fraction", val_fraction), seed)
    return train_w, val_w, files


def reload_diff(sae: SAE, reloaded: SAE, x: torch.Tensor) -> float:
    """max |reloaded(x) - sae(x)|: a saved SAE must reload to the same function (0 expected)."""
    with torch.no_grad():
        return float((reloaded(x) - sae(x)).abs().max())
