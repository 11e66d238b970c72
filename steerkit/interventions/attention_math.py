"""The tensor math of attention edits: masks, post-softmax weights, and the closed-form `scale`/`target` edit.

Design note: pure functions on tensors (no module state, no steer() state), so `attention.py` holds only the
specs and their placement. For edge mask E, edge mass M = Σ_j W_ij E_ij and P = (W∘E) V, with o = W V the
original output:
  `scale s`:  o' = (o + (s-1) P) / (1 + (s-1) M)      (multiply edges by s, renormalise the row)
  `target t`: o' = t/M · P + (1-t)/(1-M) · (o - P)    (edges' share of the row set to t)
At s = 1 the correction is an exact zero and o' = o bit for bit. Grouped-query attention: the query heads sharing
a KV head are computed as rows of one product with it (`grouped_matmul`), never by copying keys and values per head.
"""

from __future__ import annotations

from typing import Any

import torch

from steerkit.errors import SteerkitError


def dense_mask(mask: Any, qpos: torch.Tensor, kpos: torch.Tensor, sliding: int | None) -> torch.Tensor:
    """Boolean `[b, 1, q, k]` attend-mask from HF's mask (bool, additive float, or None = causal)."""
    if mask is None:
        allowed = (kpos[:, None, :] <= qpos[:, :, None]) & (kpos[:, None, :] >= 0)
        if sliding:
            allowed &= qpos[:, :, None] - kpos[:, None, :] < sliding
        return allowed[:, None]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def grouped_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a [B, h, q, x] @ b [B, kv, x, y]` -> `[B, h, q, y]`, query head `i` using KV head `i // (h / kv)` (grouped-query
    attention), without copying `b` once per query head: the heads sharing a KV head become rows of one product."""
    batch, heads, q_len, _ = a.shape
    kv = b.shape[1]
    out = torch.matmul(a.reshape(batch, kv, (heads // kv) * q_len, a.shape[-1]), b)
    return out.reshape(batch, heads, q_len, b.shape[-1])


def attention_weights(query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor, **kw: Any) -> torch.Tensor:
    """Post-softmax weights `[b, h, q, k]` in float32 (grouped-query attention: see `grouped_matmul`)."""
    scaling = kw.get("scaling") or query.shape[-1] ** -0.5
    scores = grouped_matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    softcap = kw.get("softcap")
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def additive_mask(allowed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """HF's additive float mask (0 where allowed, the dtype's minimum elsewhere) in `like`'s dtype and device."""
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where(allowed, zero, torch.finfo(like.dtype).min)


def check_rows_keep_a_key(allowed: torch.Tensor, qpos: torch.Tensor) -> None:
    """Raise when a knockout left some real query row (qpos >= 0) with no key to attend to."""
    real = (qpos >= 0)[:, None, :]
    if (real & ~allowed.any(-1)).any():
        raise SteerkitError("attention knockout removed every key of some query row (targets cover the whole row)")


def apply_edit(
    op: str, value: float, out: torch.Tensor, weights: torch.Tensor, edges: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form edited output and weights for `scale` / `target` (see the module docstring); `v` is the float32
    value `[b, kv heads, k, d]`. Only batch rows with some edge are computed: the others stay as they are, exactly
    (an arm's edit in a batch holding several arms touches its own rows only)."""
    rows = edges.flatten(1).any(1)
    if not bool(rows.all()):
        if not bool(rows.any()):
            return out, weights
        idx = rows.nonzero().squeeze(1)
        sub_out, sub_w = apply_edit(op, value, out[idx], weights[idx], edges[idx], v[idx])
        return out.index_copy(0, idx, sub_out), weights.index_copy(0, idx, sub_w)
    edge_w = weights * edges
    mass = edge_w.sum(-1, keepdim=True)  # [b, h, q, 1]
    edge_out = grouped_matmul(edge_w, v)  # [b, h, q, d]
    if op == "scale":
        denom = 1.0 + (value - 1.0) * mass
        new_out = (out + (value - 1.0) * edge_out) / denom
        new_w = (weights + (value - 1.0) * edge_w) / denom
        return new_out, new_w
    # target: rows with some edge mass strictly inside (0, 1) are rescaled; others stay as they are.
    ok = (mass > 0) & (mass < 1)
    safe_mass = torch.where(ok, mass, torch.ones_like(mass))
    keep_scale = (1.0 - value) / torch.where(ok, 1.0 - mass, torch.ones_like(mass))
    edge_scale = value / safe_mass
    new_out = torch.where(ok, edge_scale * edge_out + keep_scale * (out - edge_out), out)
    new_w = torch.where(ok, edge_scale * edge_w + keep_scale * (weights - edge_w), weights)
    return new_out, new_w
