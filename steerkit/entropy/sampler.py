"""A `Sampler` whose randomness comes from a byte stream per prompt (direct entropy injection).

Design note: `generate` hands the sampler probabilities that already carry the temperature and top-p, so
every arm samples at the same temperature; only the source of the uniforms differs. Each prompt id owns one
`ByteStream`, read only when that row draws, so a row's draw depends on its own stream and step, never on
which prompts share its batch. Methods: `inverse_cdf` (one 53-bit uniform per step, exact sampling) and
`gumbel` (one 32-bit uniform per vocabulary entry: argmax(log p + noise_scale * Gumbel)); noise_scale 1 is
exact sampling, 0 is greedy, larger values flatten the distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from steerkit.entropy.sources import ByteStream
from steerkit.errors import SteerkitError

SAMPLING_METHODS = ("inverse_cdf", "gumbel")
Method = Literal["inverse_cdf", "gumbel"]


class StreamSampler:
    """Draw next tokens from per-prompt byte streams (see the module note)."""

    def __init__(self, streams: Mapping[str, ByteStream], method: str = "inverse_cdf", noise_scale: float = 1.0):
        if method not in SAMPLING_METHODS:
            raise SteerkitError(f"unknown sampling method {method!r} (choose from {', '.join(SAMPLING_METHODS)})")
        if not math.isfinite(noise_scale) or noise_scale < 0:
            raise SteerkitError(f"noise_scale must be finite and >= 0, got {noise_scale!r}")
        if method == "inverse_cdf" and noise_scale != 1.0:
            raise SteerkitError(f"noise_scale applies to method 'gumbel' only, got {noise_scale!r} with inverse_cdf")
        self.streams, self.method, self.noise_scale = dict(streams), method, noise_scale

    def __call__(self, probs: torch.Tensor, prompt_ids: list[str], step: int) -> torch.Tensor:
        rows = [
            self._draw(probs[i].detach().double().cpu().numpy(), self._stream(pid)) for i, pid in enumerate(prompt_ids)
        ]
        return torch.tensor(rows, dtype=torch.long, device=probs.device)

    def _stream(self, prompt_id: str) -> ByteStream:
        if prompt_id not in self.streams:
            raise SteerkitError(f"no byte stream for prompt id {prompt_id!r}")
        return self.streams[prompt_id]

    def _draw(self, p: np.ndarray, stream: ByteStream) -> int:
        if self.method == "inverse_cdf":
            return inverse_cdf_draw(p, float(stream.uniforms(1)[0]))
        return gumbel_draw(p, stream.uniforms(p.shape[0], bits=32), self.noise_scale)


def inverse_cdf_draw(p: np.ndarray, u: float) -> int:
    """The token i with cdf[i-1] <= u * total < cdf[i] (never a zero-probability token) for u in (0, 1)."""
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), p.shape[0] - 1))


def gumbel_draw(p: np.ndarray, u: np.ndarray, noise_scale: float) -> int:
    """argmax(log p + noise_scale * g) with g = -log(-log u): a sample from p when noise_scale is 1."""
    with np.errstate(divide="ignore"):
        scores = np.log(p) + noise_scale * -np.log(-np.log(u))
    return int(np.argmax(scores))
