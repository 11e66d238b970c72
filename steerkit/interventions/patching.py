"""Activation patching: write another run's residual stream or attention rows into this forward pass.

Design note: a patch carries the values to write, already mapped onto the recipient's positions
(`position_map` maps a donor prompt onto a recipient prompt of another length), so the interventions
stay small and exact. `ResidualPatch` replaces the residual stream at `resid_pre`/`resid_post` of a block at
chosen positions; `AttentionRowPatch` sets the post-softmax weights of chosen keys in chosen query rows and
rescales the rest of each row (definition in its docstring), through steerkit's attention function
(`attention.py` calls a spec's `edit_weights`). Both are identities when given the recipient's own
activations: the written values equal the old ones bit for bit, and the attention output is corrected by
`(W' - W) V`, which is an exact zero then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from steerkit.core.positions import EncodedPrompt, RowPositions, Selector
from steerkit.errors import SteerkitError
from steerkit.interventions.attention import _attach
from steerkit.interventions.residual import HOOK_POINTS, HookPoint, _register, wrap_block_hook

if TYPE_CHECKING:
    from steerkit.core.models import LoadedModel
    from steerkit.interventions.base import Handle, SteerState


def _positions(values: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(int(p) for p in values)
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise SteerkitError(f"{name} must be distinct non-negative positions, got {values!r}")
    return out


def _finite_tensor(values: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach().to(torch.float32)
    if not torch.isfinite(tensor).all():
        raise SteerkitError(f"{name} contains NaN or inf")
    return tensor


def _check_in_prompt(positions: tuple[int, ...], prompt: EncodedPrompt, what: str) -> None:
    if max(positions) >= len(prompt):
        raise SteerkitError(f"{what} position {max(positions)} outside prompt {prompt.id!r} of {len(prompt)} tokens")


def _create_patch_hook(state: SteerState, positions: torch.Tensor, values: torch.Tensor, pre: bool) -> Any:
    """Hook replacing hidden `[b, q, d]` at unpadded `positions` `[n]` with `values` `[n, d]` (every batch row)."""

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        batch, q_len = hidden.shape[:2]
        match = state.query_positions(batch, q_len)[:, :, None] == positions[None, None, :]  # [b, q, n]
        hit = match.any(-1)
        if not bool(hit.any()):
            return hidden
        replacement = values.to(hidden.dtype)[match.to(torch.long).argmax(-1)]  # [b, q, d]
        return torch.where(hit[..., None], replacement, hidden)

    return wrap_block_hook(apply, pre)


@dataclass(frozen=True)
class ResidualPatch:
    """Replace the residual stream at `hook` of block `layer` at `positions` with `values`.

    Attributes:
        layer: block index.
        hook: `resid_post` (output of block L) or `resid_pre` (its input).
        positions: unpadded prompt positions of the recipient, `[n]`.
        values: `[n, d_model]` vectors written there (row i at `positions[i]`), e.g. a donor's activations.
    """

    layer: int
    hook: HookPoint
    positions: tuple[int, ...]
    values: Any
    _values: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", _positions(self.positions, "ResidualPatch positions"))
        values = _finite_tensor(self.values, "ResidualPatch values")
        if values.ndim != 2 or values.shape[0] != len(self.positions):
            raise SteerkitError(
                f"ResidualPatch values must be [{len(self.positions)}, d_model], got {tuple(values.shape)}"
            )
        object.__setattr__(self, "_values", values)

    def validate(self, loaded: LoadedModel) -> None:
        loaded.check_layer(self.layer)
        if self.hook not in HOOK_POINTS:
            raise SteerkitError(f"unknown hook point {self.hook!r} (choose from {', '.join(HOOK_POINTS)})")
        if self._values.shape[1] != loaded.d_model:
            raise SteerkitError(f"ResidualPatch values have width {self._values.shape[1]}, d_model is {loaded.d_model}")

    def selectors(self) -> dict[str, Selector]:
        return {}

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None:
        _check_in_prompt(self.positions, prompt, "ResidualPatch")

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]:
        positions = torch.tensor(self.positions, dtype=torch.long, device=loaded.device)
        values = self._values.to(device=loaded.device, dtype=loaded.dtype)
        hook = _create_patch_hook(state, positions, values, self.hook == "resid_pre")
        return _register(loaded, self.layer, self.hook, hook)


@dataclass(frozen=True)
class AttentionRowPatch:
    """Set the post-softmax weights of `keys` in the `queries` rows of block `layer`, rescaling the rest.

    For query row q (queries[a]) and head h, with W the row's weights and K the key set:
    `W'[k_b] = values[h, a, b]` for the keys, and `W'[j] = W[j] * (1 - sum_b values[h, a, b]) / (1 - sum_K W)`
    for every other key j, so the row sums to 1 again. A row with no mass outside K (`sum_K W >= 1`) cannot be
    rescaled and is left unchanged. The attention output becomes `o' = o + (W' - W) V`: with the row's own
    weights as values, `W' == W` bit for bit and the output is unchanged.

    Attributes:
        layer: block index.
        queries: unpadded query positions `[n_q]`.
        keys: unpadded key positions `[n_k]`, none after any query (a query cannot attend to a later key).
        values: `[n_heads, n_q, n_k]` weights, >= 0, each `[h, a, :]` summing to at most 1.
    """

    layer: int
    queries: tuple[int, ...]
    keys: tuple[int, ...]
    values: Any
    _values: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queries", _positions(self.queries, "AttentionRowPatch queries"))
        object.__setattr__(self, "keys", _positions(self.keys, "AttentionRowPatch keys"))
        if max(self.keys) > min(self.queries):
            raise SteerkitError(
                f"AttentionRowPatch key {max(self.keys)} comes after query {min(self.queries)} (causally masked)"
            )
        values = _finite_tensor(self.values, "AttentionRowPatch values")
        shape = (len(self.queries), len(self.keys))
        if values.ndim != 3 or tuple(values.shape[1:]) != shape:
            raise SteerkitError(
                f"AttentionRowPatch values must be [n_heads, {shape[0]}, {shape[1]}], got {tuple(values.shape)}"
            )
        if (values < 0).any() or (values.sum(-1) > 1.0 + 1e-5).any():
            raise SteerkitError("AttentionRowPatch values must be >= 0 and sum to at most 1 per row")
        object.__setattr__(self, "_values", values)

    def validate(self, loaded: LoadedModel) -> None:
        loaded.check_layer(self.layer)
        if self._values.shape[0] != loaded.n_heads:
            raise SteerkitError(
                f"AttentionRowPatch values have {self._values.shape[0]} heads, model has {loaded.n_heads}"
            )

    def selectors(self) -> dict[str, Selector]:
        return {}

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None:
        _check_in_prompt(self.queries, prompt, "AttentionRowPatch query")

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]:
        return _attach(loaded, state, index, self)

    def edit_weights(
        self, out: torch.Tensor, weights: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edited (output `[b, h, q, d]`, weights `[b, h, q, k]`), float32; `v` is `[b, h, k, d]`."""
        out, weights = out.clone(), weights.clone()
        values = self._values.to(weights.device)
        for row in range(weights.shape[0]):
            found = [_column(kpos[row], k) for k in self.keys]
            kcols = [c for c in found if c is not None]
            for a, query in enumerate(self.queries):
                col = _column(qpos[row], query)
                if col is None or len(kcols) != len(found):
                    continue  # this pass does not compute that query row (e.g. a later generation step)
                old = weights[row, :, col]  # [h, k]
                new = _patched_row(old, kcols, values[:, a])
                delta = ((new - old)[:, None, :] @ v[row])[:, 0]  # [h, d]; an exact zero when new == old
                out[row, :, col] = out[row, :, col] + delta
                weights[row, :, col] = new
        return out, weights


