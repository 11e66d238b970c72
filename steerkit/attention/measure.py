"""Marker -> function-token attention of corpus items, per layer and head, from one forward pass per batch.

Design note: the measurement rides on `generation.next_token_logits` with an `AttentionCapture` of the chosen
layers, so the forward pass that yields the attention weights is the same batched, left-padded pass that yields
the next-token logits (KL between arms then compares passes that differ only by the edit). Each item's marker
and target positions are resolved on the text the model sees (`encode_prompts`) and read from the captured
post-softmax weights (after any edit) by unpadded position. Two summaries per layer and head:
`mean_edge` = mean weight over (marker query, target key) edges, `total_mass` = per marker query the summed
weight on the targets, averaged over marker queries (the share `AttentionEdit(op="target")` sets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from steerkit.core.generation import encode_prompts, next_token_logits
from steerkit.core.models import LoadedModel
from steerkit.core.positions import EncodedPrompt, FromPattern, PerPrompt, RowPositions, Selector
from steerkit.corpora.attention_pairs import AttentionItem
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, AttentionEdit

Metric = Literal["mean_edge", "total_mass"]
METRICS = ("mean_edge", "total_mass")
TARGET_CHOICES = ("function_name", "parameters", "name_and_parameters")


@dataclass(frozen=True)
class AnyOf(Selector):
    """The union of several selectors' explicit positions (e.g. function name and parameter names)."""

    parts: tuple[Selector, ...]

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:
        rows = [p.resolve(prompt) for p in self.parts]
        if any(r.start is not None for r in rows):
            raise SteerkitError("AnyOf combines explicit positions only (no ranges)")
        return RowPositions(indices=frozenset().union(*(r.indices for r in rows)))


def target_selector(item: AttentionItem, target: str) -> Selector:
    """The item's target positions: `function_name`, `parameters`, or `name_and_parameters` (their union)."""
    if target not in TARGET_CHOICES:
        raise SteerkitError(f"unknown target {target!r} (choose from {', '.join(TARGET_CHOICES)})")
    if target == "name_and_parameters":
        return AnyOf((item.target_selector("function_name"), item.target_selector("parameters")))
    return item.target_selector(target)


def edge_selectors(items: Sequence[AttentionItem], target: str, sources: str = "marker") -> tuple[Selector, Selector]:
    """Per-prompt (sources, targets): sources = the marker tokens, or (`from_marker`) the marker and every later
    position, generated tokens included; targets from `target_selector`."""
    if sources not in ("marker", "from_marker"):
        raise SteerkitError(f"unknown sources {sources!r} (choose from marker, from_marker)")
    src: dict[str, Selector] = {
        i.id: i.marker_selector() if sources == "marker" else FromPattern(str(i.marker), occurrence="first")
        for i in items
    }
    return PerPrompt.of(src), PerPrompt.of({i.id: target_selector(i, target) for i in items})


@dataclass(frozen=True)
class ItemAttention:
    """One item's marker -> target attention: `mean_edge` and `total_mass`, each `[n_layers_captured, heads]`."""

    item_id: str
    layers: tuple[int, ...]
    mean_edge: np.ndarray
    total_mass: np.ndarray
    n_marker_tokens: int
    n_target_tokens: int

    def metric(self, name: str) -> np.ndarray:
        if name not in METRICS:
            raise SteerkitError(f"unknown metric {name!r} (choose from {', '.join(METRICS)})")
        return self.mean_edge if name == "mean_edge" else self.total_mass


@dataclass(frozen=True)
class Measurement:
    """Per-item attention plus the last-token logits `[n_items, vocab]` and raw captured weights of the pass."""

    items: list[ItemAttention]
    logits: torch.Tensor
    captured: dict[int, list[torch.Tensor]]


