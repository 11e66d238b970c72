"""Tests for steerkit.interventions on tiny random models, each against an independent path: the unhooked model,
hand-written hooks, `output_hidden_states=True`, closed-form values, and a reference attention function written
here (eager weights edited directly on the weight matrix)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from steerkit.attention.edge_rules import DOC_TEST, SIGNATURE, TEST_MARKER
from steerkit.core.generation import Prompt, encode_prompts
from steerkit.core.models import TINY_ARCHS, LoadedModel, load_model
from steerkit.core.positions import ALL, EncodedPrompt, Explicit, FromPattern, Pattern
from steerkit.errors import SteerkitError
from steerkit.interventions import (
    INTERVENTIONS,
    AttentionCapture,
    AttentionEdit,
    DirectionAblation,
    ResidualAdd,
    steer,
)

Tiny = Callable[[str], LoadedModel]

# Long enough (byte tokens) that Gemma 3's sliding window (64) is in play.
RUST = (
    "/// Returns the greatest common divisor of `a` and `b` using Euclid's algorithm.\n"
    "///\n"
    "/// #[test]\n"
    "/// fn test_gcd() {\n"
    "///     assert_eq!(gcd(48, 18), 6);\n"
    "/// }\n"
    "fn gcd(a: u64, b: u64) -> u64 {\n"
)
SOURCES = FromPattern(SIGNATURE, occurrence="last")
TARGETS = Pattern(DOC_TEST)


def _prompt(loaded: LoadedModel, text: str = RUST) -> EncodedPrompt:
    (prompt,) = encode_prompts(loaded, [Prompt("rust", text)], chat=False)
    return prompt


def _ids(prompt: EncodedPrompt) -> torch.Tensor:
    return torch.tensor([prompt.ids])


@torch.inference_mode()
def _logits(loaded: LoadedModel, prompt: EncodedPrompt, *interventions: Any) -> torch.Tensor:
    with steer(loaded, *interventions, prompts=[prompt]):
        return loaded.model(_ids(prompt)).logits


def _vector(d_model: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(d_model, generator=torch.Generator().manual_seed(seed))


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# --- identities --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_identity_interventions_are_bit_identical(tiny: Tiny, arch: str) -> None:
    loaded = tiny(arch)
    prompt = _prompt(loaded)
    with torch.inference_mode():
        plain = loaded.model(_ids(prompt)).logits
    v = _vector(loaded.d_model)
    identities = [
        (),
        (AttentionEdit((0, 1, 2, 3), SOURCES, TARGETS, "scale", 1.0),),
        (ResidualAdd(1, v, coef=0.0),),
        (ResidualAdd(2, v, coef=0.0, hook="resid_pre", positions=Explicit((2, 5))),),
        (DirectionAblation(1, v, alpha=0.0),),
        (DirectionAblation(3, v, alpha=0.0, hook="resid_pre"),),
        (AttentionCapture((0, 3)),),
    ]
    for ivs in identities:
        assert torch.equal(_logits(loaded, prompt, *ivs), plain), ivs


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_non_identity_interventions_change_logits(tiny: Tiny, arch: str) -> None:
    """The identities above are not vacuous: the same interventions with other values change the logits."""
    loaded = tiny(arch)
    prompt = _prompt(loaded)
    plain = _logits(loaded, prompt)
    v = _vector(loaded.d_model)
    for iv in (
        AttentionEdit(1, SOURCES, TARGETS, "scale", 3.0),
        AttentionEdit(1, SOURCES, TARGETS, "knockout"),
        AttentionEdit(1, SOURCES, TARGETS, "target", 0.5),
        ResidualAdd(1, v, coef=2.0),
        DirectionAblation(1, v, alpha=1.0),
    ):
        assert (_logits(loaded, prompt, iv) - plain).abs().max() > 1e-3, iv


# --- residual interventions against hand-written hooks ------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("hook", ["resid_post", "resid_pre"])
def test_residual_add_equals_hand_written_hook(tiny: Tiny, arch: str, hook: str) -> None:
    loaded = tiny(arch)
    prompt = _prompt(loaded)
    v, coef, layer, where = _vector(loaded.d_model, 1), 1.5, 2, [2, 5, len(prompt) - 1]
    delta = torch.zeros(1, len(prompt), loaded.d_model)
    delta[0, where] = coef * v

    def post_hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    def pre_hook(module: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (args[0] + delta, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + delta}

    block = loaded.layers()[layer]
    if hook == "resid_post":
        handle = block.register_forward_hook(post_hook)
    else:
        handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            expected = loaded.model(_ids(prompt)).logits
    finally:
        handle.remove()
    got = _logits(loaded, prompt, ResidualAdd(layer, v, coef, hook, Explicit((2, 5, -1))))  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - _logits(loaded, prompt)).abs().max() > 1e-3


class _Capture:
    """A forward (or pre-) hook registered after steer()'s, so it sees the stream as the model passes it on."""

    def __init__(self, block: torch.nn.Module, pre: bool) -> None:
        self.seen: list[torch.Tensor] = []
        if pre:
            self.handle = block.register_forward_pre_hook(self._pre, with_kwargs=True)
        else:
            self.handle = block.register_forward_hook(self._post)

    def _pre(self, module: Any, args: Any, kwargs: Any) -> None:
        self.seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    def _post(self, module: Any, args: Any, output: Any) -> None:
        self.seen.append(_block_output(output).detach().clone())


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_residual_add_shifts_block_output_exactly_at_selected_positions(tiny: Tiny, arch: str) -> None:
    loaded = tiny(arch)
    prompt = _prompt(loaded)
    layer, coef, v = 1, 3.0, _vector(loaded.d_model, 2)
    with torch.inference_mode():
        hidden = loaded.model(_ids(prompt), output_hidden_states=True).hidden_states[layer + 1]  # block output
    with steer(loaded, ResidualAdd(layer, v, coef, positions=Explicit((2, 5))), prompts=[prompt]):
        capture = _Capture(loaded.layers()[layer], pre=False)  # the last hook on the block
        try:
            with torch.inference_mode():
                loaded.model(_ids(prompt))
        finally:
            capture.handle.remove()
    (steered,) = capture.seen
    expected = hidden.clone()
    expected[0, [2, 5]] = hidden[0, [2, 5]] + coef * v
    assert torch.equal(steered, expected)
    unselected = [i for i in range(len(prompt)) if i not in (2, 5)]
    assert torch.equal(steered[0, unselected], hidden[0, unselected])


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("hook", ["resid_post", "resid_pre"])
def test_direction_ablation_removes_the_component(tiny: Tiny, arch: str, hook: str) -> None:
    loaded = tiny(arch)
    prompt = _prompt(loaded)
    layer, direction = 2, _vector(loaded.d_model, 3) * 7.0  # not unit: ablation normalises it
    unit = direction / direction.norm()
    selected = [1, 4, len(prompt) - 1]
    others = [i for i in range(len(prompt)) if i not in selected]
    pre = hook == "resid_pre"
    runs: dict[float, torch.Tensor] = {}
    for alpha in (0.0, 1.0, 2.0):
        iv = DirectionAblation(layer, direction, alpha, hook, Explicit((1, 4, -1)))  # type: ignore[arg-type]
        with steer(loaded, iv, prompts=[prompt]):
            capture = _Capture(loaded.layers()[layer], pre=pre)
            try:
                with torch.inference_mode():
                    loaded.model(_ids(prompt))
            finally:
                capture.handle.remove()
        runs[alpha] = capture.seen[0][0]
    base = runs[0.0]
    component = base @ unit
    assert component[selected].abs().min() > 1e-3  # there is something to remove
    # alpha=1: the component is gone at selected positions; alpha=2: it is reflected. Elsewhere nothing moves.
    torch.testing.assert_close(runs[1.0][selected] @ unit, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(runs[2.0][selected] @ unit, -component[selected], atol=1e-5, rtol=1e-5)
    expected = base[selected] - component[selected, None] * unit
    torch.testing.assert_close(runs[1.0][selected], expected, atol=1e-5, rtol=0)
    for alpha in (1.0, 2.0):
        assert torch.equal(runs[alpha][others], base[others])


# --- attention edits against a reference attention function --------------------------------------------------------


class _Reference:
    """Eager attention written here: weights from Q, K and the HF mask, edits applied to the weight matrix."""

    def __init__(self) -> None:
        self.edit: dict[str, Any] | None = None
        self.weights: dict[int, torch.Tensor] = {}

    def __call__(self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs: Any) -> Any:  # fmt: skip
        groups = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        scores = query @ k.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
        q_len, k_len = scores.shape[-2:]
        if attention_mask is not None:  # eager masks are additive
            scores = scores + attention_mask[..., :k_len]
        else:
            scores = scores.masked_fill(torch.ones(q_len, k_len, dtype=torch.bool).triu(1), float("-inf"))
        edit = self.edit
        if edit is None or module.layer_idx not in edit["layers"]:
            weights = torch.softmax(scores, dim=-1)
        else:
            edges = torch.zeros(scores.shape, dtype=torch.bool)
            rows, cols = torch.tensor(edit["sources"]), torch.tensor(edit["targets"])
            for h in edit["heads"]:
                edges[:, h, rows[:, None], cols[None, :]] = True
            if edit["op"] == "knockout":
                scores = scores.masked_fill(edges, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            if edit["op"] == "scale":
                weights = torch.where(edges, weights * edit["value"], weights)
                weights = weights / weights.sum(-1, keepdim=True)
            elif edit["op"] == "target":
                mass = (weights * edges).sum(-1, keepdim=True)
                ok = (mass > 0) & (mass < 1)
                t = edit["value"]
                rescaled = torch.where(edges, weights * t / mass, weights * (1 - t) / (1 - mass))
                weights = torch.where(ok, rescaled, weights)
        self.weights[module.layer_idx] = weights
        return (weights @ v).transpose(1, 2).contiguous(), weights


@pytest.fixture(scope="module")
def reference() -> Iterator[tuple[_Reference, Callable[[str], LoadedModel]]]:
    """The reference function registered as `test_ref`, and `ref_model(arch)`: a tiny model switched to it."""
    ref = _Reference()
    AttentionInterface.register("test_ref", ref)
    AttentionMaskInterface.register("test_ref", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    models: dict[str, LoadedModel] = {}

    def ref_model(arch: str) -> LoadedModel:
        if arch not in models:
            models[arch] = load_model(f"tiny-{arch}")  # same seeded weights as the steerkit copy
            models[arch].model.set_attn_implementation("test_ref")
        return models[arch]

    yield ref, ref_model
    ref.edit = None


def _edges(prompt: EncodedPrompt) -> tuple[list[int], list[int]]:
    sources = SOURCES.resolve(prompt)
    return list(range(sources.start, len(prompt))), sorted(TARGETS.resolve(prompt).indices)  # type: ignore[arg-type]


@torch.inference_mode()
def _reference_logits(reference: Any, arch: str, prompt: EncodedPrompt, edit: dict[str, Any] | None) -> Any:
    ref, ref_model = reference
    ref.edit, ref.weights = edit, {}
    try:
        return ref_model(arch).model(_ids(prompt)).logits
    finally:
        ref.edit = None


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize(
    ("op", "value", "heads"),
    [
        ("scale", 3.0, None),
        ("scale", 0.0, (0,)),
        ("knockout", 1.0, None),
        ("target", 0.6, None),
        ("target", 0.9, (1, 3)),
        ("target", 0.0, None),
        ("target", 1.0, (2,)),
    ],
)
def test_attention_edit_matches_reference(tiny: Tiny, reference: Any, arch: str, op: str, value: float,
                                          heads: tuple[int, ...] | None) -> None:  # fmt: skip
    loaded = tiny(arch)
    prompt = _prompt(loaded)
    assert len(prompt) > 64  # beyond gemma3's sliding window
    sources, targets = _edges(prompt)
    layers = (1, 2)
    plain = _reference_logits(reference, arch, prompt, None)
    torch.testing.assert_close(plain, _logits(loaded, prompt), atol=1e-5, rtol=0)
    edit = {"layers": layers, "sources": sources, "targets": targets, "op": op, "value": value,
            "heads": heads if heads is not None else range(loaded.n_heads)}  # fmt: skip
    expected = _reference_logits(reference, arch, prompt, edit)
    got = _logits(loaded, prompt, AttentionEdit(layers, SOURCES, TARGETS, op, value, heads))  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (got - plain).abs().max() > 1e-3  # the edit did something the comparison can see


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_capture_equals_reference_weights(tiny: Tiny, reference: Any, arch: str) -> None:
    loaded = tiny(arch)
    prompt = _prompt(loaded)
    capture = AttentionCapture((0, 2))
    _logits(loaded, prompt, capture)
    _reference_logits(reference, arch, prompt, None)
    ref_weights = reference[0].weights
    for layer in (0, 2):
        (record,) = capture.records[layer]
        assert record.weights.shape == (1, loaded.n_heads, len(prompt), len(prompt))
        assert record.heads == tuple(range(loaded.n_heads))
        torch.testing.assert_close(record.weights.sum(-1), torch.ones(1, loaded.n_heads, len(prompt)))
        torch.testing.assert_close(record.weights, ref_weights[layer].float(), atol=1e-5, rtol=0)
        assert torch.equal(record.query_pos, torch.arange(len(prompt))[None])
        assert torch.equal(record.key_pos, torch.arange(len(prompt))[None])
    assert set(capture.records) == {0, 2}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_scale_edit_edge_mass_closed_form(tiny: Tiny, arch: str) -> None:
    loaded = tiny(arch)
    prompt = _prompt(loaded)
    sources, targets = _edges(prompt)
    before, after = AttentionCapture(1), AttentionCapture(1)
    _logits(loaded, prompt, before)
    _logits(loaded, prompt, AttentionEdit(1, SOURCES, TARGETS, "scale", 2.0), after)
    w0, w1 = before.records[1][0].weights[0], after.records[1][0].weights[0]
    mass = w0[:, sources][:, :, targets].sum(-1)
    assert mass.min() > 0.01
    torch.testing.assert_close(w1[:, sources][:, :, targets].sum(-1), 2 * mass / (1 + mass), atol=1e-5, rtol=0)
    torch.testing.assert_close(w1.sum(-1), torch.ones_like(w1.sum(-1)))
    untouched = [i for i in range(len(prompt)) if i not in sources]
    assert torch.equal(w1[:, untouched], w0[:, untouched])


def test_capture_records_edited_weights_whatever_the_order(tiny: Tiny) -> None:
    loaded = tiny("llama")
    prompt = _prompt(loaded)
    first, last = AttentionCapture(1), AttentionCapture(1)
    _logits(loaded, prompt, first, AttentionEdit(1, SOURCES, TARGETS, "scale", 2.0), last)
    assert torch.equal(first.records[1][0].weights, last.records[1][0].weights)


@pytest.mark.parametrize("op", ["scale", "knockout", "target"])
def test_heads_restrict_the_edit(tiny: Tiny, op: str) -> None:
    loaded = tiny("llama")
    prompt = _prompt(loaded)
    sources, targets = _edges(prompt)
    before, after = AttentionCapture(2), AttentionCapture(2)
    _logits(loaded, prompt, before)
    _logits(loaded, prompt, AttentionEdit(2, SOURCES, TARGETS, op, 0.25, heads=(0,)), after)  # type: ignore[arg-type]
    w0, w1 = before.records[2][0].weights[0], after.records[2][0].weights[0]
    assert torch.equal(w1[1:], w0[1:])
    assert (w1[0] - w0[0]).abs().max() > 1e-3
    if op == "knockout":
        assert torch.equal(w1[0][sources][:, targets], torch.zeros(len(sources), len(targets)))


def test_capture_of_selected_heads(tiny: Tiny) -> None:
    loaded = tiny("qwen2")
    prompt = _prompt(loaded)
    every, some = AttentionCapture(3), AttentionCapture(3, heads=(3, 1))
    _logits(loaded, prompt, every, some)
    assert some.records[3][0].heads == (3, 1)
    assert torch.equal(some.records[3][0].weights, every.records[3][0].weights[:, [3, 1]])
    sources = torch.tensor([10, 20])
    edge = some.records[3][0].edge_weights(sources, torch.tensor([0, 5, 10]))
    assert torch.equal(edge, every.records[3][0].weights[0][[3, 1]][:, [10, 20]][:, :, [0, 5, 10]])
    some.clear()
    assert some.records == {}


# --- causality and validation -----------------------------------------------------------------------------------


def test_sources_before_targets_are_refused(tiny: Tiny) -> None:
    loaded = tiny("llama")
    prompt = _prompt(loaded)
    edit = AttentionEdit(1, Explicit((3,)), Explicit((5,)), "scale", 2.0)
    with pytest.raises(SteerkitError, match="source position 3 to later target position 5 .* causally masked"):
        with steer(loaded, edit, prompts=[prompt]):
            pass
    straddle = AttentionEdit(1, Explicit((5,)), Explicit((3, 7)), "scale", 2.0)  # 5 -> 7 is masked, 5 -> 3 is not
    with pytest.raises(SteerkitError, match="source position 5 to later target position 7"):
        with steer(loaded, straddle, prompts=[prompt]):
            pass
    reference = AttentionEdit(1, Pattern(TEST_MARKER), Pattern(SIGNATURE, occurrence="last"), "scale", 3.0)
    with pytest.raises(SteerkitError, match="causally masked"):
        with steer(loaded, reference, prompts=[prompt]):
            pass


def test_source_equal_to_target_is_allowed(tiny: Tiny) -> None:
    loaded = tiny("llama")
    prompt = _prompt(loaded)
    plain = _logits(loaded, prompt)
    capture = AttentionCapture(1)
    steered = _logits(loaded, prompt, AttentionEdit(1, Explicit((5,)), Explicit((5,)), "scale", 4.0), capture)
    w = capture.records[1][0].weights[0]
    assert (steered - plain).abs().max() > 1e-4
    before = AttentionCapture(1)
    _logits(loaded, prompt, before)
    m = before.records[1][0].weights[0][:, 5, 5]
    torch.testing.assert_close(w[:, 5, 5], 4 * m / (1 + 3 * m), atol=1e-6, rtol=0)


def test_knockout_of_a_whole_row_is_refused(tiny: Tiny) -> None:
    loaded = tiny("llama")
    prompt = _prompt(loaded)
    with pytest.raises(SteerkitError, match="removed every key"):
        _logits(loaded, prompt, AttentionEdit(0, Explicit((0,)), Explicit((0,)), "knockout"))


def test_empty_selection_is_refused(tiny: Tiny) -> None:
    loaded = tiny("llama")
    prompt = _prompt(loaded)
    edit = AttentionEdit(0, FromPattern(SIGNATURE, include_generated=False), Explicit((1,)), "scale", 2.0)
    empty = AttentionEdit(0, Explicit((9,)), Pattern("zzz"), "scale", 2.0)
    with steer(loaded, edit, prompts=[prompt]):
        pass
    with pytest.raises(SteerkitError, match="'zzz' not found in prompt 'rust'"):
        with steer(loaded, empty, prompts=[prompt]):
            pass


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda v: ResidualAdd(1, v, coef=float("nan")), "coef must be a finite number, got nan"),
        (lambda v: ResidualAdd(1, v, coef=float("inf")), "coef must be a finite number, got inf"),
        (lambda v: ResidualAdd(1, v * float("nan")), "vector contains NaN"),
        (lambda v: DirectionAblation(1, v, alpha=float("nan")), "alpha must be a finite number, got nan"),
        (lambda v: DirectionAblation(1, v * 0), "direction has zero norm"),
        (lambda v: AttentionEdit(1, ALL, ALL, "scale", float("inf")), "finite number, got inf"),
        (lambda v: AttentionEdit(1, ALL, ALL, "scale", -0.5), "scale must be >= 0, got -0.5"),
        (lambda v: AttentionEdit(1, ALL, ALL, "target", 1.5), r"share must be in \[0, 1\], got 1.5"),
        (lambda v: AttentionEdit(1, ALL, ALL, "amplify", 2.0), "unknown attention op 'amplify'"),  # type: ignore[arg-type]
    ],
)
def test_invalid_values_raise_at_construction(make: Callable[[torch.Tensor], Any], named: str) -> None:
    with pytest.raises(SteerkitError, match=named) as info:
        make(torch.ones(64))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda d: ResidualAdd(1, torch.ones(d - 1)), "vector has size 63 but tiny-llama has d_model 64"),
        (lambda d: DirectionAblation(1, torch.ones(d + 2)), "direction has size 66"),
        (lambda d: ResidualAdd(4, torch.ones(d)), "layer 4 out of range"),
        (lambda d: ResidualAdd(-1, torch.ones(d), hook="resid_pre"), "layer -1 out of range"),
        (lambda d: ResidualAdd(1, torch.ones(d), hook="resid_mid"), "unknown hook point 'resid_mid'"),  # type: ignore[arg-type]
        (lambda d: AttentionEdit((1, 7), ALL, ALL, "scale", 2.0), "layer 7 out of range"),
        (lambda d: AttentionEdit(1, ALL, ALL, "scale", 2.0, heads=(4,)), "head 4 out of range"),
        (lambda d: AttentionCapture(9), "layer 9 out of range"),
    ],
)
def test_invalid_interventions_raise_in_steer(tiny: Tiny, make: Callable[[int], Any], named: str) -> None:
    loaded = tiny("llama")
    with pytest.raises(SteerkitError, match=named) as info:
        with steer(loaded, make(loaded.d_model)):
            pass
    assert "\n" not in str(info.value)
    _assert_no_hooks(loaded)


