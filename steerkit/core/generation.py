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

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache

from steerkit.core.batching import (  # re-exported: generation's public surface predates the split
    Prompt,
    _Batch,
    batch_order,
    check_split,
    encode_prompts,
    padded_split,
)
from steerkit.core.batching import (
    as_prompts as as_prompts,
)
from steerkit.core.kv_cache import check_cache
from steerkit.core.models import LoadedModel
from steerkit.core.positions import EncodedPrompt
from steerkit.core.progress import progress as progress_bar
from steerkit.core.sampling import Sampler, SeededSampler, sampling_probs
from steerkit.core.sampling import row_seed as row_seed
from steerkit.errors import SteerkitError
from steerkit.interventions.base import SteerState, steer

StopReason = Literal["eos", "max_new_tokens", "stop_string"]


@dataclass(frozen=True)
class GenerationConfig:
    """Generation parameters, validated; `to_dict()` is what experiments log."""

    max_new_tokens: int = 128
    batch_size: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    chat: bool = False
    stop_strings: tuple[str, ...] = ()
    cache: Literal["dynamic", "none"] = "dynamic"

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SteerkitError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SteerkitError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SteerkitError(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise SteerkitError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.stop_strings, str) or not all(isinstance(x, str) and x for x in self.stop_strings):
            raise SteerkitError(f"stop_strings must be a sequence of non-empty strings, got {self.stop_strings!r}")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        check_cache(self.cache)  # `static` is refused, with the reason (steerkit.core.kv_cache)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    """One completion: text and token ids of the generated part only (EOS excluded)."""

    prompt_id: str
    text: str
    token_ids: tuple[int, ...]
    n_tokens: int
    stop_reason: StopReason
    prompt_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "token_ids": list(self.token_ids)}


def _select(logits: torch.Tensor, cfg: GenerationConfig, sampler: Sampler, ids: list[str], step: int) -> torch.Tensor:
    """Next tokens `[b]` from last-position logits `[b, vocab]`: greedy, or the sampler's draw."""
    if cfg.temperature == 0.0:
        return logits.argmax(-1)
    return sampler(sampling_probs(logits, cfg.temperature, cfg.top_p), ids, step)


def eos_ids(loaded: LoadedModel) -> set[int]:
    ids = {loaded.tokenizer.eos_token_id}
    gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
    return {int(i) for i in ids if i is not None}


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
) -> list[Generation]:
    """Decode one left-padded batch; rows leave the batch (and its KV cache) as soon as they finish.

    With `cut > 0` the prompt is prefilled in two passes, `[0, cut)` then `[cut, width)`; `prefilled` is a cache
    already holding `[0, cut)` (computed once and shared by several arms). `on_first_logits(prompt ids, logits
    [b, vocab])` receives the first step's logits: the next-token logits at the last prompt token.
    """
    model, n = loaded.model, len(batch.prompts)
    state.bind(batch.prompts, batch.pad)
    if cut:
        if cfg.cache != "dynamic":
            raise SteerkitError("a prefill split needs the KV cache (cache='dynamic')")
        check_split(state, batch, cut)
    cache = prefilled
    if cache is None and cfg.cache == "dynamic":
        cache = DynamicCache(config=model.config)
    if cut and prefilled is None and cache is not None:
        prefill(loaded, state, batch, cut, cache)
    ids, attn, pos = batch.ids, batch.attn, batch.pos
    out_tokens: list[list[int]] = [[] for _ in range(n)]
    reasons: list[StopReason | None] = [None] * n
    active = list(range(n))  # batch rows still generating, in the order of the current tensors
    state.query_start = cut
    step_ids, step_pos = ids[:, cut:], pos[:, cut:]
    for step in range(cfg.max_new_tokens):
        logits = model(
            input_ids=step_ids,
            attention_mask=attn,
            position_ids=step_pos,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=1,
        ).logits[:, -1]
        if step == 0 and on_first_logits is not None:
            on_first_logits([p.id for p in batch.prompts], logits)
        nxt = _select(logits, cfg, sampler, [batch.prompts[r].id for r in active], step)
        _record(nxt.tolist(), active, out_tokens, reasons, eos, loaded, cfg)
        still = [i for i, r in enumerate(active) if reasons[r] is None]
        if not still:
            break
        if len(still) < len(active):
            keep = torch.tensor(still, device=ids.device)
            ids, attn, pos, nxt = ids[keep], attn[keep], pos[keep], nxt[keep]
            if cache is not None:
                cache.batch_select_indices(keep)
            state.select(still)
            active = [active[i] for i in still]
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        attn = torch.cat([attn, attn.new_ones(len(active), 1)], dim=1)
        pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
        if cache is None:
            step_ids, step_pos = ids, pos
        else:
            state.query_start = ids.shape[1] - 1
            step_ids, step_pos = ids[:, -1:], pos[:, -1:]
    return [
        _result(p, toks, r or "max_new_tokens", loaded, cfg) for p, toks, r in zip(batch.prompts, out_tokens, reasons)
    ]


def _record(
    tokens: list[int],
    active: list[int],
    out: list[list[int]],
    reasons: list[StopReason | None],
    eos: set[int],
    loaded: LoadedModel,
    cfg: GenerationConfig,
) -> None:
    """Append each active row's new token, or mark why it stopped."""
    for row, tok in zip(active, tokens):
        if tok in eos:
            reasons[row] = "eos"
            continue
        out[row].append(tok)
        if cfg.stop_strings:
            # a token holds at least one byte, so a stop string of L bytes spans at most L + 1 tokens
            window = max(len(x.encode()) for x in cfg.stop_strings) + 1
            text = loaded.tokenizer.decode(out[row][-window:], skip_special_tokens=True)
            if any(s in text for s in cfg.stop_strings):
                reasons[row] = "stop_string"
        if reasons[row] is None and len(out[row]) >= cfg.max_new_tokens:
            reasons[row] = "max_new_tokens"


def _result(
    prompt: EncodedPrompt, tokens: list[int], reason: StopReason, loaded: LoadedModel, cfg: GenerationConfig
) -> Generation:
    text = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    if reason == "stop_string":
        cut = min(text.index(s) for s in cfg.stop_strings if s in text)
        text = text[:cut]
    return Generation(prompt.id, text, tuple(tokens), len(tokens), reason, len(prompt))


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
            for i, gen in zip(idx, run_batch(loaded, state, batch, cfg, eos, draw, padded_split(batch, prefill_split))):
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
