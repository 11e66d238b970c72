"""Reading the residual stream: capture at named hook points, last-token and per-token activations.

Design note: capture is an intervention like any other (`ResidualCapture`), so it composes with steering in one
`steer()` block and uses the same left-padded batching as generation: what a direction or an SAE is computed
from is exactly what the steering hooks later see. Hook points follow `interventions.residual`: `resid_pre` is
the input of block L, `resid_post` its output. Activations come back in float32 on the CPU, unpadded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from steerkit.core.generation import Prompt, _Batch, encode_prompts
from steerkit.core.positions import EncodedPrompt, RowPositions, Selector
from steerkit.core.progress import progress
from steerkit.errors import SteerkitError
from steerkit.interventions.base import steer
from steerkit.interventions.residual import HOOK_POINTS, HookPoint

if TYPE_CHECKING:
    from steerkit.core.models import LoadedModel
    from steerkit.interventions.base import Handle, SteerState


def _layers(layer: int | Sequence[int]) -> tuple[int, ...]:
    return (layer,) if isinstance(layer, int) else tuple(layer)


def _create_capture_hook(records: list[torch.Tensor], pre: bool) -> Any:
    """Hook appending the block's input (`pre`) or output hidden states `[b, q, d]` to `records`."""

    def keep(hidden: torch.Tensor) -> None:
        records.append(hidden.detach().float().cpu())

    if pre:

        def pre_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            keep(args[0] if args else kwargs["hidden_states"])

        return pre_hook

    def post_hook(module: Any, args: Any, output: Any) -> None:
        keep(output[0] if isinstance(output, tuple) else output)

    return post_hook


@dataclass(frozen=True)
class ResidualCapture:
    """Record the residual stream at `hook` of each block in `layer`, for every forward pass.

    After each pass, `records[layer]` gains a `[batch, q, d_model]` float32 CPU tensor (padded like the batch).
    """

    layer: int | tuple[int, ...]
    hook: HookPoint = "resid_post"
    records: dict[int, list[torch.Tensor]] = field(default_factory=dict, compare=False)

    def validate(self, loaded: LoadedModel) -> None:
        if self.hook not in HOOK_POINTS:
            raise SteerkitError(f"unknown hook point {self.hook!r} (choose from {', '.join(HOOK_POINTS)})")
        for layer in _layers(self.layer):
            loaded.check_layer(layer)

    def selectors(self) -> dict[str, Selector]:
        return {}

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None:
        return None

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]:
        handles: list[Handle] = []
        for layer in _layers(self.layer):
            block = loaded.layers()[layer]
            hook = _create_capture_hook(self.records.setdefault(layer, []), self.hook == "resid_pre")
            if self.hook == "resid_pre":
                handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(block.register_forward_hook(hook))
        return handles


def _forward_batches(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    capture: ResidualCapture,
    *,
    chat: bool,
    batch_size: int,
    interventions: Sequence[Any],
) -> list[tuple[list[int], list[int]]]:
    """Run every batch under `capture` (+ interventions); returns per batch (pad widths, prompt lengths)."""
    if batch_size < 1:
        raise SteerkitError(f"batch_size must be >= 1, got {batch_size}")
    encoded = encode_prompts(loaded, prompts, chat)
    shapes: list[tuple[list[int], list[int]]] = []
    with torch.inference_mode(), steer(loaded, *interventions, capture) as state:
        for b0 in progress(range(0, len(encoded), batch_size), desc="activations", unit="batch"):
            batch = _Batch.build(encoded[b0 : b0 + batch_size], loaded.tokenizer.pad_token_id, loaded.device)
            state.bind(batch.prompts, batch.pad)
            loaded.model(input_ids=batch.ids, attention_mask=batch.attn, position_ids=batch.pos, logits_to_keep=1)
            shapes.append((batch.pad, [len(p) for p in batch.prompts]))
    return shapes


def last_token_residuals(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    layers: int | Sequence[int],
    *,
    hook: HookPoint = "resid_post",
    chat: bool = False,
    batch_size: int = 16,
    interventions: Sequence[Any] = (),
) -> dict[int, torch.Tensor]:
    """Residual stream at the last prompt token: `{layer: [n_prompts, d_model]}` float32, in prompt order.

    With `chat=True` the chat template is applied first, so "last prompt token" is the template's last token
    (e.g. the assistant header), the position whose state the model's answer starts from.
    """
    capture = ResidualCapture(_layers(layers), hook)
    _forward_batches(loaded, prompts, capture, chat=chat, batch_size=batch_size, interventions=interventions)
    # Left padding puts every prompt's last token in the last column.
    return {layer: torch.cat([h[:, -1] for h in capture.records[layer]]) for layer in _layers(layers)}


def token_residuals(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    layer: int,
    *,
    hook: HookPoint = "resid_post",
    chat: bool = False,
    batch_size: int = 16,
    skip_first: bool = True,
) -> list[torch.Tensor]:
    """Residual stream at every (unpadded) prompt token: one `[len_i, d_model]` float32 tensor per prompt.

    `skip_first` drops position 0 (the BOS/first token), whose norm is typically orders of magnitude larger
    than the rest and dominates anything fitted to these activations (SAE training usually excludes it).
    """
    capture = ResidualCapture(layer, hook)
    shapes = _forward_batches(loaded, prompts, capture, chat=chat, batch_size=batch_size, interventions=())
    out: list[torch.Tensor] = []
    for hidden, (pads, _lengths) in zip(capture.records[layer], shapes):
        for row, pad in enumerate(pads):
            out.append(hidden[row, pad + int(skip_first) :])
    return out
