"""Prompts into left-padded batches: ids, encoding, batch order, and where a batch's prefill may be cut.

Design note: every arm of an experiment batches its prompts the same way (longest first, fixed batch size), so
arms compare on one numeric path; a prefill cut (`padded_split`) is derived from the earliest prompt position any
intervention can change (`first_changed_position`), never from timing or batch composition alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from steerkit.core.models import LoadedModel
from steerkit.core.positions import EncodedPrompt, Selector, encode
from steerkit.errors import SteerkitError

if TYPE_CHECKING:
    from steerkit.interventions.base import SteerState


@dataclass(frozen=True)
class Prompt:
    """A prompt with a stable id (ids seed sampling and pair samples across runs)."""

    id: str
    text: str


def as_prompts(prompts: Sequence[Prompt | str]) -> list[Prompt]:
    """Prompts with ids (`p0`, `p1`, ... for bare strings); ids must be unique."""
    out = [p if isinstance(p, Prompt) else Prompt(f"p{i}", p) for i, p in enumerate(prompts)]
    seen: set[str] = set()
    for p in out:
        if p.id in seen:
            raise SteerkitError(f"duplicate prompt id {p.id!r}")
        seen.add(p.id)
    return out


def encode_prompts(loaded: LoadedModel, prompts: Sequence[Prompt | str], chat: bool) -> list[EncodedPrompt]:
    """Apply the chat template when asked and tokenise with offsets (specials come from the template then)."""
    return [
        encode(loaded.tokenizer, p.id, loaded.format_prompt(p.text, chat), add_special_tokens=not chat)
        for p in as_prompts(prompts)
    ]


@dataclass
class _Batch:
    """Left-padded token ids `[b, L]`, attention mask and position ids for one batch of prompts."""

    prompts: list[EncodedPrompt]
    ids: torch.Tensor
    attn: torch.Tensor
    pos: torch.Tensor
    pad: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, prompts: list[EncodedPrompt], pad_id: int, device: torch.device) -> _Batch:
        width = max(len(p) for p in prompts)
        pad = [width - len(p) for p in prompts]
        ids = torch.tensor([[pad_id] * n + list(p.ids) for n, p in zip(pad, prompts)], device=device)
        attn = torch.tensor([[0] * n + [1] * len(p) for n, p in zip(pad, prompts)], device=device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        return cls(prompts, ids, attn, pos, pad)


def first_changed_position(interventions: Sequence[Any], prompt: EncodedPrompt) -> int:
    """The earliest prompt position any of `interventions` can change (`len(prompt)` if none can).

    Positions before it compute bit for bit as without the interventions: an attention `scale`/`target` edit
    only corrects query rows from its first source (with no edge in a row the correction is an exact zero), and a
    residual add or ablation adds `0 * vector` outside its positions. Anything else (captures observe every
    position, knockouts change the mask object) counts as changing position 0.
    """
    first = len(prompt)
    for iv in interventions:
        selector = edited_positions(iv)
        if selector is None:
            return 0
        row = selector.resolve(prompt)
        if not row.is_empty:
            first = min(first, row.first)
    return first


def edited_positions(iv: Any) -> Selector | None:
    """The selector of the positions `iv` changes, when everywhere else it is a bit-exact no-op (an attention
    `scale`/`target` edit's sources, a residual add's or ablation's positions); None for anything else. Such an
    intervention also leaves rows that select nothing bit-exact, so arms of them can share one batch."""
    from steerkit.interventions import AttentionEdit, DirectionAblation, ResidualAdd

    if isinstance(iv, AttentionEdit) and iv.op in ("scale", "target"):
        return iv.sources
    if isinstance(iv, ResidualAdd | DirectionAblation):
        return iv.positions
    return None


def padded_split(batch: _Batch, split: Mapping[str, int] | None) -> int:
    """The padded index where a batch's prefill is cut: the earliest row's split, leaving >= 1 prompt token."""
    if not split:
        return 0
    width = batch.ids.shape[1]
    cut = min(pad + min(split.get(p.id, 0), len(p) - 1) for p, pad in zip(batch.prompts, batch.pad))
    return max(0, min(cut, width - 1))


def batch_order(encoded: Sequence[EncodedPrompt]) -> list[int]:
    """Indices longest first, so similar lengths share a batch (every arm of an experiment batches alike)."""
    return sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))


def check_split(state: SteerState, batch: _Batch, cut: int) -> None:
    """Refuse a cut after the first position a bound intervention changes (the prefix would differ by arm)."""
    for p, pad in zip(batch.prompts, batch.pad):
        first = first_changed_position(state.interventions, p)
        if first < cut - pad:
            raise SteerkitError(
                f"prefill split at position {cut - pad} of prompt {p.id!r} is after the first position an "
                f"intervention changes ({first}): the shared prefix would differ between arms"
            )
