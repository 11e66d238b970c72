"""The n50 arms on one declared prefill cut: identity and KL from the shared prefill equal hand-computed passes,
a resumed arm generates only what it lacks, the baseline key holds the cut, and the sweep's one-pass arms equal
the per-trial path."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from steerkit.attention import n50 as n50_module
from steerkit.attention.edge_rules import attention_scale
from steerkit.attention.n50_arms import (
    baseline_and_steered,
    baseline_key,
    declared_split,
    first_logit_figures,
    identity_and_kl,
    run_arms,
)
from steerkit.core.arms import FirstLogits
from steerkit.core.batching import _Batch, batch_order, encode_prompts, padded_split
from steerkit.core.generation import GenerationConfig, generate
from steerkit.core.records import MemoryLog
from steerkit.interventions import steer
from steerkit.metrics import kl_divergence

LAYER, RULE = 2, "signature_to_doctest"
CFG = GenerationConfig(max_new_tokens=6, batch_size=2)


def _hand_logits(lm: Any, prompts: list[Any], ivs: list[Any], split: dict[str, int], batch: int) -> torch.Tensor:
    """Next-token logits `[n, vocab]` by hand: per batch (longest first), a fresh cache, the prefix `[0, cut)`
    then the suffix `[cut, width)` under `ivs`, no generation code involved."""
    encoded = encode_prompts(lm, prompts, chat=False)
    order, rows = batch_order(encoded), {}
    with torch.inference_mode():
        for b0 in range(0, len(order), batch):
            b = _Batch.build([encoded[i] for i in order[b0 : b0 + batch]], lm.tokenizer.pad_token_id, lm.device)
            cut, cache = padded_split(b, split), DynamicCache(config=lm.model.config)
            assert cut > 0
            with steer(lm, *ivs) as state:
                state.bind(b.prompts, b.pad)
                for lo, hi in ((0, cut), (cut, b.ids.shape[1])):
                    state.query_start = lo
                    out = lm.model(input_ids=b.ids[:, lo:hi], attention_mask=b.attn[:, :hi],
                                   position_ids=b.pos[:, lo:hi], cache=cache, use_cache=True)  # fmt: skip
            rows.update({p.id: out.logits[k, -1].float() for k, p in enumerate(b.prompts)})
    return torch.stack([rows[p.id] for p in prompts])


def _edits(scale: float = 3.0) -> tuple[Any, Any]:
    return attention_scale(RULE, LAYER, 1.0), attention_scale(RULE, LAYER, scale)


def test_identity_and_kl_from_the_shared_prefill_equal_hand_passes(tiny, n50):
    lm = tiny("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:5]]
    edit_1, edit_3 = _edits()
    split = declared_split(lm, prompts, edit_1, edit_3, chat=False)
    assert all(0 < v < 10_000 for v in split.values())  # a real cut inside the prompt
    logs = {"baseline": MemoryLog(), "steered": MemoryLog()}
    arms, figures = baseline_and_steered(lm, prompts, edit_1, edit_3, CFG, logs, split)
    plain, ident, steered = (_hand_logits(lm, prompts, ivs, split, 2) for ivs in ([], [edit_1], [edit_3]))
    assert figures["identity_max_abs_logit_diff"] == float((plain - ident).abs().max()) == 0.0
    kl = kl_divergence(ident, steered)
    assert abs(figures["kl_last_token_mean"] - float(kl.mean())) <= 1e-6 and float(kl.max()) > 0  # informative
    assert abs(figures["kl_last_token_max"] - float(kl.max())) <= 1e-6
    # the logit-only path (no generation) gives the same figures, to the bit
    assert identity_and_kl(lm, prompts, edit_1, edit_3, False, 2, split) == figures
    # and the generated arms are those each arm gives alone with the same cut
    for name, edit in (("baseline", edit_1), ("steered", edit_3)):
        alone = generate(lm, prompts, interventions=[edit], prefill_split=split, config=CFG, progress=False)
        assert [r["token_ids"] for r in arms[name]] == [list(g.token_ids) for g in alone]


def test_a_planted_non_identity_is_caught(tiny, n50):
    lm = tiny("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:3]]
    edit_1, edit_3 = _edits()
    tampered = attention_scale(RULE, LAYER, 1.0001)
    split = declared_split(lm, prompts, edit_1, edit_3, chat=False)
    figures = identity_and_kl(lm, prompts, tampered, edit_3, False, 2, split)
    assert figures["identity_max_abs_logit_diff"] > 0.0


def test_a_resumed_arm_generates_only_what_it_lacks(tiny, n50):
    lm = tiny("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:6]]
    edit_1, edit_3 = _edits()
    split = declared_split(lm, prompts, edit_1, edit_3, chat=False)
    full, figures = baseline_and_steered(lm, prompts, edit_1, edit_3, CFG, {"baseline": MemoryLog(),
                                         "steered": MemoryLog()}, split)  # fmt: skip
    order = [prompts[i].id for i in batch_order(encode_prompts(lm, prompts, chat=False))]
    by_id = {arm: {r["prompt_id"]: r for r in recs} for arm, recs in full.items()}
    logs = {"baseline": MemoryLog(), "steered": MemoryLog()}  # killed: baseline 2 batches done, steered 1
    for arm, n_done in (("baseline", 4), ("steered", 2)):
        for pid in order[:n_done]:
            logs[arm].append(by_id[arm][pid])
    first = FirstLogits()
    resumed = run_arms(lm, prompts, {"baseline": [edit_1], "steered": [edit_3]}, CFG, logs, split, first)
    assert resumed == full
    assert [r["prompt_id"] for r in logs["steered"].records][:2] == order[:2] and len(logs["steered"].records) == 6
    assert len(logs["baseline"].records) == 6  # nothing generated twice
    assert first_logit_figures(first, [p.id for p in prompts], "baseline", "steered") == figures


def test_the_baseline_key_holds_the_cut_and_the_cut_is_scale_independent(tiny, n50):
    lm = tiny("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:4]]
    edit_1 = attention_scale(RULE, LAYER, 1.0)
    cuts = [declared_split(lm, prompts, edit_1, attention_scale(RULE, LAYER, s), chat=False) for s in (1.0, 2, 6)]
    assert cuts[0] == cuts[1] == cuts[2]
    ids = [p.id for p in prompts]
    key = baseline_key(lm, "sha", ids, CFG, "v1", cuts[0])
    assert key == baseline_key(lm, "sha", ids, CFG, "v1", dict(cuts[0]))
    other = {pid: 0 for pid in cuts[0]}  # no cut: another numeric path, never the same baseline
    assert key != baseline_key(lm, "sha", ids, CFG, "v1", other)


class _Trial:
    """The part of an Optuna trial `NewTestGain` uses, at a fixed scale."""

    def __init__(self, scale: float) -> None:
        self.scale, self.attrs = scale, {}

    def suggest_float(self, name: str, low: float, high: float) -> float:
        return self.scale

    def set_user_attr(self, key: str, value: Any) -> None:
        self.attrs[key] = value


def _sweep(lm: Any, corpus_prompts: list[Any], grid: list[float], pregenerate: bool) -> dict[float, Any]:
    seen: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    record = lambda m, r: seen.append((m, r))  # noqa: E731
    objective = n50_module.NewTestGain(lm, corpus_prompts, CFG, LAYER, RULE, grid, MemoryLog, record)
    if pregenerate:
        objective.pregenerate(MemoryLog())
    else:  # the per-trial path: the baseline alone, then each trial generates its arm and runs its own checks
        objective.base = n50_module.run_arm(lm, objective.prompts, objective.edit_1, CFG, MemoryLog(), objective.split)
    values = {s: objective(_Trial(s)) for s in grid}
    return {s: (values[s], seen[k][0], seen[k][1]) for k, s in enumerate(grid)}


def test_the_sweeps_one_pass_arms_equal_the_per_trial_path(tiny, n50):
    lm = tiny("llama")
    corpus_prompts, grid = list(n50.prompts)[:4], [1.0, 3.0, 6.0]
    shared, per_trial = _sweep(lm, corpus_prompts, grid, True), _sweep(lm, corpus_prompts, grid, False)
    for s in grid:
        assert shared[s][2] == per_trial[s][2], s  # the trial tables: every output, token count and flag
        assert shared[s][1] == per_trial[s][1], s  # the metrics: identity, KL (same batches, same cut), dose
        assert shared[s][0] == per_trial[s][0]
    assert shared[1.0][1]["identity_max_abs_logit_diff"] == 0.0 and shared[6.0][1]["kl_last_token_mean"] > 0
    assert any(not r["identical"] for r in shared[6.0][2])  # scale 6 changes some output: the comparison bites
