"""generate_arms against each arm run alone: token-identical (greedy and sampled), while the shared prompt prefix
is computed once per batch; the identity arm equals the unhooked one on the shared numeric path."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from steerkit.attention.edge_rules import attention_scale
from steerkit.core.arms import generate_arms, shared_prefix
from steerkit.core.generation import generate
from steerkit.core.positions import GENERATED
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, ResidualAdd, steer


def _arms(lm: Any, layer: int) -> dict[str, list[Any]]:
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    return {
        "unhooked": [],
        "identity": [attention_scale("signature_to_doctest", layer, 1.0)],
        "scale_2": [attention_scale("signature_to_doctest", layer, 2.0)],
        "scale_6": [attention_scale("signature_to_doctest", layer, 6.0)],
        "residual": [ResidualAdd(layer, vec, coef=3.0 / float(vec.norm()), positions=GENERATED)],
    }


def _tokens(gens: list[Any]) -> list[tuple[int, ...]]:
    return [g.token_ids for g in gens]


class _CountTokens:
    """Counts prompt+generated token positions the model processes (a forward pre-hook on the embeddings)."""

    def __init__(self, lm: Any) -> None:
        self.n = 0
        self.handle = lm.model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, out: torch.Tensor) -> None:
        self.n += out.shape[0] * out.shape[1]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_shared_prefix_arms_equal_arms_alone(tiny, n50, temperature):
    lm = tiny("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:6]]
    arms = _arms(lm, 1)
    kw: dict[str, Any] = {"max_new_tokens": 8, "batch_size": 4, "temperature": temperature, "seed": 3}
    split = shared_prefix(lm, prompts, arms)
    counter = _CountTokens(lm)
    shared = generate_arms(lm, prompts, arms, progress=False, **kw)
    n_shared, counter.n = counter.n, 0
    alone = {
        k: generate(lm, prompts, interventions=v, prefill_split=split, progress=False, **kw) for k, v in arms.items()
    }
    n_alone = counter.n
    counter.handle.remove()
    for name in arms:
        assert _tokens(shared[name]) == _tokens(alone[name]), name
    assert _tokens(shared["identity"]) == _tokens(shared["unhooked"])
    differ = [k for k in arms if _tokens(shared[k]) != _tokens(shared["unhooked"])]
    assert differ  # some arm changes the output, so agreement with the arm run alone is informative
    assert n_shared < n_alone  # the prefix was computed once per batch, not once per arm


def test_split_is_where_the_edit_starts_and_identity_logits_are_exact(tiny, n50):
    lm = tiny("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:3]]
    arms = {"identity": [attention_scale("signature_to_doctest", 1, 1.0)], "unhooked": []}
    split = shared_prefix(lm, prompts, arms)
    from steerkit.core.generation import encode_prompts

    for enc in encode_prompts(lm, prompts, chat=False):
        sources = arms["identity"][0].sources.resolve(enc)
        assert split[enc.id] == sources.first < len(enc)
    # residual edits on generated tokens only: the whole prompt is shared
    vec = torch.ones(lm.d_model)
    gen_only = shared_prefix(lm, prompts, {"r": [ResidualAdd(1, vec, positions=GENERATED)]})
    assert all(gen_only[e.id] == len(e) for e in encode_prompts(lm, prompts, chat=False))
    # a capture observes the prefix: nothing can be shared
    assert set(shared_prefix(lm, prompts, {"c": [AttentionCapture(layer=1)]}).values()) == {0}


def test_a_split_after_the_first_edited_position_is_refused(tiny, n50):
    lm = tiny("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:2]]
    late = {p.id: 10_000 for p in prompts}
    with pytest.raises(SteerkitError, match="prefill split at position"):
        generate(lm, prompts, interventions=[attention_scale("signature_to_doctest", 1, 3.0)], prefill_split=late,
                 max_new_tokens=2, progress=False)  # fmt: skip


def test_outer_context_is_part_of_every_arm(tiny, n50):
    lm = tiny("llama")
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:4]]
    arms = {"a": [attention_scale("signature_to_doctest", 1, 3.0)], "b": []}
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    outer = ResidualAdd(2, vec, coef=2.0 / float(vec.norm()), positions=GENERATED)
    with steer(lm, outer):
        shared = generate_arms(lm, prompts, arms, max_new_tokens=6, progress=False)
    flat = generate(lm, prompts, interventions=[outer, *arms["a"]], max_new_tokens=6, progress=False,
                    prefill_split=shared_prefix(lm, prompts, {"a": [outer, *arms["a"]], "b": [outer]}))  # fmt: skip
    assert _tokens(shared["a"]) == _tokens(flat)


@pytest.mark.embedded
def test_shared_prefix_on_the_embedded_model(embedded, n50):
    prompts = [cp.as_prompt() for cp in list(n50.prompts)[:4]]
    arms = {k: v for k, v in _arms(embedded, 18).items() if k in ("identity", "scale_6", "unhooked")}
    split = shared_prefix(embedded, prompts, arms)
    shared = generate_arms(embedded, prompts, arms, max_new_tokens=12, batch_size=4, progress=False)
    for name, ivs in arms.items():
        alone = generate(embedded, prompts, interventions=ivs, prefill_split=split, max_new_tokens=12, batch_size=4,
                         progress=False)  # fmt: skip
        assert _tokens(shared[name]) == _tokens(alone), name
    assert _tokens(shared["identity"]) == _tokens(shared["unhooked"])
