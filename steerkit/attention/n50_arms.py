"""The arms of the n50 experiments (baseline = scale 1.0, steered scales) on one declared prefill cut.

Design note: the prefill cut is part of the experiment (a prompt prefilled in two passes is not bit-identical to
one pass), so every arm, generated here or alone, reused or not, takes the same cut `declared_split`, and the
baseline key includes it: a baseline made with another cut is never reused. For one edge rule the cut is the
edit's first source, the same at every scale, so one baseline serves every scale. `run_arms` generates what each
arm's log lacks with `generate_arms` (each batch's prompt prefix computed once), flushing each log per batch; a
resumed arm only generates its missing prompts, in the batches an uninterrupted run builds. With a `FirstLogits`
sink it also collects every arm's next-token logits at the last prompt token (the first generation step's) plus
the unhooked model's from the same shared prefix, so `first_logit_figures` gives the identity and KL checks with
no extra full forward pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from steerkit.core.arms import FirstLogits, generate_arms, shared_prefix
from steerkit.core.batching import batch_order, encode_prompts
from steerkit.core.checks import IDENTITY_KEY, max_abs_diff
from steerkit.core.generation import Generation, GenerationConfig, Prompt
from steerkit.core.models import LoadedModel
from steerkit.core.records import Record, RecordLog
from steerkit.metrics import kl_divergence

UNHOOKED = "unhooked"


def declared_split(loaded: LoadedModel, prompts: Sequence[Prompt], *edits: Any, chat: bool = False) -> dict[str, int]:
    """The experiment's prefill cut per prompt id: the earliest position any of its arms' edits (the baseline's
    scale 1.0 and every steered scale; for one edge rule the same at every scale) changes."""
    return shared_prefix(loaded, prompts, {str(i): [edit] for i, edit in enumerate(edits)}, chat)


def baseline_key(
    loaded: LoadedModel,
    corpus_sha: str,
    prompt_ids: Sequence[str],
    cfg: GenerationConfig,
    code_version: str,
    split: Mapping[str, int],
) -> str:
    """Same model, corpus, prompts (by id: a split and a limit can pick different prompts of one size), generation
    parameters, prefill cut and code => the same baseline (greedy is deterministic)."""
    facts: dict[str, Any] = {"model": loaded.describe(), "corpus": corpus_sha, "prompts": sorted(prompt_ids)}
    facts |= {"gen": cfg.to_dict(), "code": code_version, "prefill_split": sorted(split.items())}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def _writer(logs: Mapping[str, RecordLog], n: int, batch_size: int) -> Callable[[str, Generation], None]:
    """An `on_result` that appends each arm's records to its log and flushes it after each batch of `n` prompts."""
    counts = dict.fromkeys(logs, 0)

    def on_result(arm: str, gen: Generation) -> None:
        logs[arm].append(gen.to_dict())
        counts[arm] += 1
        if counts[arm] % batch_size == 0 or counts[arm] == n:
            logs[arm].flush()

    return on_result


def run_arms(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    arms: Mapping[str, Sequence[Any]],
    cfg: GenerationConfig,
    logs: Mapping[str, RecordLog],
    split: Mapping[str, int],
    first: FirstLogits | None = None,
) -> dict[str, list[Record]]:
    """Generate, for each arm with a log, the prompts its log lacks, sharing each batch's prefix (cut at `split`).

    Args:
        arms: arm name -> interventions; arms without a log are not generated (with `first`: logits only).
        logs: arm name -> its record log (a resumed log holds what was done; flushed per batch).
        first: if given, receives every arm's and the unhooked model's (`UNHOOKED`) next-token logits at the
            last prompt token for every prompt.

    Returns:
        Arm name (those with a log) -> every record, in `prompts` order.
    """
    done = {name: {r["prompt_id"] for r in log.records} for name, log in logs.items()}
    encoded = encode_prompts(loaded, prompts, cfg.chat)
    groups: dict[tuple[str, ...], list[Prompt]] = {}  # the arms a prompt still needs -> those prompts, batch order
    for i in batch_order(encoded):
        todo = tuple(name for name in logs if prompts[i].id not in done[name])
        groups.setdefault(todo, []).append(prompts[i])
    for names, group in groups.items():
        probes = {} if first is None else {UNHOOKED: [], **{k: v for k, v in arms.items() if k not in names}}
        if not names and not probes:
            continue
        todo_logs = {name: logs[name] for name in names}
        generate_arms(
            loaded, group, {name: arms[name] for name in names}, config=cfg, split=split, logit_arms=probes,
            on_first_logits=first, on_result=_writer(todo_logs, len(group), cfg.batch_size), progress=bool(names),
        )  # fmt: skip
        for log in todo_logs.values():
            log.flush()
    order = {p.id: i for i, p in enumerate(prompts)}
    return {name: sorted(log.records, key=lambda r: order[r["prompt_id"]]) for name, log in logs.items()}


def run_arm(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    edit: Any,
    cfg: GenerationConfig,
    log: RecordLog,
    split: Mapping[str, int],
) -> list[Record]:
    """One arm: generate the prompts `log` lacks (cut at `split`), flushing per batch; every record, in order."""
    return run_arms(loaded, prompts, {"arm": [edit]}, cfg, {"arm": log}, split)["arm"]


def first_logit_figures(first: FirstLogits, ids: Sequence[str], identity: str, steered: str) -> dict[str, float]:
    """Max |logit diff| unhooked vs the `identity` arm (must be 0), and KL(identity || steered), at the last
    prompt token, from the logits generation handed back (joined by prompt id)."""
    ident = first.stack(identity, ids)
    kl = kl_divergence(ident, first.stack(steered, ids))
    diff = max_abs_diff(first.stack(UNHOOKED, ids), ident)
    return {IDENTITY_KEY: diff, "kl_last_token_mean": float(kl.mean()), "kl_last_token_max": float(kl.max())}


def identity_and_kl(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    edit_1: Any,
    edit_s: Any,
    chat: bool,
    batch: int,
    split: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """`first_logit_figures` without generating: the unhooked, scale-1.0 and steered next-token logits from one
    shared prefix per batch (cut at `split`, default `declared_split`), each arm running only its prompt suffix."""
    cut = split if split is not None else declared_split(loaded, prompts, edit_1, edit_s, chat=chat)
    first = FirstLogits()
    probes = {UNHOOKED: [], "baseline": [edit_1], "steered": [edit_s]}
    generate_arms(
        loaded, prompts, {}, logit_arms=probes, on_first_logits=first, split=cut, chat=chat, batch_size=batch,
        progress=False,
    )  # fmt: skip
    return first_logit_figures(first, [p.id for p in prompts], "baseline", "steered")


def baseline_and_steered(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    edit_1: Any,
    edit_s: Any,
    cfg: GenerationConfig,
    logs: Mapping[str, RecordLog],
    split: Mapping[str, int],
) -> tuple[dict[str, list[Record]], dict[str, float]]:
    """generate_n50's arms (those in `logs`; a reused baseline has none) and `first_logit_figures` of the same
    prefill: the identity (unhooked vs scale 1.0) and KL(baseline || steered) at the last prompt token."""
    first = FirstLogits()
    got = run_arms(loaded, prompts, {"baseline": [edit_1], "steered": [edit_s]}, cfg, logs, split, first)
    return got, first_logit_figures(first, [p.id for p in prompts], "baseline", "steered")
