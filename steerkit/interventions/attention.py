"""Attention edits and capture through transformers' attention-function registry.

Design note: `install(model)` registers `steerkit_<impl>` (impl = the model's own `sdpa` or `eager`) with
`AttentionInterface`, and the same mask function with `AttentionMaskInterface`, then switches the model to it.
With nothing attached to a layer, the function calls the original implementation unchanged, so an unsteered
model is bit-identical to plain transformers. With an edit attached:

- `knockout` removes edges *before* softmax by masking them out, then calls the original implementation;
- `scale` and `target` keep the original output `o = W V` and correct it in closed form with the edited rows
  only (the formulas and the tensor math are in `attention_math`); at s = 1 the output is unchanged bit for bit.

Another spec attached here may edit the weights itself by providing `edit_weights(out, weights, qpos, kpos, v)`
(activation patching's `AttentionRowPatch`); it runs in the same place as `scale`/`target`.

Positions are unpadded prompt indices from `SteerState`; keys and queries are located from the state's
`query_start`, so generated tokens (the KV cache) and left padding are handled. Grouped-query attention: the query
heads sharing a key/value head are computed together with it (`attention_math.grouped_matmul`); `heads` name query
heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from steerkit.core.attention_backend import _ATTR, install, register_editor
from steerkit.core.models import LoadedModel
from steerkit.core.positions import ALL, EncodedPrompt, RowPositions, Selector
from steerkit.errors import SteerkitError
from steerkit.interventions.attention_math import (
    additive_mask,
    apply_edit,
    attention_weights,
    check_rows_keep_a_key,
    dense_mask,
)

if TYPE_CHECKING:
    from steerkit.interventions.base import Handle, SteerState

EditOp = Literal["scale", "knockout", "target"]
EDIT_OPS = ("scale", "knockout", "target")


def _layers(layer: int | tuple[int, ...]) -> tuple[int, ...]:
    return (layer,) if isinstance(layer, int) else tuple(layer)


def _heads_mask(heads: tuple[int, ...] | None, n_heads: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(n_heads, dtype=torch.bool, device=device)
    mask[list(heads) if heads is not None else slice(None)] = True
    return mask


def _check_heads(heads: tuple[int, ...] | None, loaded: LoadedModel) -> None:
    for h in heads or ():
        if not 0 <= h < loaded.n_heads:
            raise SteerkitError(f"head {h} out of range for {loaded.spec} (0..{loaded.n_heads - 1})")


@dataclass
class _Attached:
    """An edit or capture as attached to one layer's attention module."""

    state: SteerState
    index: int
    spec: Any
    layer: int

    def remove_from(self, module: Any) -> None:
        items = getattr(module, _ATTR, [])
        if self in items:
            items.remove(self)


@dataclass
class _DetachHandle:
    module: Any
    attached: _Attached

    def remove(self) -> None:
        self.attached.remove_from(self.module)


def _attach(loaded: LoadedModel, state: SteerState, index: int, spec: Any) -> list[Handle]:
    handles: list[Handle] = []
    for layer in _layers(spec.layer):
        module = loaded.attention(layer)
        attached = _Attached(state, index, spec, layer)
        if not hasattr(module, _ATTR):
            setattr(module, _ATTR, [])
        getattr(module, _ATTR).append(attached)
        handles.append(_DetachHandle(module, attached))
    return handles


@dataclass(frozen=True)
class AttentionEdit:
    """Edit attention edges from `sources` (query positions) to `targets` (key positions).

    Attributes:
        layer: block index, or a tuple of them.
        sources: query positions, e.g. `FromPattern(r"fn \\w+")` (every position from there on, generated
            tokens included).
        targets: key positions, e.g. `Pattern(r"#\\[test\\]")`.
        op: `scale` (multiply post-softmax weights by `value`, renormalise the row), `knockout` (remove the
            edges before softmax; `value` unused), `target` (set the edges' total share of each affected row
            to `value`, rescaling the rest).
        value: the scale factor (>= 0) or the target share (in [0, 1]).
        heads: query heads to edit (None = all).

    An edge whose source precedes its target is causally masked (its weight is 0 whatever the scale):
    binding such positions raises instead of silently doing nothing.
    """

    layer: int | tuple[int, ...]
    sources: Selector
    targets: Selector
    op: EditOp = "scale"
    value: float = 1.0
    heads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.op not in EDIT_OPS:
            raise SteerkitError(f"unknown attention op {self.op!r} (choose from {', '.join(EDIT_OPS)})")
        if not isinstance(self.value, int | float) or not math.isfinite(self.value):
            raise SteerkitError(f"attention {self.op} value must be a finite number, got {self.value!r}")
        if self.op == "scale" and self.value < 0:
            raise SteerkitError(f"attention scale must be >= 0, got {self.value}")
        if self.op == "target" and not 0.0 <= self.value <= 1.0:
            raise SteerkitError(f"attention target share must be in [0, 1], got {self.value}")

    def validate(self, loaded: LoadedModel) -> None:
        for layer in _layers(self.layer):
            loaded.check_layer(layer)
        _check_heads(self.heads, loaded)

    def selectors(self) -> dict[str, Selector]:
        return {"sources": self.sources, "targets": self.targets}

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None:
        src, tgt = rows["sources"], rows["targets"]
        if src.is_empty or tgt.is_empty:
            which = "sources" if src.is_empty else "targets"
            raise SteerkitError(f"AttentionEdit {which} select no token in prompt {prompt.id!r}")
        if src.first < tgt.last:
            raise SteerkitError(
                f"AttentionEdit edge from source position {src.first} to later target position {tgt.last} "
                f"in prompt {prompt.id!r} is causally masked (weight 0): sources must not precede targets"
            )

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]:
        return _attach(loaded, state, index, self)


