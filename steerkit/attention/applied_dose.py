"""The dose an attention edit actually applied: edge share and KL over the generated positions, teacher-forced.

Design note: a scale is not a dose. What reaches the model is (1) the share of attention the edited queries put
on the edited keys at the steered layer, and (2) how far the next-token distributions move. Both are read from one
forward pass over prompt + the baseline's continuation (teacher-forced), once under the identity edit (scale 1,
the baseline arm) and once under the steered edit, so the two passes see the same tokens and differ only by the
edit. Positions are bound to the *prompt* (`SteerState.bind` with the prompt's encoding and the padding of the
longer sequence), so `GENERATED` sources select the continuation's tokens exactly as during generation.
The KL is over the n distributions that chose the continuation's n tokens (positions P-1 .. P+n-2 for a prompt of
P tokens): for `generated_to_doctest` the first of them (the last prompt token) is untouched by construction, which
is why the last-prompt-token KL (`identity_and_kl`) is exactly 0 for that rule at every scale. The share is
`total_mass` of `steerkit.attention.measure` (per source query, the summed weight on the targets), averaged over
the edited heads and the source queries present in the pass. `calibrate_dose` (edge-rule mode) reads the same
figure, so the calibrated share and the logged dose are one measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from steerkit.core.batching import _Batch, encode_prompts
from steerkit.core.generation import Prompt
from steerkit.core.models import LoadedModel
from steerkit.core.positions import EncodedPrompt, RowTable
from steerkit.core.progress import progress
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, AttentionEdit, steer
from steerkit.metrics import kl_divergence

Row = dict[str, Any]


def _forced_batch(encoded: list[EncodedPrompt], continuations: list[list[int]], pad_id: int, device: Any) -> _Batch:
    """Left-padded prompt + continuation ids (the prompt's encoding keeps its own length for position binding)."""
    full = [
        EncodedPrompt(e.id, e.text, e.ids + tuple(c), e.offsets + ((0, 0),) * len(c))
        for e, c in zip(encoded, continuations)
    ]
    return _Batch.build(full, pad_id, device)


def _pass(
    loaded: LoadedModel, encoded: list[EncodedPrompt], batch: _Batch, edit: AttentionEdit, layer: int, keep: int
) -> tuple[torch.Tensor, Any]:
    """Logits of the last `keep` positions `[b, keep, vocab]` (float32) and the captured weights at `layer`."""
    capture = AttentionCapture(layer=layer)
    with torch.inference_mode(), steer(loaded, edit, capture) as state:
        state.bind(encoded, batch.pad)
        out = loaded.model(input_ids=batch.ids, attention_mask=batch.attn, position_ids=batch.pos, logits_to_keep=keep)
    (record,) = capture.records[layer]
    return out.logits.float().cpu(), record


def _shares(record: Any, edit: AttentionEdit, encoded: list[EncodedPrompt]) -> list[float]:
    """Per row the mean share of the source queries' attention on the target keys (NaN: no source query)."""
    src = RowTable.from_rows([edit.sources.resolve(e) for e in encoded]).mask(record.query_pos)  # [b, q]
    tgt = RowTable.from_rows([edit.targets.resolve(e) for e in encoded]).mask(record.key_pos)  # [b, k]
    heads = list(edit.heads) if edit.heads is not None else list(range(record.weights.shape[1]))
    mass = (record.weights[:, heads] * tgt[:, None, None, :]).sum(-1).mean(1)  # [b, q], head-averaged
    return [float(mass[r][src[r]].mean()) if bool(src[r].any()) else float("nan") for r in range(mass.shape[0])]


def applied_dose(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    continuations: Mapping[str, Sequence[int]],
    edit_1: AttentionEdit,
    edit_s: AttentionEdit,
    *,
    layer: int,
    chat: bool = False,
    batch_size: int = 8,
) -> tuple[dict[str, float], list[Row]]:
    """Edge share at `layer` (identity vs steered) and KL(identity || steered) over the generated positions.

    Args:
        prompts: the prompts, each with its baseline continuation's token ids in `continuations` (by prompt id).
        edit_1, edit_s: the identity (scale 1) and the steered edit, on the same edges.

    Returns:
        (summary, per-prompt rows). Summary: `dose_share_baseline`, `dose_share_steered` (means over prompts with
        a source query), `kl_generated_mean` (mean over prompts of the per-position mean), `kl_generated_max`
        and `n_dose_prompts` (prompts with at least one generated token).
    """
    return applied_doses(
        loaded, prompts, continuations, edit_1, {0: edit_s}, layer=layer, chat=chat, batch_size=batch_size
    )[0]


def applied_doses(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    continuations: Mapping[str, Sequence[int]],
    edit_1: AttentionEdit,
    edits: Mapping[Any, AttentionEdit],
    *,
    layer: int,
    chat: bool = False,
    batch_size: int = 8,
) -> dict[Any, tuple[dict[str, float], list[Row]]]:
    """`applied_dose` of every steered edit in `edits` (key -> edit, e.g. the scales of a sweep), the identity's
    teacher-forced pass computed once per batch for all of them: each key's figures equal its own `applied_dose`."""
    missing = [p.id for p in prompts if p.id not in continuations]
    if missing:
        raise SteerkitError(f"no baseline continuation for prompt {missing[0]!r}")
    encoded = encode_prompts(loaded, prompts, chat)
    rows: dict[Any, list[Row]] = {key: [] for key in edits}
    for b0 in progress(range(0, len(encoded), batch_size), desc="applied dose", unit="batch"):
        enc = encoded[b0 : b0 + batch_size]
        cont = [list(continuations[e.id]) for e in enc]
        batch = _forced_batch(enc, cont, loaded.tokenizer.pad_token_id, loaded.device)
        keep = max(len(c) for c in cont) + 1
        base_logits, base_rec = _pass(loaded, enc, batch, edit_1, layer, keep)
        shares_1 = _shares(base_rec, edit_1, enc)
        for key, edit_s in edits.items():
            steer_logits, steer_rec = _pass(loaded, enc, batch, edit_s, layer, keep)
            shares_s = _shares(steer_rec, edit_s, enc)
            for r, (e, c) in enumerate(zip(enc, cont)):
                positions = slice(keep - len(c) - 1, keep - 1)  # the distributions that chose the n tokens
                kl = kl_divergence(base_logits[r, positions], steer_logits[r, positions]).numpy()
                rows[key].append(
                    {
                        "id": e.id,
                        "n_generated": len(c),
                        "share_baseline": shares_1[r],
                        "share_steered": shares_s[r],
                        "kl_generated_mean": float(kl.mean()) if len(c) else float("nan"),
                        "kl_generated_max": float(kl.max()) if len(c) else float("nan"),
                    }
                )
    return {key: (summarise_dose(got), got) for key, got in rows.items()}


def summarise_dose(rows: Sequence[Row]) -> dict[str, float]:
    """Means over prompts of the per-prompt figures (NaN rows left out); `kl_generated_max` over all positions."""

    def finite(key: str) -> np.ndarray:
        values = np.array([r[key] for r in rows], dtype=float)
        return values[np.isfinite(values)]

    def mean(key: str) -> float:
        values = finite(key)
        return float(values.mean()) if values.size else float("nan")

    kl_max = finite("kl_generated_max")
    return {
        "dose_share_baseline": mean("share_baseline"),
        "dose_share_steered": mean("share_steered"),
        "kl_generated_mean": mean("kl_generated_mean"),
        "kl_generated_max": float(kl_max.max()) if kl_max.size else float("nan"),
        "n_dose_prompts": float(sum(r["n_generated"] > 0 for r in rows)),
    }


def continuations_of(records: Sequence[Row]) -> dict[str, list[int]]:
    """Prompt id -> generated token ids of an arm's records (`Generation.to_dict()` format)."""
    return {r["prompt_id"]: list(r["token_ids"]) for r in records}


__all__ = ["applied_dose", "applied_doses", "continuations_of", "summarise_dose"]
