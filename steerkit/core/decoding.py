"""One batch's decoding loop, and what it records: the generation config, the completions, why each stopped.

Design note: `Decoding` holds one left-padded batch mid-generation (token ids, mask, positions, KV cache, the rows
still active) and advances it one step at a time; `generate` runs it to the end on one batch, and `generate_arms`
can run the first step of several arms apart and the rest together (`Decoding.joined`, `steerkit.core.arm_batches`).
Rows leave the batch (and its KV cache) as soon as they finish. Each step tells the steering hooks where they are:
`SteerState.query_start` is the padded index of the step's first query.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import DynamicCache

from steerkit.core.kv_cache import check_cache
from steerkit.core.models import LoadedModel
from steerkit.core.positions import EncodedPrompt
from steerkit.core.sampling import Sampler, sampling_probs
from steerkit.errors import SteerkitError

if TYPE_CHECKING:
    from steerkit.core.batching import _Batch
    from steerkit.interventions.base import SteerState

StopReason = Literal["eos", "max_new_tokens", "stop_string"]
BATCH_ARMS = ("auto", "together", "separate")  # how generate_arms lays out arms (steerkit.core.arm_batches)


def check_batch_arms(mode: str) -> None:
    if mode not in BATCH_ARMS:
        raise SteerkitError(f"unknown batch_arms {mode!r} ({', '.join(BATCH_ARMS)})")


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
    batch_arms: Literal["auto", "together", "separate"] = "auto"

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
        check_batch_arms(self.batch_arms)

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


class Decoding:
    """One batch mid-generation; `step(state)` decodes one token for every active row.

    With `cut > 0`, `cache` already holds the prompt's padded positions `[0, cut)` and the first step runs the rest
    of the prompt. `on_first_logits(prompt ids, logits [b, vocab])` receives the first step's logits: the
    next-token logits at the last prompt token.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        batch: _Batch,
        cfg: GenerationConfig,
        eos: set[int],
        sampler: Sampler,
        cut: int = 0,
        cache: DynamicCache | None = None,
        on_first_logits: Callable[[list[str], torch.Tensor], None] | None = None,
    ) -> None:
        self.loaded, self.cfg, self.eos, self.sampler, self.cache = loaded, cfg, eos, sampler, cache
        self.prompts, self.pad = list(batch.prompts), list(batch.pad)
        self.ids, self.attn, self.pos = batch.ids, batch.attn, batch.pos
        self.out: list[list[int]] = [[] for _ in self.prompts]
        self.reasons: list[StopReason | None] = [None] * len(self.prompts)
        self.active = list(range(len(self.prompts)))  # rows still generating, in the order of the tensors
        self.n_steps, self.query_start = 0, cut
        self.step_ids, self.step_pos = self.ids[:, cut:], self.pos[:, cut:]
        self.on_first_logits = on_first_logits
        self.origin: list[tuple[Decoding, int]] = []  # a joined decoding's rows: (part, row in the part)

    def step(self, state: SteerState) -> None:
        """Decode one token for every active row; finished rows leave the batch, the cache and `state`."""
        state.query_start = self.query_start
        logits = self.loaded.model(
            input_ids=self.step_ids,
            attention_mask=self.attn,
            position_ids=self.step_pos,
            cache=self.cache,
            use_cache=self.cache is not None,
            logits_to_keep=1,
        ).logits[:, -1]
        ids = [self.prompts[r].id for r in self.active]
        if self.n_steps == 0 and self.on_first_logits is not None:
            self.on_first_logits(ids, logits)
        nxt = _select(logits, self.cfg, self.sampler, ids, self.n_steps)
        _record(nxt.tolist(), self.active, self.out, self.reasons, self.eos, self.loaded, self.cfg)
        self.n_steps += 1
        still = [i for i, r in enumerate(self.active) if self.reasons[r] is None]
        if not still:
            self.active = []
            return
        if len(still) < len(self.active):
            keep = torch.tensor(still, device=self.ids.device)
            self.ids, self.attn, self.pos, nxt = self.ids[keep], self.attn[keep], self.pos[keep], nxt[keep]
            if self.cache is not None:
                self.cache.batch_select_indices(keep)
            state.select(still)
            self.active = [self.active[i] for i in still]
        self.ids = torch.cat([self.ids, nxt[:, None]], dim=1)
        self.attn = torch.cat([self.attn, self.attn.new_ones(len(self.active), 1)], dim=1)
        self.pos = torch.cat([self.pos, self.pos[:, -1:] + 1], dim=1)
        if self.cache is None:
            self.step_ids, self.step_pos = self.ids, self.pos
        else:
            self.query_start = self.ids.shape[1] - 1
            self.step_ids, self.step_pos = self.ids[:, -1:], self.pos[:, -1:]

    def run(self, state: SteerState) -> list[Generation]:
        """Decode until every row has finished; one `Generation` per row of the batch, in batch order."""
        while self.active:
            self.step(state)
        return self.results()

    def results(self) -> list[Generation]:
        for row, (part, r) in enumerate(self.origin):  # a joined decoding hands its rows back
            part.reasons[r] = self.reasons[row]
        return [
            _result(p, toks, r or "max_new_tokens", self.loaded, self.cfg)
            for p, toks, r in zip(self.prompts, self.out, self.reasons)
        ]

    @classmethod
    def joined(cls, parts: Sequence[Decoding], cfg: GenerationConfig, sampler: Sampler) -> Decoding:
        """The active rows of `parts` (same prompts, the same number of steps taken, dynamic caches of one length)
        as one batch decoding on under `cfg` and `sampler`; each part's `results()` reads what its rows got."""
        live = [p for p in parts if p.active]
        if not live or any(p.cache is None or p.n_steps != live[0].n_steps for p in live):
            raise SteerkitError("only decodings with a KV cache, after the same number of steps, can be joined")
        new = cls.__new__(cls)
        new.loaded, new.cfg, new.eos, new.sampler, new.on_first_logits = live[0].loaded, cfg, live[0].eos, sampler, None
        new.origin = [(p, r) for p in live for r in p.active]
        new.prompts = [p.prompts[r] for p, r in new.origin]
        new.pad = [p.pad[r] for p, r in new.origin]
        new.out = [p.out[r] for p, r in new.origin]  # the parts' own lists: tokens land there too
        new.reasons = [None] * len(new.origin)
        new.active = list(range(len(new.origin)))
        new.ids, new.attn, new.pos = (torch.cat([getattr(p, k) for p in live]) for k in ("ids", "attn", "pos"))
        new.cache = _concat_caches([p.cache for p in live if p.cache is not None])
        new.n_steps, new.query_start = live[0].n_steps, live[0].query_start
        new.step_ids, new.step_pos = new.ids[:, -1:], new.pos[:, -1:]
        return new


def _concat_caches(caches: list[DynamicCache]) -> DynamicCache:
    """The first cache, its rows followed by the other caches' rows (every cache holds the same positions).
    transformers offers only `batch_repeat_interleave` / `batch_select_indices`, so the layers are joined here."""
    for i in range(len(caches[0].layers)):
        layers: list[Any] = [cache.layers[i] for cache in caches]  # DynamicLayer / DynamicSlidingWindowLayer
        if layers[0].get_seq_length() > 0:
            layers[0].keys = torch.cat([layer.keys for layer in layers])
            layers[0].values = torch.cat([layer.values for layer in layers])
    return caches[0]