def measure(
    loaded: LoadedModel,
    items: Sequence[AttentionItem],
    *,
    layers: Sequence[int],
    target: str = "function_name",
    interventions: Sequence[Any] = (),
    chat: bool = False,
    batch_size: int = 8,
) -> Measurement:
    """Capture attention at `layers` (after `interventions`) and summarise marker -> target edges per item.

    Returns:
        A `Measurement`; `captured[layer]` holds each item's marker rows `[heads, n_marker, n_target]`.
    """
    for item in items:
        if item.marker is None:
            raise SteerkitError(f"item {item.id!r} is a baseline: it has no marker to measure from")
    capture = AttentionCapture(layer=tuple(layers))
    prompts = [i.as_prompt() for i in items]
    logits = next_token_logits(
        loaded, prompts, interventions=[*interventions, capture], chat=chat, batch_size=batch_size
    )
    encoded = encode_prompts(loaded, prompts, chat)
    edges = [_edge_positions(e, item, target) for e, item in zip(encoded, items)]
    captured: dict[int, list[torch.Tensor]] = {}
    for layer in layers:
        captured[layer] = _edge_blocks(capture.records[layer], edges, batch_size)
    results = []
    for k, item in enumerate(items):
        blocks = [captured[layer][k] for layer in layers]  # each [heads, n_marker, n_target]
        results.append(
            ItemAttention(
                item_id=item.id,
                layers=tuple(layers),
                mean_edge=np.stack([b.mean(dim=(1, 2)).numpy() for b in blocks]).astype(np.float64),
                total_mass=np.stack([b.sum(-1).mean(-1).numpy() for b in blocks]).astype(np.float64),
                n_marker_tokens=len(edges[k][0]),
                n_target_tokens=len(edges[k][1]),
            )
        )
    return Measurement(results, logits, captured)


def _edge_positions(encoded: EncodedPrompt, item: AttentionItem, target: str) -> tuple[list[int], list[int]]:
    markers = sorted(item.marker_selector().resolve(encoded).indices)
    targets = sorted(target_selector(item, target).resolve(encoded).indices)
    if markers[0] <= targets[-1]:
        raise SteerkitError(f"item {item.id!r}: marker token {markers[0]} does not follow target token {targets[-1]}")
    return markers, targets


def _edge_blocks(records: list[Any], edges: list[tuple[list[int], list[int]]], batch_size: int) -> list[torch.Tensor]:
    """Per item the weights `[heads, n_marker, n_target]`, located by unpadded position in each batch record."""
    out: list[torch.Tensor] = []
    for b, rec in enumerate(records):
        for row in range(rec.weights.shape[0]):
            markers, targets = edges[b * batch_size + row]
            qpos, kpos = rec.query_pos[row].tolist(), rec.key_pos[row].tolist()
            qi = [qpos.index(m) for m in markers]
            ki = [kpos.index(t) for t in targets]
            out.append(rec.weights[row][:, qi][:, :, ki])
    if len(out) != len(edges):
        raise SteerkitError(f"captured {len(out)} rows for {len(edges)} items (one forward pass per batch expected)")
    return out


def edge_edit(
    items: Sequence[AttentionItem],
    layer: int | tuple[int, ...],
    *,
    op: str = "scale",
    value: float = 1.0,
    target: str = "function_name",
    sources: str = "from_marker",
) -> AttentionEdit:
    """`AttentionEdit` on the items' marker (and later, with `from_marker`) -> target edges at `layer`(s)."""
    src, tgt = edge_selectors(items, target, sources)
    return AttentionEdit(layer=layer, sources=src, targets=tgt, op=op, value=value)  # type: ignore[arg-type]


def level(items: Sequence[ItemAttention], layer: int, metric: str) -> np.ndarray:
    """Head-averaged `metric` at `layer` per item, `[n_items]`."""
    if not items:
        raise SteerkitError("no items measured")
    k = items[0].layers.index(layer)
    return np.array([it.metric(metric)[k].mean() for it in items])


__all__ = ["AnyOf", "ItemAttention", "Measurement", "edge_edit", "edge_selectors", "level", "measure"]