def test_registry_names_the_classes() -> None:
    assert INTERVENTIONS == {"residual_add": ResidualAdd, "direction_ablation": DirectionAblation,
                             "attention_edit": AttentionEdit, "attention_capture": AttentionCapture}  # fmt: skip


# --- hooks are always removed -----------------------------------------------------------------------------------


def _hook_state(loaded: LoadedModel) -> list[tuple[Any, ...]]:
    state = []
    for layer, block in enumerate(loaded.layers()):
        attached = list(getattr(loaded.attention(layer), "_steerkit_attention", []))
        state.append((tuple(block._forward_hooks), tuple(block._forward_pre_hooks), attached))
    return state


def _assert_no_hooks(loaded: LoadedModel) -> None:
    for hooks, pre_hooks, attached in _hook_state(loaded):
        assert attached == []
        # Only transformers' own output-capturing hooks (installed lazily, never steerkit's) may remain.
        assert all(not getattr(h, "__qualname__", "").startswith("_create_residual_hook")
                   for h in [*hooks, *pre_hooks])  # fmt: skip


def test_hooks_removed_after_an_error_inside_the_block(tiny: Tiny) -> None:
    loaded = tiny("gemma")
    prompt = _prompt(loaded)
    plain = _logits(loaded, prompt)
    before = _hook_state(loaded)
    v = _vector(loaded.d_model)
    ivs = (ResidualAdd(1, v, 5.0), DirectionAblation(2, v, hook="resid_pre"),
           AttentionEdit((0, 3), SOURCES, TARGETS, "scale", 3.0), AttentionCapture(2))  # fmt: skip
    with pytest.raises(RuntimeError, match="boom"):
        with steer(loaded, *ivs, prompts=[prompt]):
            during = _hook_state(loaded)
            raise RuntimeError("boom")
    assert during != before  # they were attached
    assert _hook_state(loaded) == before
    _assert_no_hooks(loaded)
    assert torch.equal(_logits(loaded, prompt), plain)


