"""Sampling the next token: temperature, nucleus filtering, and a seeded generator per prompt.

Design note: a sample must not depend on which prompts share its batch or in which order they come, so every
prompt draws from its own `torch.Generator`, seeded from `(seed, prompt id)` (`row_seed`). A custom `Sampler`
(the entropy experiments' byte streams) owns its randomness the same way: per row id and step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from steerkit.core.seeds import derive_seed


def row_seed(seed: int, prompt_id: str) -> int:
    """The sampling seed of one prompt: independent of batch composition and order."""
    return derive_seed(seed, prompt_id) >> 1  # torch generators take 63-bit seeds


class Sampler(Protocol):
    """Draws next tokens `[b]` from probabilities `[b, vocab]` (temperature and top-p already applied).

    `prompt_ids` name the rows; `step` counts generated tokens. A sampler owns its randomness (e.g. a byte
    stream per prompt), so a row's draw must depend only on its own id and step, never on batch composition.
    """

    def __call__(self, probs: torch.Tensor, prompt_ids: list[str], step: int) -> torch.Tensor: ...


class SeededSampler:
    """The default sampler: one `torch.Generator` per prompt, seeded from `seeds[id]` or `row_seed(seed, id)`."""

    def __init__(self, seed: int, seeds: Mapping[str, int] | None = None) -> None:
        self.seed, self.seeds = seed, dict(seeds or {})
        self._generators: dict[str, torch.Generator] = {}

    def __call__(self, probs: torch.Tensor, prompt_ids: list[str], step: int) -> torch.Tensor:
        rows = [
            torch.multinomial(probs[i].cpu(), 1, generator=self._generator(pid)) for i, pid in enumerate(prompt_ids)
        ]
        return torch.cat(rows).to(probs.device)

    def _generator(self, prompt_id: str) -> torch.Generator:
        if prompt_id not in self._generators:
            seed = self.seeds.get(prompt_id, row_seed(self.seed, prompt_id))
            self._generators[prompt_id] = torch.Generator().manual_seed(seed)
        return self._generators[prompt_id]


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Float32 probabilities `[b, vocab]` after temperature and nucleus (top-p) filtering, renormalised."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest prefix reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs
