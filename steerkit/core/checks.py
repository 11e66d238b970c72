"""The identity control: an intervention at its identity setting must equal the unhooked model bit for bit.

Design note: every experiment runs its control (scale 1, coefficient 0, alpha 0) through the same code path as
the steered arm and logs `identity_max_abs_logit_diff` = max |logits(unhooked) - logits(identity)| over the
next-token distributions of the prompts. This module is the one place that comparison is written; a non-zero
difference means baseline and steered arms took different numeric paths (seed 000's 31/50 "effects").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from steerkit.core.generation import Prompt, next_token_logits
from steerkit.core.models import LoadedModel
from steerkit.errors import SteerkitError

IDENTITY_KEY = "identity_max_abs_logit_diff"


def max_abs_diff(plain: torch.Tensor, identity: torch.Tensor) -> float:
    """max |plain - identity|, shapes checked (`[n, vocab]` logits, or any matching tensors)."""
    if plain.shape != identity.shape:
        raise SteerkitError(f"identity check compares shapes {tuple(plain.shape)} and {tuple(identity.shape)}")
    return float((plain - identity).abs().max())


def identity_logits(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    identity: Sequence[Any],
    *,
    chat: bool,
    batch_size: int = 16,
) -> tuple[dict[str, float], torch.Tensor]:
    """`{IDENTITY_KEY: diff}` and the identity arm's last-prompt-token logits `[n, vocab]` (reused as baseline)."""
    plain = next_token_logits(loaded, prompts, chat=chat, batch_size=batch_size)
    ident = next_token_logits(loaded, prompts, interventions=list(identity), chat=chat, batch_size=batch_size)
    return {IDENTITY_KEY: max_abs_diff(plain, ident)}, ident


__all__ = ["IDENTITY_KEY", "identity_logits", "max_abs_diff"]
