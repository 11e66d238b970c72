"""`cache="static"` is refused (`steerkit.core.kv_cache`), and the reason still holds in plain transformers; the
growing cache `new_cache` gives transformers' `DynamicCache` logits bit for bit."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from transformers import DynamicCache, StaticCache

from steerkit.core.batching import _Batch, encode_prompts
from steerkit.core.generation import GenerationConfig, generate
from steerkit.core.kv_cache import _GrowingLayer, new_cache
from steerkit.core.models import LoadedModel
from steerkit.errors import SteerkitError

PROMPTS = ["def add(a, b):\n    return", "The capital of France is a city that", "x = 1\ny ="]


def test_static_cache_is_refused_with_the_reason(tiny: Callable[[str], LoadedModel]) -> None:
    with pytest.raises(SteerkitError, match="cache='static' is refused: .*float32") as err:
        GenerationConfig(cache="static")  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with pytest.raises(SteerkitError, match="refused"):
        generate(tiny("llama"), PROMPTS, cache="static", progress=False)
    with pytest.raises(SteerkitError, match="'paged'"):
        GenerationConfig(cache="paged")  # type: ignore[arg-type]


def _greedy_logits(loaded: LoadedModel, cache: DynamicCache | StaticCache, batch: _Batch, new: int) -> torch.Tensor:
    """Plain transformers decoding (no steerkit hook attached): last-position logits `[new, batch, vocab]`."""
    ids, attn, pos = batch.ids, batch.attn, batch.pos
    step_ids, step_pos, rows = ids, pos, []
    with torch.inference_mode():
        for _ in range(new):
            out = loaded.model(
                input_ids=step_ids, attention_mask=attn, position_ids=step_pos, cache=cache, logits_to_keep=1
            )
            logits = out.logits[:, -1]
            rows.append(logits.clone())
            ids = torch.cat([ids, logits.argmax(-1)[:, None]], dim=1)
            attn = torch.cat([attn, attn.new_ones(len(ids), 1)], dim=1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
            step_ids, step_pos = ids[:, -1:], pos[:, -1:]
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_static_cache_logits_still_differ_from_dynamic(tiny: Callable[[str], LoadedModel], arch: str) -> None:
    """Why `static` is refused: the same greedy decode in plain transformers gives logits that are close but not
    bit-equal to the dynamic cache's. If this ever fails (a transformers/torch release made them equal), a static
    path could be offered exactly: revisit `steerkit.core.kv_cache`."""
    loaded, new = tiny(arch), 12
    batch = _Batch.build(encode_prompts(loaded, PROMPTS, False), loaded.tokenizer.pad_token_id, loaded.device)
    dynamic = _greedy_logits(loaded, DynamicCache(config=loaded.model.config), batch, new)
    static_cache = StaticCache(config=loaded.model.config, max_cache_len=batch.ids.shape[1] + new)
    static = _greedy_logits(loaded, static_cache, batch, new)
    assert torch.allclose(static, dynamic, atol=1e-4, rtol=0)  # the same computation ...
    assert not torch.equal(static, dynamic)  # ... but not the same float32 sums


@pytest.mark.parametrize("arch", ["llama", "gemma", "gpt2", "qwen2"])  # tiny gemma3: sliding layers only
def test_growing_cache_gives_the_dynamic_caches_logits_bit_for_bit(sharp, arch: str) -> None:
    """`new_cache` writes into spare room instead of concatenating: plain transformers decoding with it must give
    DynamicCache's logits exactly, also after rows leave the batch (selection drops the spare room) and after a
    copy (arms start from copies of a shared prefix)."""
    loaded, new = sharp(arch), 10
    batch = _Batch.build(encode_prompts(loaded, PROMPTS, False), loaded.tokenizer.pad_token_id, loaded.device)
    growing = new_cache(loaded.model.config)
    assert any(isinstance(layer, _GrowingLayer) for layer in growing.layers)
    assert torch.equal(_greedy_logits(loaded, growing, batch, new),
                       _greedy_logits(loaded, DynamicCache(config=loaded.model.config), batch, new))  # fmt: skip
    grown = next(layer for layer in growing.layers if isinstance(layer, _GrowingLayer))
    assert grown._kbuf is not None and grown._kbuf.shape[-2] > grown.keys.shape[-2]  # it did write into spare room
    keep = torch.tensor([2, 0])
    caches = [new_cache(loaded.model.config), DynamicCache(config=loaded.model.config)]
    got = []
    for cache in caches:
        _greedy_logits(loaded, cache, batch, 3)
        cache.batch_select_indices(keep)
        copied = copy.deepcopy(cache)
        rows = _Batch(batch.prompts, *(torch.cat([t, t[:, -1:].expand(-1, 3)], 1)[keep] for t in (batch.ids, batch.attn,
                      batch.pos)))  # fmt: skip
        got.append(_greedy_logits_from(loaded, copied, rows, 4))
    assert torch.equal(got[0], got[1])


def _greedy_logits_from(loaded: LoadedModel, cache: DynamicCache, batch: _Batch, new: int) -> torch.Tensor:
    """`_greedy_logits` continuing a cache that already holds all but the last of `batch`'s positions."""
    ids, attn, pos = batch.ids, batch.attn, batch.pos
    rows = []
    with torch.inference_mode():
        for _ in range(new):
            out = loaded.model(input_ids=ids[:, -1:], attention_mask=attn, position_ids=pos[:, -1:], cache=cache,
                               logits_to_keep=1)  # fmt: skip
            rows.append(out.logits[:, -1].clone())
            ids = torch.cat([ids, out.logits[:, -1].argmax(-1)[:, None]], dim=1)
            attn = torch.cat([attn, attn.new_ones(len(ids), 1)], dim=1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
    return torch.stack(rows)
