"""How far a steered next-token distribution moved from the unsteered one.

Design note: all functions take *logits* over the vocabulary (last dimension by
default) for the same positions, steered vs unsteered, and insist on identical
shapes. A reference implementation once compared hidden states ``[seq, d_model]``
with logits ``[seq, vocab]`` and silently truncated to the shorter width; a shape
check is the cheap guard against that whole class of bug. KL is computed in
float64 from ``log_softmax`` so that bf16/fp16 model outputs do not turn small
divergences into noise.
"""

from __future__ import annotations

import torch

from steerkit.errors import SteerkitError


def _describe(value: object) -> str:
    """Short one-line description of a bad argument (a repr could span pages)."""
    shape = getattr(value, "shape", None)
    return type(value).__name__ if shape is None else f"{type(value).__name__} of shape {tuple(shape)}"


def _check_pair(p_logits: torch.Tensor, q_logits: torch.Tensor, dim: int = -1) -> int:
    """Validate a pair of logit tensors and return the size of the vocabulary dim."""
    for name, t in (("p_logits", p_logits), ("q_logits", q_logits)):
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            raise SteerkitError(f"{name} must be a tensor with a vocabulary dimension, got {_describe(t)}")
    if p_logits.shape != q_logits.shape:
        raise SteerkitError(
            f"p_logits and q_logits must have identical shapes, got {tuple(p_logits.shape)} and {tuple(q_logits.shape)}"
        )
    if not -p_logits.ndim <= dim < p_logits.ndim:
        raise SteerkitError(f"dim must index a dimension of shape {tuple(p_logits.shape)}, got {dim}")
    return int(p_logits.shape[dim])


def kl_divergence(
    p_logits: torch.Tensor, q_logits: torch.Tensor, dim: int = -1, *, vocab_size: int | None = None
) -> torch.Tensor:
    """KL(P || Q) between the softmax distributions of two logit tensors.

    Args:
        p_logits: Logits of P (e.g. the unsteered model), any shape ``[..., vocab]``.
        q_logits: Logits of Q (e.g. the steered model), the same shape as ``p_logits``.
        dim: The vocabulary dimension.
        vocab_size: If given, the size ``dim`` must have; catches hidden states
            passed where logits were meant.

    Returns:
        Float64 tensor of per-row KL in nats, shape of the inputs without ``dim``.
        Exactly 0 where the rows are equal; ``inf`` where Q puts zero mass (a
        ``-inf`` logit) on a token P can emit.

    Raises:
        SteerkitError: If the shapes differ, ``dim`` is out of range, or the vocabulary
            dimension does not equal ``vocab_size``.
    """
    width = _check_pair(p_logits, q_logits, dim)
    if vocab_size is not None and width != vocab_size:
        raise SteerkitError(f"vocabulary dimension must equal vocab_size={vocab_size}, got {width}")
    log_p = torch.log_softmax(p_logits.to(torch.float64), dim=dim)
    log_q = torch.log_softmax(q_logits.to(torch.float64), dim=dim)
    p = log_p.exp()
    # Tokens with P = 0 contribute 0 (0 log 0 = 0); computing them would give nan from -inf - -inf.
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    # Rounding can leave a tiny negative sum for near-identical rows; KL is never negative.
    return terms.sum(dim=dim).clamp_min(0.0)


def top1_changed(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Whether the greedy (argmax) token differs between the two distributions.

    Args:
        p_logits: Logits ``[..., vocab]``.
        q_logits: Logits of the same shape.

    Returns:
        Bool tensor of shape ``[...]``; ties resolve to the lowest token id on both
        sides, as ``torch.argmax`` does.

    Raises:
        SteerkitError: If the shapes differ.
    """
    _check_pair(p_logits, q_logits)
    return p_logits.argmax(dim=-1) != q_logits.argmax(dim=-1)


def topk_overlap(p_logits: torch.Tensor, q_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of P's top-k tokens that are also in Q's top-k.

    Args:
        p_logits: Logits ``[..., vocab]``.
        q_logits: Logits of the same shape.
        k: Size of each top set, 1 <= k <= vocab.

    Returns:
        Float64 tensor of shape ``[...]`` with values in {0, 1/k, ..., 1}. Ties at
        the k-th logit are broken by ``torch.topk``, so tied rows may vary.

    Raises:
        SteerkitError: If the shapes differ or k is out of range.
    """
    width = _check_pair(p_logits, q_logits)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width:
        raise SteerkitError(f"k must be an integer in [1, {width}], got {k!r}")
    top_p = p_logits.topk(k, dim=-1).indices
    top_q = q_logits.topk(k, dim=-1).indices
    # k x k comparison per row: fine for the small k this metric is used with.
    shared = (top_p.unsqueeze(-1) == top_q.unsqueeze(-2)).any(dim=-1).sum(dim=-1)
    return shared.to(torch.float64) / k