def test_hooks_removed_after_an_error_raised_by_a_hook(tiny: Tiny) -> None:
    loaded = tiny("llama")
    prompt = _prompt(loaded)
    before = _hook_state(loaded)
    iv = ResidualAdd(1, _vector(loaded.d_model), positions=Explicit((1,)))
    with pytest.raises(SteerkitError, match=r"need prompts: use generate\(\), or steer\(\.\.\., prompts="):
        with steer(loaded, iv), torch.inference_mode():  # no prompts bound: the hook itself raises
            loaded.model(_ids(prompt))
    assert _hook_state(loaded) == before
    with pytest.raises(SteerkitError, match="bound batch of 1 prompts but the model got 2 rows"):
        with steer(loaded, iv, prompts=[prompt]), torch.inference_mode():
            loaded.model(_ids(prompt).repeat(2, 1))
    assert _hook_state(loaded) == before


def test_hooks_removed_when_attaching_fails_halfway(tiny: Tiny) -> None:
    loaded = tiny("qwen2")
    prompt = _prompt(loaded)
    before = _hook_state(loaded)
    v = _vector(loaded.d_model)
    good = (ResidualAdd(0, v), AttentionEdit(1, SOURCES, TARGETS, "scale", 2.0))
    with pytest.raises(SteerkitError, match="layer 10 out of range"):
        with steer(loaded, *good, ResidualAdd(10, v)):
            pass
    assert _hook_state(loaded) == before
    refused = AttentionEdit(2, Pattern(TEST_MARKER), Pattern(SIGNATURE, occurrence="last"), "scale", 2.0)
    with pytest.raises(SteerkitError, match="causally masked"):
        with steer(loaded, *good, refused, prompts=[prompt]):
            pass
    assert _hook_state(loaded) == before
    _assert_no_hooks(loaded)
