"""steerkit's attention function in transformers' attention-function registry.

Design note: `install(model)` registers `steerkit_<impl>` (impl = the model's own `sdpa` or `eager`) with
`AttentionInterface`, and the same mask function with `AttentionMaskInterface`, then switches the model to it.
With nothing attached to a layer's attention module (attribute `_steerkit_attention`), the registered function
calls the original implementation unchanged, so an unsteered model is bit-identical to plain transformers.
With something attached, it hands the call to the editor that `steerkit.interventions.attention` registers when
it is imported (`register_editor`): the backend knows nothing about edits, so `load_model` (core) can install it
without importing the interventions layer above it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from steerkit.errors import SteerkitError

_ATTR = "_steerkit_attention"  # list of (state, intervention index, edit or capture) on the attention module
_EDITOR: list[Callable[..., tuple[torch.Tensor, Any]]] = []  # the one editor, set by interventions.attention


def register_editor(editor: Callable[..., tuple[torch.Tensor, Any]]) -> None:
    """Set the function called as `editor(base, attached, module, query, key, value, mask, **kw)`."""
    _EDITOR[:] = [editor]


def _eager(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, **kw: Any):
    """The model family's own eager attention (soft-capping etc.), found in the module's modeling file."""
    from transformers.models.llama.modeling_llama import eager_attention_forward as llama_eager

    own: Any = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None) or llama_eager
    return own(module, query, key, value, mask, **kw)


def _create_attention_function(base_name: str) -> Any:
    """The registered function: delegate untouched, or edit/capture when something is attached."""

    def steerkit_attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        base = _eager if base_name == "eager" else ALL_ATTENTION_FUNCTIONS[base_name]
        attached = getattr(module, _ATTR, None)
        if not attached:
            return base(module, query, key, value, attention_mask, **kwargs)
        if not _EDITOR:  # something attached without the interventions layer loaded: impossible via steer()
            raise SteerkitError("attention edits attached but no editor registered (import steerkit.interventions)")
        return _EDITOR[0](base, attached, module, query, key, value, attention_mask, **kwargs)

    return steerkit_attention


def install(model: Any) -> None:
    """Switch `model` to steerkit's attention function wrapping its current implementation (idempotent)."""
    current = model.config._attn_implementation
    if current.startswith("steerkit_"):
        return
    if current not in ("sdpa", "eager"):
        raise SteerkitError(f"attention implementation {current!r} is not supported (sdpa or eager)")
    name = f"steerkit_{current}"
    AttentionInterface.register(name, _create_attention_function(current))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    model.set_attn_implementation(name)