@dataclass(frozen=True)
class AttentionCapture:
    """Record post-softmax attention weights (after any edits) for chosen layers and heads.

    After each forward pass, `records[layer]` gains a `CapturedAttention` with `weights [batch, heads, q, k]`
    (float32, CPU) and the unpadded query/key positions, so edge weights can be read without
    `output_attentions=True` for the whole model.
    """

    layer: int | tuple[int, ...]
    heads: tuple[int, ...] | None = None
    records: dict[int, list[CapturedAttention]] = field(default_factory=dict, compare=False)

    def validate(self, loaded: LoadedModel) -> None:
        for layer in _layers(self.layer):
            loaded.check_layer(layer)
        _check_heads(self.heads, loaded)

    def selectors(self) -> dict[str, Selector]:
        return {}

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None:
        return None

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]:
        return _attach(loaded, state, index, self)

    def clear(self) -> None:
        self.records.clear()


@dataclass(frozen=True)
class CapturedAttention:
    """Weights `[batch, heads, q, k]` with unpadded `query_pos [batch, q]` and `key_pos [batch, k]`."""

    weights: torch.Tensor
    query_pos: torch.Tensor
    key_pos: torch.Tensor
    heads: tuple[int, ...]

    def edge_weights(self, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Weights `[heads, n_sources, n_targets]` of row 0 between unpadded positions (single-prompt helper)."""
        qi = [int((self.query_pos[0] == s).nonzero()[0]) for s in sources.tolist()]
        ki = [int((self.key_pos[0] == t).nonzero()[0]) for t in targets.tolist()]
        return self.weights[0][:, qi][:, :, ki]


def _edge_mask(att: _Attached, batch: int, n_heads: int, qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
    spec, state = att.spec, att.state
    src = state.table(att.index, "sources", spec.sources, batch).mask(qpos)
    tgt = state.table(att.index, "targets", spec.targets, batch).mask(kpos)
    heads = _heads_mask(spec.heads, n_heads, qpos.device)
    return src[:, None, :, None] & tgt[:, None, None, :] & heads[None, :, None, None]


def _edited_attention(
    base: Any,
    attached: list[_Attached],
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    batch, n_heads, q_len, _ = query.shape
    state = attached[0].state
    if any(a.state is not state for a in attached):  # steer() keeps one state per model; never mix two
        raise SteerkitError("attention edits from two different steer() states on one layer cannot be placed exactly")
    qpos = state.query_positions(batch, q_len, key.shape[2])
    kpos = state.key_positions(batch, q_len, key.shape[2])
    allowed = dense_mask(attention_mask, qpos, kpos, kwargs.get("sliding_window"))
    mask = attention_mask
    for att in attached:
        if isinstance(att.spec, AttentionEdit) and att.spec.op == "knockout":
            allowed = allowed & ~_edge_mask(att, batch, n_heads, qpos, kpos)
            keep_bool = attention_mask is None or attention_mask.dtype == torch.bool
            mask = allowed if keep_bool else additive_mask(allowed, query)
    if mask is not attention_mask:
        check_rows_keep_a_key(allowed, qpos)
    out, extra = base(module, query, key, value, mask, **kwargs)
    needs_weights = [a for a in attached if not (isinstance(a.spec, AttentionEdit) and a.spec.op == "knockout")]
    if not needs_weights:
        return out, extra
    weights = attention_weights(query, key, allowed, **kwargs)
    out_h = out.transpose(1, 2).float()  # [b, h, q, d]
    v = value.float()  # [b, kv heads, k, d]
    captures = [a for a in needs_weights if isinstance(a.spec, AttentionCapture)]
    for att in needs_weights:  # every edit first, so captures see the edited weights whatever the order
        edit_weights = getattr(att.spec, "edit_weights", None)  # other weight edits (patching.AttentionRowPatch)
        if edit_weights is not None:
            out_h, weights = edit_weights(out_h, weights, qpos, kpos, v.repeat_interleave(n_heads // v.shape[1], 1))
        elif not isinstance(att.spec, AttentionCapture):
            edges = _edge_mask(att, batch, n_heads, qpos, kpos)
            out_h, weights = apply_edit(att.spec.op, float(att.spec.value), out_h, weights, edges, v)
    for att in captures:
        _record(att, weights, qpos, kpos)
    return out_h.transpose(1, 2).to(out.dtype).contiguous(), extra


def _record(att: _Attached, weights: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor) -> None:
    spec: AttentionCapture = att.spec
    heads = tuple(spec.heads) if spec.heads is not None else tuple(range(weights.shape[1]))
    captured = CapturedAttention(weights[:, list(heads)].cpu(), qpos.cpu(), kpos.cpu(), heads)
    spec.records.setdefault(att.layer, []).append(captured)


register_editor(_edited_attention)  # the backend (core) calls back here when an edit is attached

__all__ = ["ALL", "AttentionCapture", "AttentionEdit", "CapturedAttention", "install"]
