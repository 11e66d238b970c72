"""Control edges for attention knockout, matched by the attention mass they remove, not only by their count.

Design note: the targets of a knockout (the function-name tokens) may draw far more attention from the marker
than random keys do, so a control of the same edge count removes less mass and any "targets matter more" result
is confounded with "more attention was removed". `matched_control_keys` draws random keys before the first
marker (never position 0, the attention sink; never a target or marker token) whose baseline attention mass
(`key_mass`: post-softmax weights of the unhooked model from the knocked queries, summed over them, averaged over
heads; the caller averages over a condition's layers) is within a relative tolerance of the targets' mass,
keeping the edge count too when a random draw allows it. A draw is seeded per prompt id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from steerkit.core.models import LoadedModel
from steerkit.core.positions import EncodedPrompt
from steerkit.core.seeds import derive_seed
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, steer


@dataclass(frozen=True)
class MatchedControl:
    """Random control keys and the baseline attention mass they carry vs the targets' (`matched`: within tolerance;
    `same_count`: also as many keys as targets)."""

    keys: tuple[int, ...]
    target_mass: float
    control_mass: float
    matched: bool
    same_count: bool


class EdgeSet(Protocol):
    """What a control draw needs: the prompt id (seed), knocked queries and keys, and the first marker token."""

    @property
    def id(self) -> str: ...
    @property
    def sources(self) -> tuple[int, ...]: ...
    @property
    def targets(self) -> tuple[int, ...]: ...
    @property
    def first_marker(self) -> int: ...


@torch.inference_mode()
def key_mass(
    loaded: LoadedModel, encoded: EncodedPrompt, edges: EdgeSet, layers: Sequence[int]
) -> dict[int, np.ndarray]:
    """Per layer: the unhooked model's attention mass on each key before the first marker, `[first_marker]`:
    post-softmax weights from the knocked queries (`edges.sources`), summed over them, averaged over heads."""
    capture = AttentionCapture(layer=tuple(layers))
    with steer(loaded, capture, prompts=[encoded]):
        loaded.model(input_ids=torch.tensor([encoded.ids], device=loaded.device))
    rows = list(edges.sources)
    out = {}
    for layer in layers:
        (record,) = capture.records[layer]
        out[layer] = record.weights[0][:, rows, : edges.first_marker].double().sum(1).mean(0).numpy()
    return out


def matched_control_keys(
    sample: EdgeSet, mass: np.ndarray, seed: int, tolerance: float = 0.1, draws: int = 500
) -> MatchedControl:
    """Random keys in [1, first marker) minus targets and markers whose `mass` sum is within `tolerance`
    (relative) of the targets' sum; seeded per sample.

    First `draws` random sets of the targets' size are tried (count and mass matched); failing that, keys are
    taken in a random order, skipping any that would overshoot, until the mass is within tolerance (mass
    matched, count free). If neither reaches the band the closest set is returned with `matched=False`.
    """
    if not 0.0 < tolerance < 1.0:
        raise SteerkitError(f"control mass tolerance must be in (0, 1), got {tolerance!r}")
    excluded = set(sample.targets) | set(sample.sources)
    pool = np.array([k for k in range(1, sample.first_marker) if k not in excluded], dtype=int)
    target = float(mass[list(sample.targets)].sum())
    low, high = target * (1 - tolerance), target * (1 + tolerance)
    rng = np.random.default_rng(derive_seed(seed, sample.id))
    n = len(sample.targets)
    best: tuple[float, tuple[int, ...]] = (math.inf, ())
    for _ in range(draws if len(pool) >= n else 0):
        keys = rng.choice(pool, size=n, replace=False)
        got = float(mass[keys].sum())
        if low <= got <= high:
            return MatchedControl(tuple(sorted(int(k) for k in keys)), target, got, True, True)
        best = min(best, (abs(got - target), tuple(sorted(int(k) for k in keys))))
    chosen: list[int] = []
    total = 0.0
    for k in rng.permutation(pool):
        if total + mass[k] <= high:
            chosen.append(int(k))
            total += float(mass[k])
        if total >= low:
            return MatchedControl(tuple(sorted(chosen)), target, total, True, len(chosen) == n)
    if chosen and abs(total - target) < best[0]:
        best = (abs(total - target), tuple(sorted(chosen)))
    if not best[1]:
        raise SteerkitError(f"item {sample.id!r}: no control keys before the marker")
    got = float(mass[list(best[1])].sum())
    return MatchedControl(best[1], target, got, False, len(best[1]) == n)


__all__ = ["EdgeSet", "MatchedControl", "key_mass", "matched_control_keys"]
