"""Arms together in one batch (`steerkit.core.arm_batches`) against the same arms run one after another and each
arm run alone: token-identical (greedy, sampled, rows stopping early), first-step logits bit-identical (each arm's
first step runs in its own shapes), identity arm == unhooked to the bit, fewer forward passes; arms the batch cannot
keep apart (a knockout, a capture) run separately under `auto`, and `together` refuses them naming the
intervention."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from steerkit.attention.edge_rules import attention_scale, edge_rule
from steerkit.core.arm_batches import arms_together
from steerkit.core.arms import FirstLogits, generate_arms, shared_prefix
from steerkit.core.generation import generate
from steerkit.core.positions import GENERATED
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, AttentionEdit, DirectionAblation, ResidualAdd

RULE = "signature_to_doctest"


def _arms(lm: Any, layer: int) -> dict[str, list[Any]]:
    gen = torch.Generator().manual_seed(0)
    vec, direction = torch.randn(lm.d_model, generator=gen), torch.randn(lm.d_model, generator=gen)
    sources, targets = edge_rule(RULE)
    return {
        "unhooked": [],
        "identity": [attention_scale(RULE, layer, 1.0)],
        "scale_4": [attention_scale(RULE, layer, 4.0)],
        "target": [AttentionEdit(layer, sources, targets, "target", 0.6)],
        "residual": [ResidualAdd(layer, vec, coef=12.0 / float(vec.norm()), positions=GENERATED)],
        "ablate_and_scale": [DirectionAblation(layer, direction, alpha=2.0), attention_scale(RULE, layer, 0.25)],
    }


def _tokens(gens: list[Any]) -> list[tuple[int, ...]]:
    return [g.token_ids for g in gens]


class _CountPasses:
    """Counts forward passes of the model (a pre-hook on the embeddings)."""

    def __init__(self, lm: Any) -> None:
        self.n = 0
        self.handle = lm.model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.n += 1


def _run(lm: Any, prompts: list[Any], arms: dict[str, list[Any]], mode: str, **kw: Any) -> tuple[Any, Any, int]:
    first, counter = FirstLogits(), _CountPasses(lm)
    probes = {"probe_unhooked": [], "probe_identity": [attention_scale(RULE, 1, 1.0)]}
    try:
        out = generate_arms(lm, prompts, arms, logit_arms=probes, on_first_logits=first, batch_arms=mode,
                            progress=False, **kw)  # fmt: skip
    finally:
        counter.handle.remove()
    return out, first, counter.n


# tiny gpt2 samples from a near-flat distribution: no arm changes its sampled tokens, so it is checked greedy only
@pytest.mark.parametrize(("arch", "temperature"), [("llama", 0.0), ("llama", 0.9), ("gemma3", 0.0), ("gemma3", 0.9),
                                                   ("gpt2", 0.0)])  # fmt: skip
def test_arms_together_equal_arms_apart_and_alone(sharp, n50, arch, temperature):
    lm = sharp(arch)
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:6]]
    arms = _arms(lm, 1)
    kw: dict[str, Any] = {"max_new_tokens": 8, "batch_size": 4, "temperature": temperature, "seed": 5}
    together, first_t, n_together = _run(lm, prompts, arms, "together", **kw)
    apart, first_a, n_apart = _run(lm, prompts, arms, "separate", **kw)
    split = shared_prefix(lm, prompts, {**arms, "probe": [attention_scale(RULE, 1, 1.0)]})
    for name, ivs in arms.items():
        alone = generate(lm, prompts, interventions=ivs, prefill_split=split, progress=False, **kw)
        assert _tokens(together[name]) == _tokens(apart[name]) == _tokens(alone), name
        assert [g.prompt_id for g in together[name]] == [p.id for p in prompts]
    assert [k for k in arms if _tokens(together[k]) != _tokens(together["unhooked"])]  # the arms differ
    ids = [p.id for p in prompts]
    for arm in [*arms, "probe_unhooked", "probe_identity"]:  # each arm's first step runs in its own shapes
        assert torch.equal(first_t.stack(arm, ids), first_a.stack(arm, ids)), arm
    assert torch.equal(first_t.stack("probe_identity", ids), first_t.stack("probe_unhooked", ids))
    assert torch.equal(first_t.stack("identity", ids), first_t.stack("unhooked", ids))
    assert not torch.equal(first_t.stack("scale_4", ids), first_t.stack("unhooked", ids))
    # per batch of prompts: the shared prefill, each arm's first step, then one decode for all arms
    assert n_together <= 2 * (1 + len(arms) + 2 + kw["max_new_tokens"] - 1) < n_apart / 3


def test_rows_of_other_arms_stopping_early_do_not_disturb_an_arm(sharp, n50):
    lm = sharp("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:5]]
    arms = _arms(lm, 1)
    loose = generate_arms(lm, prompts, arms, max_new_tokens=10, batch_size=5, progress=False)
    found = sorted({c for g in loose["unhooked"] for c in g.text if c.isprintable()})
    stop = next(c for c in found if 0 < sum(c in g.text for g in loose["unhooked"]) < len(prompts))
    kw: dict[str, Any] = {"max_new_tokens": 10, "batch_size": 5, "stop_strings": (stop,)}
    together = generate_arms(lm, prompts, arms, batch_arms="together", progress=False, **kw)
    apart = generate_arms(lm, prompts, arms, batch_arms="separate", progress=False, **kw)
    reasons = {g.stop_reason for gens in together.values() for g in gens}
    assert {"stop_string", "max_new_tokens"} <= reasons  # rows left the batch at different steps
    for name in arms:
        assert _tokens(together[name]) == _tokens(apart[name]), name
        assert [g.stop_reason for g in together[name]] == [g.stop_reason for g in apart[name]], name


def test_auto_keeps_arms_apart_when_an_intervention_touches_every_row(tiny, n50):
    lm = tiny("llama")
    sources, targets = edge_rule(RULE)
    knockout = AttentionEdit(1, sources, targets, "knockout")
    assert arms_together(lm, [[attention_scale(RULE, 1, 2.0)], []], "auto")
    assert not arms_together(lm, [[knockout], []], "auto")
    assert not arms_together(lm, [[AttentionCapture(layer=1)], []], "auto")
    assert not arms_together(lm, [[attention_scale(RULE, 1, 2.0)], []], "separate")
    with pytest.raises(SteerkitError, match="AttentionCapture does not"):
        arms_together(lm, [[AttentionCapture(layer=1)], []], "together")
    with pytest.raises(SteerkitError, match="unknown batch_arms 'sideways'"):
        arms_together(lm, [[], []], "sideways")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:3]]
    arms = {"knockout": [knockout], "unhooked": []}
    auto = generate_arms(lm, prompts, arms, max_new_tokens=4, progress=False)
    alone = generate(lm, prompts, interventions=[knockout], max_new_tokens=4, progress=False,
                     prefill_split=shared_prefix(lm, prompts, arms))  # fmt: skip
    assert _tokens(auto["knockout"]) == _tokens(alone)


@pytest.mark.embedded
def test_arms_together_on_the_embedded_model(embedded, n50):
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:4]]
    arms = {k: v for k, v in _arms(embedded, 18).items() if k in ("unhooked", "identity", "scale_4", "residual")}
    kw: dict[str, Any] = {"max_new_tokens": 12, "batch_size": 4}
    together, first_t, _ = _run(embedded, prompts, arms, "together", **kw)
    apart, first_a, _ = _run(embedded, prompts, arms, "separate", **kw)
    ids = [p.id for p in prompts]
    for name in arms:
        assert _tokens(together[name]) == _tokens(apart[name]), name
        assert torch.equal(first_t.stack(name, ids), first_a.stack(name, ids)), name  # 4 rows: one kernel
    assert torch.equal(first_t.stack("identity", ids), first_t.stack("unhooked", ids))
