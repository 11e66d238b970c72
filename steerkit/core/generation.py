"""Batched, KV-cached generation under interventions.

Design note: a plain decoding loop rather than `model.generate`, because the loop must tell the steering hooks
where they are: each batch binds its prompts (resolved positions, left padding) to the `SteerState`, and each
step advances `query_start`, so positions stay right as the cache grows. Baseline and steered runs go through
this same loop (the reference implementation compared a cached baseline with a recomputed steered run and read
the numerical noise as an effect). Prompts are left-padded with an attention mask and explicit position ids;
the completion is cut from the prompt by token ids, never by text; sampling is per prompt (`core.sampling`).
`cache="none"` recomputes the whole sequence every step (the reference design), for benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from steerkit.core.batching import Prompt, _Batch, batch_order, check_split, encode_prompts, padded_split
from steerkit.core.batching import as_prompts as as_prompts  # re-exported: the public surface predates the split
from steerkit.core.decoding import Decoding, Generation, GenerationConfig, eos_ids
from steerkit.core.decoding import StopReason as StopReason  # re-exported, as are the two below
from steerkit.core.kv_cache import new_cache
from steerkit.core.models import LoadedModel
from steerkit.core.progress import progress as progress_bar
from steerkit.core.sampling import Sampler, SeededSampler
from steerkit.core.sampling import row_seed as row_seed
from steerkit.core.sampling import sampling_probs as sampling_probs
from steerkit.errors import SteerkitError
from steerkit.interventions.base import SteerState, steer


def prefill(loaded: LoadedModel, state: SteerState, batch: _Batch, cut: int, cache: DynamicCache) -> None:
    """Run the bound batch's padded positions `[0, cut)` into `cache` (the shared prompt prefix)."""
    state.query_start = 0
    sl = slice(0, cut)
    loaded.model(
        input_ids=batch.ids[:, sl],
        attention_mask=batch.attn[:, sl],
        position_ids=batch.pos[:, sl],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )


def run_batch(
    loaded: LoadedModel,
    state: SteerState,
    batch: _Batch,
    cfg: GenerationConfig,
    eos: set[int],
    sampler: Sampler,
    cut: int = 0,
    prefilled: DynamicCache | None = None,
    on_first_logits: Callable[[list[str], torch.Tensor], None] | None = None,
    steps: int | None = None,
) -> Decoding:
    """Bind one left-padded batch to `state` and decode it (`steps` of them; None: to the end; see `Decoding`).

    With `cut > 0` the prompt is prefilled in two passes, `[0, cut)` then `[cut, width)`; `prefilled` is a cache
    already holding `[0, cut)` (computed once and shared by several arms). `on_first_logits(prompt ids, logits
    [b, vocab])` receives the first step's logits: the next-token logits at the last prompt token.
    """
    state.bind(batch.prompts, batch.pad)
    if cut:
        if cfg.cache != "dynamic":
            raise SteerkitError("a prefill split needs the KV cache (cache='dynamic')")
        check_split(state, batch, cut)
    cache = prefilled
    if cache is None and cfg.cache == "dynamic":
        cache = new_cache(loaded.model.config)
    if cut and prefilled is None and cache is not None:
        prefill(loaded, state, batch, cut, cache)
    decoding = Decoding(loaded, batch, cfg, eos, sampler, cut, cache, on_first_logits)
    while decoding.active and (steps is None or decoding.n_steps < steps):
        decoding.step(state)
    return decoding


def generate(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    *,
    interventions: Sequence[Any] = (),
    config: GenerationConfig | None = None,
    on_result: Callable[[Generation], None] | None = None,
    progress: bool = True,
    seeds: Mapping[str, int] | None = None,
    sampler: Sampler | None = None,
    prefill_split: Mapping[str, int] | None = None,
    **params: Any,
) -> list[Generation]:
    """Generate completions for `prompts` under `interventions`.

    Args:
        loaded: the model.
        prompts: `Prompt`s (or strings, given ids `p0`, `p1`, ...).
        interventions: applied at every step (prompt and generated tokens, as their positions say).
        config: a `GenerationConfig`; keyword `params` (max_new_tokens, batch_size, temperature, top_p, seed,
            chat, stop_strings, cache) override its fields.
        on_result: called with each finished `Generation` as soon as its batch ends (write-as-you-go).
        seeds: per-prompt sampling seeds by prompt id (default: derived from `seed` and the id).
        sampler: a custom `Sampler` for temperature > 0 (default: `SeededSampler(seed, seeds)`).
        progress: show a tqdm bar.
        prefill_split: per prompt id, the position where the prompt's prefill is cut in two passes (see
            `steerkit.core.arms.shared_prefix`); arms of one experiment given the same split compute bit-identical
            prefixes, which `generate_arms` then computes once. None: one prefill pass.

    Returns:
        One `Generation` per prompt, in input order.
    """
    cfg = GenerationConfig(**{**(config.to_dict() if config else {}), **params})
    encoded = encode_prompts(loaded, prompts, cfg.chat)
    order = batch_order(encoded)
    results: list[Generation | None] = [None] * len(encoded)
    pad_id = loaded.tokenizer.pad_token_id
    eos = eos_ids(loaded)
    draw = sampler if sampler is not None else SeededSampler(cfg.seed, seeds)
    bar = progress_bar(desc="generate", total=len(encoded), unit="prompt", enable=progress)
    start, n_tok = time.perf_counter(), 0
    with torch.inference_mode(), steer(loaded, *interventions) as state:
        for b0 in range(0, len(order), cfg.batch_size):
            idx = order[b0 : b0 + cfg.batch_size]
            batch = _Batch.build([encoded[i] for i in idx], pad_id, loaded.device)
            cut = padded_split(batch, prefill_split)
            for i, gen in zip(idx, run_batch(loaded, state, batch, cfg, eos, draw, cut).results()):
                results[i] = gen
                n_tok += gen.n_tokens
                if on_result is not None:
                    on_result(gen)
            bar.update(len(idx))
            bar.set_postfix(tok_s=f"{n_tok / (time.perf_counter() - start):.0f}")
    bar.close()
    return [r for r in results if r is not None]


def next_token_logits(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    *,
    interventions: Sequence[Any] = (),
    chat: bool = False,
    batch_size: int = 16,
) -> torch.Tensor:
    """Float32 next-token logits `[n_prompts, vocab]` at the last prompt position, through the same batching."""
    encoded = encode_prompts(loaded, prompts, chat)
    rows: list[torch.Tensor] = []
    with torch.inference_mode(), steer(loaded, *interventions) as state:
        for b0 in progress_bar(range(0, len(encoded), batch_size), desc="next-token logits", unit="batch"):
            batch = _Batch.build(encoded[b0 : b0 + batch_size], loaded.tokenizer.pad_token_id, loaded.device)
            state.bind(batch.prompts, batch.pad)
            out = loaded.model(input_ids=batch.ids, attention_mask=batch.attn, position_ids=batch.pos, logits_to_keep=1)
            rows.append(out.logits[:, -1].float().cpu())
    return torch.cat(rows)
