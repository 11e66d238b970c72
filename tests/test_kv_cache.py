"""`cache="static"` is refused (`steerkit.core.kv_cache`), and the reason still holds in plain transformers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import DynamicCache, StaticCache

from steerkit.core.batching import _Batch, encode_prompts
from steerkit.core.generation import GenerationConfig, generate
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
