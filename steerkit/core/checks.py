"""The identity control: an intervention at its identity setting must equal the unhooked model bit for bit.

Design note: every experiment runs its control (scale 1, coefficient 0, alpha 0) through the same code path as
the steered arm and logs `identity_max_abs_logit_diff` = max |logits(unhooked) - logits(identity)| over the
next-token distributions of the prompts. This module is the one place that comparison is written; a non-zero
difference means baseline and steered arms took different numeric paths (seed 000's 31/50 "effects").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def require_identity(figures: Mapping[str, Any], keys: Sequence[str] | None = None) -> None:
    """Fail the run unless every identity figure is exactly zero (the control is enforced, not only logged).

    Args:
        figures: logged figures; every key starting with `identity_` is checked unless `keys` names them.
        keys: the identity figures to check (each must be present).

    Raises:
        SteerkitError: naming the first figure that is not exactly 0 (or is missing / NaN).
    """
    names = list(keys) if keys is not None else sorted(k for k in figures if k.startswith("identity_"))
    for name in names:
        if name not in figures:
            raise SteerkitError(f"identity figure {name} was not computed")
        value = figures[name]
        if value is None or not isinstance(value, int | float) or value != 0:
            raise SteerkitError(f"identity control failed: {name} = {value!r} (must be exactly 0)")


__all__ = ["IDENTITY_KEY", "identity_logits", "max_abs_diff", "require_identity"]
