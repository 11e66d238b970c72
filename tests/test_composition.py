"""Interventions compose: a flat list, nested `steer()` contexts in either order, and a batch bound by `generate`
or by `steer(prompts=...)` give identical tokens and logits (or the form is refused).

The independent path for each combination is the flat list `generate(interventions=[A, B])` (one context, one
state); every other form must reproduce it exactly. Order matters only where the edits do not commute (a `target`
and a `scale` on overlapping edges): there a nesting is compared with the flat list in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
import torch

from steerkit.attention.edge_rules import attention_scale, edge_rule
from steerkit.core.generation import Prompt, encode_prompts, generate, next_token_logits
from steerkit.core.models import LoadedModel
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, AttentionEdit, ResidualAdd, steer
from steerkit.interventions.patching import AttentionRowPatch

Factory = Callable[[LoadedModel], Any]


def _prompts(n50: Any, k: int = 4) -> list[Prompt]:
    return [cp.as_prompt() for cp in list(n50.prompts)[:k]]


def _edit(op: str, layer: int, value: float) -> Factory:
    def make(lm: LoadedModel) -> AttentionEdit:
        sources, targets = edge_rule("signature_to_doctest")
        return AttentionEdit(layer, sources, targets, op, value)  # type: ignore[arg-type]

    return make


def _capture(layer: int) -> Factory:
    return lambda lm: AttentionCapture(layer=layer)


def _residual(layer: int) -> Factory:
    def make(lm: LoadedModel) -> ResidualAdd:
        vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(layer))
        return ResidualAdd(layer, vec, coef=4.0 / float(vec.norm()))

    return make


def _row_patch(layer: int) -> Factory:
    """Rows of query 8 attending to keys 0-1 (inside every n50 prompt), set to fixed weights."""

    def make(lm: LoadedModel) -> AttentionRowPatch:
        values = torch.full((lm.n_heads, 1, 2), 0.3)
        return AttentionRowPatch(layer, queries=(8,), keys=(0, 1), values=values)

    return make


# (name, A, B, commutes): each pair on one layer and on two layers.
def _combos(a: int, b: int) -> list[tuple[str, Factory, Factory, bool]]:
    out = []
    for la, lb, where in ((a, a, "same"), (a, b, "diff")):
        out += [
            (f"capture+scale/{where}", _capture(la), _edit("scale", lb, 6.0), True),
            (f"capture+knockout/{where}", _capture(la), _edit("knockout", lb, 1.0), True),
            (f"scale+target/{where}", _edit("scale", la, 3.0), _edit("target", lb, 0.4), la != lb),
            (f"rowpatch+capture/{where}", _row_patch(la), _capture(lb), True),
            (f"residual+scale/{where}", _residual(la), _edit("scale", lb, 6.0), True),
        ]
    return out


def _generate_forms(lm: LoadedModel, prompts: list[Prompt], a: Factory, b: Factory) -> dict[str, list[tuple]]:
    """Token ids per form, each form with fresh intervention objects (captures accumulate records)."""
    kw: dict[str, Any] = {"max_new_tokens": 6, "batch_size": 4, "progress": False}

    def run(outer: list[Factory], inner: list[Factory], nest_inner: bool = False) -> list[tuple]:
        with ExitStack() as stack:
            for f in outer:
                stack.enter_context(steer(lm, f(lm)))
            ivs = [f(lm) for f in inner]
            if nest_inner:
                for iv in ivs:
                    stack.enter_context(steer(lm, iv))
                ivs = []
            return [g.token_ids for g in generate(lm, prompts, interventions=ivs, **kw)]

    return {
        "flat_ab": run([], [a, b]),
        "flat_ba": run([], [b, a]),
        "a_outer": run([a], [b]),
        "b_outer": run([b], [a]),
        "both_nested_ab": run([a], [b], nest_inner=True),
        "both_nested_ba": run([b], [a], nest_inner=True),
    }


def _logit_forms(lm: LoadedModel, prompts: list[Prompt], a: Factory, b: Factory) -> dict[str, torch.Tensor]:
    """Next-token logits: batched by `next_token_logits`, and per prompt with the batch bound by steer(prompts)."""

    def batched(outer: list[Factory], inner: list[Factory]) -> torch.Tensor:
        with ExitStack() as stack:
            for f in outer:
                stack.enter_context(steer(lm, f(lm)))
            return next_token_logits(lm, prompts, interventions=[f(lm) for f in inner], batch_size=4)

    def bound(contexts: list[list[Factory]], bind_at: int) -> torch.Tensor:
        rows = []
        for enc in encode_prompts(lm, prompts, chat=False):
            with torch.inference_mode(), ExitStack() as stack:
                for i, group in enumerate(contexts):
                    at = [enc] if i == bind_at else None
                    stack.enter_context(steer(lm, *[f(lm) for f in group], prompts=at))
                rows.append(lm.model(torch.tensor([enc.ids])).logits[0, -1].float())
        return torch.stack(rows)

    return {
        "flat_ab": batched([], [a, b]),
        "a_outer": batched([a], [b]),
        "b_outer": batched([b], [a]),
        "flat_ba": batched([], [b, a]),
        "bound_flat_ab": bound([[a, b]], 0),
        "bound_outer_a": bound([[a], [b]], 0),
        "bound_inner_b": bound([[a], [b]], 1),
        "bound_flat_ba": bound([[b, a]], 0),
        "bound_inner_a": bound([[b], [a]], 1),
    }


def _assert_forms(forms: dict[str, Any], commutes: bool, same: Callable[[Any, Any], bool]) -> None:
    ab = [k for k in forms if k.endswith("ab") or k in ("a_outer", "bound_outer_a", "bound_inner_b")]
    ba = [k for k in forms if k not in ab]
    groups = [ab + ba] if commutes else [ab, ba]
    for group in groups:
        ref = group[0]
        for name in group[1:]:
            assert same(forms[ref], forms[name]), f"{name} differs from {ref}"


@pytest.mark.parametrize(("arch", "where"), [("llama", ""), ("gemma3", "/same")])
def test_compositions_agree_on_tiny_models(tiny, n50, arch, where):
    """Llama: every combination on one layer and on two; Gemma 3 (sliding window, soft-capping): one layer."""
    lm = tiny(arch)
    prompts = _prompts(n50)
    for name, a, b, commutes in [c for c in _combos(1, 2) if c[0].endswith(where)]:
        gen = _generate_forms(lm, prompts, a, b)
        _assert_forms(gen, commutes, lambda x, y: x == y)
        logits = _logit_forms(lm, prompts, a, b)
        batched = {k: v for k, v in logits.items() if not k.startswith("bound")}
        single = {k: v for k, v in logits.items() if k.startswith("bound")}
        _assert_forms(batched, commutes, torch.equal)
        _assert_forms(single, commutes, torch.equal)
        # the edit does something in this combination (otherwise agreement would prove nothing)
        plain = next_token_logits(lm, prompts, batch_size=4)
        if any(kind in name for kind in ("scale", "knockout", "residual")):  # row patches: test_patching
            assert not torch.equal(plain, batched["flat_ab"]), name


def test_order_matters_only_where_edits_do_not_commute(tiny, n50):
    """Edits on one layer apply in attach order (outer context first): target then scale != scale then target,
    two scales multiply (3 then 2 == 6)."""
    lm, prompts = tiny("llama"), _prompts(n50)
    sc, tg = _edit("scale", 1, 3.0), _edit("target", 1, 0.4)
    st = next_token_logits(lm, prompts, interventions=[sc(lm), tg(lm)])
    ts = next_token_logits(lm, prompts, interventions=[tg(lm), sc(lm)])
    assert not torch.equal(st, ts)
    six = next_token_logits(lm, prompts, interventions=[_edit("scale", 1, 6.0)(lm)])
    three_two = next_token_logits(lm, prompts, interventions=[_edit("scale", 1, 3.0)(lm), _edit("scale", 1, 2.0)(lm)])
    torch.testing.assert_close(three_two, six, rtol=1e-5, atol=1e-5)


def test_capture_sees_edited_weights_whatever_the_order(tiny, n50):
    lm, prompts = tiny("llama"), _prompts(n50, 1)
    (enc,) = encode_prompts(lm, prompts, chat=False)
    seen = []
    for order in ("capture_first", "edit_first"):
        cap, edit = AttentionCapture(layer=1), attention_scale("signature_to_doctest", 1, 5.0)
        ivs = [cap, edit] if order == "capture_first" else [edit, cap]
        with torch.inference_mode(), steer(lm, ivs[0], prompts=[enc]), steer(lm, ivs[1]):
            lm.model(torch.tensor([enc.ids]))
        seen.append(cap.records[1][0].weights)
    with torch.inference_mode(), steer(lm, (cap := AttentionCapture(layer=1)), prompts=[enc]):
        lm.model(torch.tensor([enc.ids]))
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], cap.records[1][0].weights)


def test_outer_binding_is_restored_after_inner_generate(tiny, n50):
    lm, prompts = tiny("llama"), _prompts(n50)
    encoded = encode_prompts(lm, prompts[:1], chat=False)
    edit = attention_scale("signature_to_doctest", 1, 4.0)
    with torch.inference_mode(), steer(lm, edit, prompts=encoded) as state:
        before = lm.model(torch.tensor([encoded[0].ids])).logits
        generate(lm, prompts, interventions=[AttentionCapture(layer=2)], max_new_tokens=3, progress=False)
        assert state.prompts == encoded and len(state.interventions) == 1
        after = lm.model(torch.tensor([encoded[0].ids])).logits
    assert torch.equal(before, after)
    assert not hasattr(lm.model, "_steerkit_state")


def test_contexts_closed_out_of_order_are_refused(tiny):
    lm = tiny("llama")
    outer, inner = steer(lm, AttentionCapture(layer=1)), steer(lm, AttentionCapture(layer=2))
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(SteerkitError, match="reverse order"):
        outer.__exit__(None, None, None)
    with contextlib.suppress(SteerkitError):  # the inner context is already torn down; close its generator
        inner.__exit__(None, None, None)


@pytest.mark.embedded
def test_issue_example_outer_capture_does_not_move_inner_edit(embedded, n50):
    """The reported case: an outer capture around generate() changed the steered tokens."""
    lm, prompts = embedded, _prompts(n50)
    edit = attention_scale("signature_to_doctest", 18, 8.0)
    kw: dict[str, Any] = {"max_new_tokens": 24, "batch_size": 4, "progress": False}
    a = generate(lm, prompts, interventions=[edit], **kw)
    with steer(lm, AttentionCapture(layer=18)):
        b = generate(lm, prompts, interventions=[edit], **kw)
    c = generate(lm, prompts, interventions=[AttentionCapture(layer=18), edit], **kw)
    plain = generate(lm, prompts, **kw)
    assert [g.token_ids for g in a] == [g.token_ids for g in b] == [g.token_ids for g in c]
    assert [g.token_ids for g in a] != [g.token_ids for g in plain]  # the edit changes something


@pytest.mark.embedded
def test_compositions_agree_on_the_embedded_model(embedded, n50):
    lm, prompts = embedded, _prompts(n50)
    for _name, a, b, commutes in [c for c in _combos(12, 18) if c[0] == "residual+scale/diff"]:
        _assert_forms(_generate_forms(lm, prompts, a, b), commutes, lambda x, y: x == y)
