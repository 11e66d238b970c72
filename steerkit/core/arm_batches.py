"""How `generate_arms` runs the arms of one batch of prompts: one after another, or together in one batch.

Design note: decoding a small model is cheaper per token in bigger batches (SmolLM2-135M f32 on a 2-core CPU:
131 tok/s at batch 16, 237 tok/s at batch 80; on a GPU decoding is bound by reading the weights, so the gain
is larger), and the arms of an experiment run the same prompts. `together` puts every arm's copy of a prompt in
one batch, each row keeping the prompt's padding, and every intervention is told its arm (`SteerState.arm_of`):
in another arm's rows it selects no position. That is exact only for interventions that leave unselected rows
bit-exact (`batching.edited_positions`: attention `scale`/`target` edits, residual adds and ablations); with
anything else (a capture, a knockout, a patch) `auto` runs the arms one after another. Rows of one batch do not
interact, but a matrix product's kernel, and so its float32 rounding, can depend on the number of rows and on a
row's place among them (MKL on a 2-core AMD EPYC: 1-3 rows take another kernel; with 2 threads, 5 or 6 identical
rows do not all get identical results): a row decoded among other arms' rows can differ from the same row decoded
alone in the last bit, as it already can when other rows of its batch finish earlier. So each arm's first step
(its prompt suffix and the next-token logits) runs apart, on its own copy of the shared prefix cache in the shapes
it has alone: the first-step logits, and with them the identity check (unhooked vs scale 1.0, exactly 0) and the
KL figure, are those of `separate`. From the second token on, the arms' active rows decode as one batch: tokens
equal `separate` and each arm alone (tests: tiny models and SmolLM2, greedy and sampled), except where a step's
top two logits tie within float32 rounding. Each arm keeps its own sampler, so a prompt's draws do not depend on
the other arms (`_ArmSampler`). `batch_arms="separate"` keeps every shape of the arm alone.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from steerkit.core.batching import _Batch, edited_positions
from steerkit.core.decoding import Decoding, Generation, GenerationConfig, check_batch_arms
from steerkit.core.generation import run_batch
from steerkit.core.models import LoadedModel
from steerkit.core.sampling import Sampler
from steerkit.errors import SteerkitError
from steerkit.interventions.base import SteerState, active_state, steer

FirstLogitsSink = Callable[[str, list[str], torch.Tensor], None]


@dataclass(frozen=True)
class Run:
    """One arm as run: its name, interventions and generation config (a logit-only arm decodes one step)."""

    name: str
    interventions: list[Any]
    cfg: GenerationConfig


def arms_together(loaded: LoadedModel, arms: Sequence[Sequence[Any]], mode: str) -> bool:
    """Whether the arms (and any open outer `steer()`) can share one batch, as `mode` asks."""
    check_batch_arms(mode)
    if mode == "separate" or len(arms) < 2:
        return False
    outer = active_state(loaded)
    every = [*(outer.interventions if outer is not None else ()), *(iv for ivs in arms for iv in ivs)]
    bad = next((iv for iv in every if edited_positions(iv) is None), None)
    if bad is not None and mode == "together":
        raise SteerkitError(
            f"batch_arms='together' needs interventions that leave other arms' rows bit-exact; "
            f"{type(bad).__name__} does not (use 'separate' or 'auto')"
        )
    return bad is None


class _ArmSampler:
    """Draws each row with its own arm's sampler (rows in the state's current order)."""

    def __init__(self, state: SteerState, samplers: dict[int, Sampler]) -> None:
        self.state, self.samplers = state, samplers

    def __call__(self, probs: torch.Tensor, prompt_ids: list[str], step: int) -> torch.Tensor:
        arms = self.state.row_arms
        if arms is None or len(arms) != len(prompt_ids) or not set(arms) <= set(self.samplers):
            raise SteerkitError("rows of several arms sampled without their arms bound (SteerState.row_arms)")
        out = torch.empty(len(prompt_ids), dtype=torch.long, device=probs.device)
        for k, sampler in self.samplers.items():
            rows = [i for i, a in enumerate(arms) if a == k]
            if rows:
                out[rows] = sampler(probs[rows], [prompt_ids[i] for i in rows], step)
        return out


def decode_arms(
    loaded: LoadedModel,
    batch: _Batch,
    cut: int,
    shared: DynamicCache | None,
    runs: Sequence[Run],
    eos: set[int],
    samplers: Mapping[str, Sampler],
    on_first_logits: FirstLogitsSink | None,
    together: bool,
) -> Iterator[tuple[str, list[Generation]]]:
    """Each arm in turn on its own copy of the shared prefix cache (the last arm takes the original), in the shapes
    it has alone: to the end, or (`together`) one step, after which every arm's active rows decode as one batch
    (see the module note). Yields `(arm name, its generations)`."""
    parts = []
    for k, run in enumerate(runs):
        cache = None if shared is None else shared if k == len(runs) - 1 else copy.deepcopy(shared)
        first = None if on_first_logits is None else functools.partial(on_first_logits, run.name)
        steps = 1 if together else None
        with steer(loaded, *run.interventions) as state:
            parts.append(run_batch(loaded, state, batch, run.cfg, eos, samplers[run.name], cut, cache, first, steps))
    live = [k for k, part in enumerate(parts) if part.active]  # logit-only arms stopped after their step
    if live:
        flat: list[Any] = []
        arm_of: dict[int, int] = {}
        outer = active_state(loaded)
        base = len(outer.interventions) if outer is not None else 0
        for k in live:
            for iv in runs[k].interventions:
                arm_of[base + len(flat)] = k
                flat.append(iv)
        row_arms = [k for k in live for _ in parts[k].active]
        with steer(loaded, *flat) as state:
            state.arm_of = arm_of  # restored when the block ends
            sampler = _ArmSampler(state, {k: samplers[runs[k].name] for k in live})
            joined = Decoding.joined([parts[k] for k in live], runs[live[0]].cfg, sampler)
            state.bind(joined.prompts, joined.pad, row_arms)
            joined.run(state)
    for run, part in zip(runs, parts):
        yield run.name, part.results()
