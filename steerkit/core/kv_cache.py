"""Which KV cache `generate` may use, and why not a static one.

Design note: `dynamic` (transformers' `DynamicCache`, grown by one key per step) is the cache every arm runs
through; `none` recomputes the whole sequence every step (the reference design, for benchmarks). A static cache
(`StaticCache`, the usual first step to `torch.compile` / CUDA graphs) preallocates `max_cache_len` key slots and
the attention kernel sums over all of them, the unused ones masked. The masked slots add exact zeros, but a longer
key axis changes how the kernel blocks and orders its float32 sums: with plain transformers and no steerkit hook,
static and dynamic logits differ by up to ~1e-7 on the tiny test models and 4e-5 on SmolLM2-135M (measured, CPU),
and it was no faster on CPU. Tokens could then differ from `dynamic` at near-ties, so `static` is refused rather
than offered as an inexact path (`tests/test_kv_cache.py` checks that the difference is still there).
"""

from __future__ import annotations

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
