"""Splicing an SAE into the model: how much next-token loss its reconstruction costs.

Design note: `SAESplice` is an ordinary intervention (validate / selectors / check_rows / attach) that replaces
the residual stream at the SAE's own layer and hook point with `sae(x)` (or zeros, for the zero-ablation
reference, or `x` itself, the identity control), so it composes with `steer()` and the usual left-padded batches.
Position 0 (the first token, whose residual norm is orders of magnitude larger) is left alone by default,
matching `token_residuals(skip_first=True)`, the data SAEs are trained on here. `spliced_loss` scores
next-token cross-entropy on texts under each replacement, at the positions the splice touched, and reports

    ce_increase         = CE(sae) - CE(clean)
    fraction_recovered  = (CE(zero) - CE(sae)) / (CE(zero) - CE(clean))      (1 = lossless, 0 = as bad as zeros)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from steerkit.core.generation import Prompt, _Batch, encode_prompts
from steerkit.core.positions import EncodedPrompt, RowPositions, Selector
from steerkit.errors import SteerkitError
from steerkit.interventions.base import steer
from steerkit.interventions.residual import _create_residual_hook, _register
from steerkit.sae.model import SAE

if TYPE_CHECKING:
    from steerkit.core.models import LoadedModel
    from steerkit.interventions.base import Handle, SteerState

Replacement = Literal["sae", "zero", "identity"]
REPLACEMENTS = ("sae", "zero", "identity")
ARMS = ("clean", *REPLACEMENTS)


@dataclass(frozen=True)
class FromToken(Selector):
    """Every position from token index `start` on (generated tokens included)."""

    start: int = 1

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:
        return RowPositions(start=self.start)


def _create_replacement(sae: SAE, replacement: str) -> Any:
    """`edit(hidden [b, q, d], mask [b, q])` replacing masked positions by `sae(hidden)`, zeros or themselves."""

    def edit(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if replacement == "identity":
            new = hidden
        elif replacement == "zero":
            new = torch.zeros_like(hidden)
        else:
            new = sae(hidden.to(sae.W_enc.dtype)).to(hidden.dtype)
        return torch.where(mask[..., None].bool(), new, hidden)

    return edit


@dataclass(frozen=True)
class SAESplice:
    """Replace the residual stream at the SAE's layer/hook by its reconstruction (or zeros, or itself).

    Attributes:
        sae: the SAE; its `cfg.layer` / `cfg.hook` say where.
        replacement: `sae` (reconstruction), `zero` (zero ablation), `identity` (the control: no change).
        positions: where to replace; default every token but the first.
    """

    sae: SAE
    replacement: Replacement = "sae"
    positions: Selector = FromToken(1)

    def __post_init__(self) -> None:
        if self.replacement not in REPLACEMENTS:
            raise SteerkitError(f"unknown splice replacement {self.replacement!r} (choose from {REPLACEMENTS})")

    def validate(self, loaded: LoadedModel) -> None:
        loaded.check_layer(self.sae.cfg.layer)
        if self.sae.cfg.d_in != loaded.d_model:
            raise SteerkitError(f"SAE d_in {self.sae.cfg.d_in} != d_model {loaded.d_model} of {loaded.spec}")

    def selectors(self) -> dict[str, Selector]:
        return {"positions": self.positions}

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None:
        return None

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]:
        cfg = self.sae.cfg
        edit = _create_replacement(self.sae.to(loaded.device), self.replacement)
        hook = _create_residual_hook(state, index, self.positions, edit, cfg.hook == "resid_pre")
        return _register(loaded, cfg.layer, cfg.hook, hook)


def _row_losses(logits: torch.Tensor, batch: _Batch, skip: int) -> list[tuple[float, int]]:
    """Per row: (summed next-token CE, count) over predictions made at unpadded positions >= `skip`."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, batch.ids[:, 1:, None]).squeeze(-1)  # [b, L-1]: predicting token t+1 at t
    out = []
    for row, pad in enumerate(batch.pad):
        values = nll[row, pad + skip :]
        out.append((float(values.sum()), int(values.numel())))
    return out


def _batch_losses(
    loaded: LoadedModel, batch: _Batch, interventions: Sequence[Any], skip: int
) -> list[tuple[float, int]]:
    with torch.inference_mode(), steer(loaded, *interventions) as state:
        state.bind(batch.prompts, batch.pad)
        out = loaded.model(input_ids=batch.ids, attention_mask=batch.attn, position_ids=batch.pos)
        return _row_losses(out.logits, batch, skip)


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    total = sum(r["n_tokens"] for r in rows)
    ce = {arm: sum(r[f"ce_{arm}"] * r["n_tokens"] for r in rows if r["n_tokens"]) / total for arm in ARMS}
    gap = ce["zero"] - ce["clean"]
    return {
        **{f"ce_{arm}": value for arm, value in ce.items()},
        "ce_increase": ce["sae"] - ce["clean"],
        "fraction_recovered": (ce["zero"] - ce["sae"]) / gap if gap != 0 else float("nan"),
        "identity_max_abs_ce_diff": max(abs(r["ce_identity"] - r["ce_clean"]) for r in rows if r["n_tokens"]),
        "n_tokens": float(total),
    }


def spliced_loss(
    loaded: LoadedModel,
    texts: Sequence[Prompt | str],
    sae: SAE,
    *,
    batch_size: int = 8,
    skip_first: int = 1,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Next-token cross-entropy (nats/token) clean, identity-spliced, SAE-spliced and zero-ablated.

    Args:
        loaded: the model the SAE belongs to.
        texts: held-out texts (plain, no chat template).
        sae: the SAE, spliced at its own layer/hook from token `skip_first` on.
        batch_size: texts per forward pass.
        skip_first: first position spliced and scored (predictions made before it are unchanged anyway).
        on_rows: called with each batch's per-text rows as soon as they are computed.

    Returns:
        (summary: `ce_clean`, `ce_identity`, `ce_sae`, `ce_zero`, `ce_increase`, `fraction_recovered`,
        `identity_max_abs_ce_diff`, `n_tokens`; per-text rows: `id`, `n_tokens`, `ce_<arm>` per arm).
    """
    encoded = encode_prompts(loaded, texts, chat=False)
    if not encoded or all(len(p) <= skip_first + 1 for p in encoded):
        raise SteerkitError(f"spliced_loss needs texts longer than {skip_first + 1} tokens")
    arms: dict[str, list[Any]] = {"clean": []}
    for name in REPLACEMENTS:
        arms[name] = [SAESplice(sae, name, FromToken(skip_first))]  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    for b0 in range(0, len(encoded), batch_size):
        batch = _Batch.build(encoded[b0 : b0 + batch_size], loaded.tokenizer.pad_token_id, loaded.device)
        per_arm = {name: _batch_losses(loaded, batch, ivs, skip_first) for name, ivs in arms.items()}
        new = []
        for i, prompt in enumerate(batch.prompts):
            count = per_arm["clean"][i][1]
            row: dict[str, Any] = {"id": prompt.id, "n_tokens": count}
            row.update({f"ce_{arm}": per_arm[arm][i][0] / count if count else float("nan") for arm in ARMS})
            new.append(row)
        rows.extend(new)
        if on_rows is not None:
            on_rows(new)
    return _summary(rows), rows
