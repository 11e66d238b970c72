"""Which KV cache `generate` may use, and why not a static one.

Design note: `dynamic` (transformers' `DynamicCache`, grown by one key per step) is the cache every arm runs
through; `none` recomputes the whole sequence every step (the reference design, for benchmarks). A static cache
(`StaticCache`, the usual first step to `torch.compile` / CUDA graphs) preallocates `max_cache_len` key slots and
the attention kernel sums over all of them, the unused ones masked. The masked slots add exact zeros, but a longer
key axis changes how the kernel blocks and orders its float32 sums: with plain transformers and no steerkit hook,
static and dynamic logits differ by up to ~1e-7 on the tiny test models and 4e-5 on SmolLM2-135M (measured, CPU),
and it was no faster on CPU. Tokens could then differ from `dynamic` at near-ties, so `static` is refused rather
than offered as an inexact path (`tests/test_kv_cache.py` checks that the difference is still there).

`new_cache` is `dynamic` with room to grow: transformers' `DynamicLayer` concatenates every step, copying the
whole cache (at batch 80 and ~250 keys, a third of SmolLM2's decoding step on a 2-core CPU). `_GrowingLayer` keeps
its keys and values in buffers with spare room along the sequence, writes each step's keys into the next free
slots, and hands attention exactly the filled part (a view): the same keys, the same shapes, so the same logits
bit for bit (tested against `DynamicCache`). Sliding-window layers are left as transformers makes them.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from steerkit.errors import SteerkitError

CACHES = ("dynamic", "none")
STATIC_CACHE_REFUSED = (
    "cache='static' is refused: a static KV cache's masked slots change the attention kernel's float32 sums "
    "(logits differ from cache='dynamic' by up to 4e-5 on SmolLM2-135M), so tokens could differ; use 'dynamic'"
)


def check_cache(cache: str) -> None:
    """Refuse anything but `dynamic` / `none`, with a one-line reason for `static`."""
    if cache == "static":
        raise SteerkitError(STATIC_CACHE_REFUSED)
    if cache not in CACHES:
        raise SteerkitError(f"unknown cache strategy {cache!r} ({', '.join(CACHES)})")


class _GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose key/value buffers have spare room along the sequence (doubling when full). Anything
    that assigns `keys`/`values` (transformers' own selection, repetition, cropping) stores a buffer without spare
    room; the next `update` makes room again."""

    _kbuf: torch.Tensor | None = None
    _vbuf: torch.Tensor | None = None
    _n = 0

    @property  # type: ignore[override]
    def keys(self) -> Any:
        return None if self._kbuf is None else self._kbuf[..., : self._n, :] if self._kbuf.dim() == 4 else self._kbuf

    @keys.setter
    def keys(self, value: Any) -> None:
        self._kbuf = value
        self._n = value.shape[-2] if value is not None and value.dim() == 4 else 0

    @property  # type: ignore[override]
    def values(self) -> Any:
        return None if self._vbuf is None else self._vbuf[..., : self._n, :] if self._vbuf.dim() == 4 else self._vbuf

    @values.setter
    def values(self, value: Any) -> None:
        self._vbuf = value

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, need = self._n, self._n + key_states.shape[-2]
        if self._kbuf is None or self._kbuf.dim() != 4 or need > self._kbuf.shape[-2]:
            shape = (*key_states.shape[:2], max(2 * need, 64), key_states.shape[-1])
            kbuf, vbuf = key_states.new_empty(shape), value_states.new_empty(shape[:3] + value_states.shape[-1:])
            if n:
                kbuf[..., :n, :], vbuf[..., :n, :] = self.keys, self.values
            self._kbuf, self._vbuf = kbuf, vbuf
        assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[..., n:need, :] = key_states
        self._vbuf[..., n:need, :] = value_states
        self._n = need
        return self.keys, self.values


def new_cache(config: Any) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers grow in place (`_GrowingLayer`)."""
    cache = DynamicCache(config=config)
    cache.layers = [_GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