def _column(positions: torch.Tensor, position: int) -> int | None:
    """Index of `position` in `positions` `[n]`, or None when this pass does not hold it."""
    found = (positions == position).nonzero()
    return int(found[0, 0]) if found.numel() else None


def _patched_row(old: torch.Tensor, kcols: list[int], values: torch.Tensor) -> torch.Tensor:
    """Row `[h, k]` with `values` `[h, n_k]` at `kcols` and the other keys rescaled (see AttentionRowPatch)."""
    keyed = old[:, kcols].sum(-1)
    wanted = values.sum(-1)
    rest = 1.0 - keyed
    ok = rest > 0
    scale = torch.where(ok, (1.0 - wanted) / torch.where(ok, rest, torch.ones_like(rest)), torch.ones_like(rest))
    new = old * scale[:, None]
    new[:, kcols] = values
    return torch.where(ok[:, None], new, old)


def mapped_attention_values(
    donor_rows: torch.Tensor, transfer: Sequence[tuple[int, int, float]], keys: Sequence[int]
) -> torch.Tensor:
    """Donor weights `[heads, n_q, donor_len]` moved onto recipient `keys`: `[heads, n_q, n_keys]`.

    `transfer` holds `(recipient key, donor key, fraction)` triples (`PositionMap.transfer`); each recipient key
    receives the sum of fraction x donor weight. Summed term by term from zero, so a fraction of 1.0 copies a
    weight exactly.
    """
    index = {k: i for i, k in enumerate(keys)}
    out = torch.zeros(*donor_rows.shape[:2], len(keys), dtype=donor_rows.dtype)
    for recipient, donor, fraction in transfer:
        if recipient not in index:
            raise SteerkitError(f"transfer names recipient key {recipient}, not among the keys {tuple(keys)}")
        out[..., index[recipient]] += fraction * donor_rows[..., donor]
    return out


__all__ = ["AttentionRowPatch", "ResidualPatch", "mapped_attention_values"]
