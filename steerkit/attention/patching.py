"""Cross-language activation patching (seed 002, phase 5): Python donor -> Rust recipient of the same task.

Design note: both prompts are an item's code cut right after its first test marker (`>>>` / `#[test]`), so the
last position is the marker and its next-token distribution is what the patch should move. Positions are mapped
by labelled spans (`interventions.position_map`): marker <-> marker, function name <-> function name, parameters
<-> parameters, found with the items' own regexes on each prompt. Two patches per layer L:

- residual: `ResidualPatch` at `resid_post` of block L, recipient positions of a span group get the donor's
  residual at the aligned positions (groups: each span alone, and all together);
- attention row: `AttentionRowPatch` at block L, the recipient's marker query rows get the donor's marker rows'
  weights on the function-name and parameter keys (mass moved by span overlap), the rest of each row rescaled.

Metric: with t_d / t_r the donor's / the recipient's top next token, LD(x) = logit_x[t_d] - logit_x[t_r] at the
last position; recovered = (LD(patched) - LD(recipient)) / (LD(donor) - LD(recipient)): 0 = no change, 1 = the
donor's preference fully restored. Undefined (NaN) when t_d == t_r. Secondary: recovered_kl = 1 -
KL(donor || patched) / KL(donor || recipient), the same fraction with the scalar -KL(donor || .).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from steerkit.core.activations import ResidualCapture
from steerkit.core.models import LoadedModel
from steerkit.core.positions import EncodedPrompt, Pattern, encode
from steerkit.corpora.attention_pairs import AttentionItem
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, AttentionRowPatch, ResidualPatch, steer
from steerkit.interventions.patching import mapped_attention_values
from steerkit.interventions.position_map import PositionMap, build_position_map
from steerkit.metrics import kl_divergence

SPANS = ("marker", "function_name", "parameters")
KEY_SPANS = ("function_name", "parameters")


def patch_prompt(item: AttentionItem) -> str:
    """The item's code up to the end of its first test marker."""
    if item.marker is None:
        raise SteerkitError(f"item {item.id!r} is a baseline and has no test marker")
    found = re.search(item.marker, item.code, re.MULTILINE)
    if found is None:
        raise SteerkitError(f"item {item.id!r}: marker {item.marker!r} not found")
    return item.code[: found.end()]


def encode_patch_prompt(loaded: LoadedModel, item: AttentionItem) -> EncodedPrompt:
    return encode(loaded.tokenizer, item.id, patch_prompt(item), add_special_tokens=True)


def pair_map(
    donor_item: AttentionItem, donor: EncodedPrompt, rec_item: AttentionItem, rec: EncodedPrompt
) -> PositionMap:
    """marker / function_name / parameters spans of the donor prompt mapped onto the recipient prompt."""
    groups = {"marker": (Pattern(str(donor_item.marker), "first"), Pattern(str(rec_item.marker), "first"))}
    for name in KEY_SPANS:
        groups[name] = (donor_item.target_selector(name), rec_item.target_selector(name))
    return build_position_map(donor, rec, groups)


@dataclass(frozen=True)
class RunRecord:
    """One prompt's forward pass: last-position logits `[vocab]`, residuals `{layer: [len, d]}` (resid_post)
    and attention weights `{layer: [heads, len, len]}`."""

    logits: torch.Tensor
    residuals: dict[int, torch.Tensor]
    attention: dict[int, torch.Tensor]


@torch.inference_mode()
def record_run(loaded: LoadedModel, prompt: EncodedPrompt, layers: tuple[int, ...]) -> RunRecord:
    """Last logits plus residual and attention captures at `layers`, in one unhooked forward pass."""
    residual, attention = ResidualCapture(layers, "resid_post"), AttentionCapture(layers)
    ids = torch.tensor([prompt.ids], device=loaded.device)
    with steer(loaded, residual, attention, prompts=[prompt]):
        logits = loaded.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float().cpu()
    res = {layer: residual.records[layer][0][0] for layer in layers}
    att = {layer: attention.records[layer][0].weights[0] for layer in layers}
    return RunRecord(logits, res, att)


@torch.inference_mode()
def patched_logits(loaded: LoadedModel, prompt: EncodedPrompt, patches: list[Any]) -> torch.Tensor:
    """Last-position float32 logits `[vocab]` of `prompt` under `patches`."""
    ids = torch.tensor([prompt.ids], device=loaded.device)
    with steer(loaded, *patches, prompts=[prompt]):
        return loaded.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float().cpu()


def residual_patch(layer: int, donor: RunRecord, pmap: PositionMap, spans: tuple[str, ...]) -> ResidualPatch:
    """Recipient positions of `spans` get the donor's resid_post at the aligned donor positions."""
    pairs = pmap.residual_pairs(spans)
    values = donor.residuals[layer][[d for _, d in pairs]]
    return ResidualPatch(layer, "resid_post", tuple(r for r, _ in pairs), values)


def attention_row_patch(layer: int, donor: RunRecord, pmap: PositionMap) -> AttentionRowPatch:
    """Recipient marker rows get the donor's aligned marker rows' weights on the function-name/parameter keys."""
    marker = pmap.select(["marker"])[0].residual_pairs()
    keys = pmap.recipient_positions(KEY_SPANS)
    donor_rows = donor.attention[layer][:, [d for _, d in marker]]  # [heads, n_q, donor_len]
    values = mapped_attention_values(donor_rows, pmap.transfer(KEY_SPANS), keys)
    return AttentionRowPatch(layer, tuple(r for r, _ in marker), keys, values)


def recovered(clean: float, corrupted: float, patched: float) -> float:
    """(patched - corrupted) / (clean - corrupted); NaN when clean == corrupted (nothing to recover)."""
    gap = clean - corrupted
    return (patched - corrupted) / gap if gap != 0 else math.nan


@dataclass(frozen=True)
class PatchScorer:
    """The donor/recipient reference values of one pair, to score patched logits."""

    clean: torch.Tensor
    corrupted: torch.Tensor

    @property
    def tokens(self) -> tuple[int, int]:
        return int(self.clean.argmax()), int(self.corrupted.argmax())

    def logit_diff(self, logits: torch.Tensor) -> float:
        t_d, t_r = self.tokens
        return float(logits[t_d] - logits[t_r])

    def score(self, patched: torch.Tensor) -> dict[str, float]:
        kl_base = float(kl_divergence(self.clean, self.corrupted))
        kl_patched = float(kl_divergence(self.clean, patched))
        ld = self.logit_diff(patched)
        return {
            "logit_diff": ld,
            "recovered": recovered(self.logit_diff(self.clean), self.logit_diff(self.corrupted), ld),
            "kl_to_donor": kl_patched,
            "recovered_kl": recovered(0.0, -kl_base, -kl_patched),
            "kl_from_recipient": float(kl_divergence(self.corrupted, patched)),
        }


__all__ = [
    "KEY_SPANS",
    "SPANS",
    "PatchScorer",
    "RunRecord",
    "attention_row_patch",
    "encode_patch_prompt",
    "pair_map",
    "patch_prompt",
    "patched_logits",
    "record_run",
    "recovered",
    "residual_patch",
]
