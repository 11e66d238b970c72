"""Several arms (baseline, doses) on the same prompts, sharing each prompt's prefill.

Design note: an experiment compares arms that differ only from some prompt position on: an attention edit from
the function signature on, a residual edit on the generated tokens. Before that position every arm computes the
same thing, so the prompt's KV cache up to it is computed once per batch and copied into each arm, which then
runs the rest of its prompt and its generation under its own interventions.

Exactness: a prefill cut in two passes is not bit-identical to one pass (matrix shapes change the order of float
sums; ~3e-5 in the logits of SmolLM2 f32), so the cut is a *declared* property of the experiment, not an
optimisation that silently moves bits: `shared_prefix` derives it from every arm's interventions, and each arm
gets the same cut whether run here or alone (`generate(..., prefill_split=split)`), so the two are
token-identical, greedy or sampled (tests compare them). Before the cut, an active intervention is a bit-exact
no-op (see `first_changed_position`), so an arm's shared prefix equals the prefix it would compute itself. An
arm with nothing to change (the unhooked model) takes the cut too, so an identity arm (scale 1.0) is compared
with the unhooked model on one numeric path.
The first generation step's logits are the next-token logits at the last prompt token: `on_first_logits` hands
them back per arm, and `logit_arms` (e.g. the unhooked model) get only those, from the same shared prefix (their
prompt suffix runs on a copy of the shared cache, one decoding step through the same `run_batch`), so identity and
KL checks cost no extra full pass and compare arms on one numeric path.
Arms together: by default each arm takes its first step (prompt suffix, next-token logits) apart, then the
generated arms of a batch of prompts decode as one batch of `batch_size x arms` rows, each intervention selecting
nothing in the other arms' rows (`steerkit.core.arm_batches`: when that is exact, and why it is faster);
`batch_arms="separate"` runs them one after another.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from steerkit.core.arm_batches import Run, arms_together, decode_arms
from steerkit.core.batching import Prompt, _Batch, batch_order, encode_prompts, first_changed_position, padded_split
from steerkit.core.generation import Generation, GenerationConfig, eos_ids, prefill
from steerkit.core.kv_cache import new_cache
from steerkit.core.models import LoadedModel
from steerkit.core.progress import progress as progress_bar
from steerkit.core.sampling import SeededSampler
from steerkit.errors import SteerkitError
from steerkit.interventions.base import active_state, steer


def shared_prefix(
    loaded: LoadedModel, prompts: Sequence[Prompt | str], arms: Mapping[str, Sequence[Any]], chat: bool = False
) -> dict[str, int]:
    """Per prompt id, the earliest position any arm (or an open outer `steer()`) can change: the prefill cut."""
    outer = active_state(loaded)
    around = list(outer.interventions) if outer is not None else []
    split: dict[str, int] = {}
    for prompt in encode_prompts(loaded, prompts, chat):
        firsts = [first_changed_position([*around, *ivs], prompt) for ivs in arms.values()]
        split[prompt.id] = min(firsts, default=len(prompt))
    return split


def generate_arms(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    arms: Mapping[str, Sequence[Any]],
    *,
    config: GenerationConfig | None = None,
    on_result: Callable[[str, Generation], None] | None = None,
    split: Mapping[str, int] | None = None,
    progress: bool = True,
    logit_arms: Mapping[str, Sequence[Any]] | None = None,
    on_first_logits: Callable[[str, list[str], torch.Tensor], None] | None = None,
    **params: Any,
) -> dict[str, list[Generation]]:
    """Generate every arm on `prompts`, computing each batch's shared prompt prefix once.

    Args:
        loaded: the model.
        prompts: the prompts every arm runs on.
        arms: arm name -> its interventions (`[]` = the unhooked model).
        config, **params: as for `generate` (same batching for every arm); `batch_arms` (a `GenerationConfig`
            field): `together` decodes every arm of a batch of prompts as one batch of `batch_size x arms` rows
            (see the module note; needs interventions that leave other rows bit-exact), `separate` one arm after
            another, `auto` (default) together where the interventions allow it.
        on_result: called with `(arm, generation)` as each batch of each arm finishes (write-as-you-go).
        split: the prefill cut per prompt id (default: `shared_prefix` of these arms).
        progress: show a tqdm bar.
        logit_arms: arm name -> interventions of arms that only need their next-token logits at the last prompt
            token (no generation; e.g. `{"unhooked": []}` for the identity check), from the same shared prefix.
        on_first_logits: called with `(arm, prompt ids, logits [b, vocab])` per batch, for every arm and logit
            arm: the first generation step's logits (the next-token logits at the last prompt token).

    Returns:
        Arm name -> one `Generation` per prompt, in input order; each equals `generate(loaded, prompts,
        interventions=arms[name], prefill_split=split, ...)` token for token.
    """
    probes = dict(logit_arms or {})
    if not arms and not probes:
        raise SteerkitError("generate_arms needs at least one arm")
    if set(arms) & set(probes):
        raise SteerkitError(f"arms {sorted(set(arms) & set(probes))} are both generated and logit-only")
    cfg = GenerationConfig(**{**(config.to_dict() if config else {}), **params})
    if cfg.cache != "dynamic":
        raise SteerkitError(f"sharing the prompt prefix needs cache='dynamic', got {cfg.cache!r}")
    cut_at = dict(split) if split is not None else shared_prefix(loaded, prompts, {**arms, **probes}, cfg.chat)
    one_step = dataclasses.replace(cfg, max_new_tokens=1, temperature=0.0, stop_strings=())
    runs = [Run(name, list(ivs), one_step) for name, ivs in probes.items()]
    runs += [Run(name, list(ivs), cfg) for name, ivs in arms.items()]
    together = arms_together(loaded, [r.interventions for r in runs], cfg.batch_arms)
    encoded = encode_prompts(loaded, prompts, cfg.chat)
    order, eos = batch_order(encoded), eos_ids(loaded)
    samplers = {r.name: SeededSampler(cfg.seed) for r in runs}
    results: dict[str, list[Generation | None]] = {name: [None] * len(encoded) for name in arms}
    bar = progress_bar(desc="generate arms", total=len(encoded) * len(arms), unit="sample", enable=progress)
    start, n_tok = time.perf_counter(), 0
    with torch.inference_mode(), steer(loaded) as state:
        for b0 in range(0, len(order), cfg.batch_size):
            idx = order[b0 : b0 + cfg.batch_size]
            batch = _Batch.build([encoded[i] for i in idx], loaded.tokenizer.pad_token_id, loaded.device)
            cut = padded_split(batch, cut_at)
            shared = None
            if cut:
                shared = new_cache(loaded.model.config)
                state.bind(batch.prompts, batch.pad)
                prefill(loaded, state, batch, cut, shared)
            arms_of_batch = decode_arms(loaded, batch, cut, shared, runs, eos, samplers, on_first_logits, together)
            for name, gens in arms_of_batch:
                if name in probes:
                    continue
                for i, gen in zip(idx, gens):
                    results[name][i] = gen
                    n_tok += gen.n_tokens
                    if on_result is not None:
                        on_result(name, gen)
                bar.update(len(idx))
                bar.set_postfix(tok_s=f"{n_tok / (time.perf_counter() - start):.0f}")
    bar.close()
    return {name: [g for g in gens if g is not None] for name, gens in results.items()}


class FirstLogits:
    """An `on_first_logits` sink: per arm and prompt id, the float32 next-token logits `[vocab]` at the last prompt
    token (50 prompts x a 49k vocabulary is ~10 MB per arm)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, torch.Tensor]] = {}

    def __call__(self, arm: str, ids: list[str], logits: torch.Tensor) -> None:
        got = self.rows.setdefault(arm, {})
        for pid, row in zip(ids, logits.float().cpu()):
            got[pid] = row.clone()

    def stack(self, arm: str, ids: Sequence[str]) -> torch.Tensor:
        """The arm's logits `[len(ids), vocab]` in the order of `ids` (joined by prompt id)."""
        got = self.rows.get(arm, {})
        missing = [pid for pid in ids if pid not in got]
        if missing:
            raise SteerkitError(f"no next-token logits of arm {arm!r} for prompts {missing[:3]}")
        return torch.stack([got[pid] for pid in ids])
