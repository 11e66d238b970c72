"""Tests for steerkit.core.generation: parity (batched == single, cached == recomputed, identity edit == none, steerkit
== a plain greedy loop over the unhooked model), positions under the KV cache, seeded sampling, stop reasons,
config validation, and batched == single on the embedded model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from steerkit.attention.edge_rules import DOC_TEST, SIGNATURE, TEST_MARKER
from steerkit.core.generation import (
    Generation,
    GenerationConfig,
    Prompt,
    encode_prompts,
    eos_ids,
    generate,
    next_token_logits,
)
from steerkit.core.models import TINY_ARCHS, LoadedModel
from steerkit.core.positions import GENERATED, FromPattern, Pattern
from steerkit.corpora.prompts import PromptCorpus
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, AttentionEdit, ResidualAdd

Tiny = Callable[[str], LoadedModel]


def _rust(name: str, args: str, body: str) -> str:
    return (f"/// Computes {name}.\n///\n/// #[test]\n/// fn test_{name}() {{\n///     {body}\n/// }}\n"
            f"fn {name}({args}) -> u64 {{\n")  # fmt: skip


# Four prompts of different lengths, so a batch of four is left-padded.
PROMPTS = [
    Prompt("sq", _rust("sq", "x: u64", "assert_eq!(sq(3), 9);")),
    Prompt("gcd", _rust("gcd", "a: u64, b: u64", "assert_eq!(gcd(48, 18), 6); assert_eq!(gcd(7, 5), 1);")),
    Prompt("one", _rust("one", "", "assert!(one() == 1);")),
    Prompt("fib", _rust("fib", "n: u64", "assert_eq!(fib(10), 55);")),
]
EDIT = AttentionEdit((1, 2), FromPattern(SIGNATURE, occurrence="last"), Pattern(DOC_TEST), "scale", 4.0)


def _check_sensitive(baseline: list[Generation], steered: list[Generation] | None = None) -> None:
    """Preconditions that make a parity test able to fail: prompts (and steering) change the completion."""
    assert len({g.token_ids for g in baseline}) > 1
    if steered is not None:
        assert _ids(steered) != _ids(baseline)


def _ids(gens: list[Generation]) -> list[tuple[int, ...]]:
    return [g.token_ids for g in gens]


def _gen(loaded: LoadedModel, prompts: list[Prompt] = PROMPTS, **params: Any) -> list[Generation]:
    params.setdefault("max_new_tokens", 8)
    return generate(loaded, prompts, progress=False, **params)


def test_prompts_have_different_lengths(tiny: Tiny) -> None:
    lengths = [len(p) for p in encode_prompts(tiny("llama"), PROMPTS, chat=False)]
    assert len(set(lengths)) == len(PROMPTS)


# --- parity -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_batched_greedy_equals_one_at_a_time(sharp: Tiny, arch: str) -> None:
    loaded = sharp(arch)
    baseline = _gen(loaded, batch_size=1)
    steered = _gen(loaded, batch_size=1, interventions=[EDIT])
    _check_sensitive(baseline, steered)
    for ivs, single in (([], baseline), ([EDIT], steered)):
        batched = _gen(loaded, batch_size=4, interventions=ivs)
        assert [g.prompt_id for g in batched] == [p.id for p in PROMPTS]  # input order kept
        assert _ids(batched) == _ids(single)
        assert [g.text for g in batched] == [g.text for g in single]
        assert all(g.n_tokens == len(g.token_ids) > 0 for g in batched)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_no_cache_equals_dynamic_cache(sharp: Tiny, arch: str) -> None:
    loaded = sharp(arch)
    baseline = _gen(loaded, cache="dynamic")
    steered = _gen(loaded, cache="dynamic", interventions=[EDIT])
    _check_sensitive(baseline, steered)
    assert _ids(_gen(loaded, cache="none")) == _ids(baseline)
    assert _ids(_gen(loaded, cache="none", interventions=[EDIT])) == _ids(steered)


def _stop_char(gens: list[Generation]) -> str:
    """A character found in some completions but not all: a stop string that ends rows early."""
    found = sorted({c for g in gens for c in g.text if c != "\ufffd"})  # not a lone byte of a UTF-8 sequence
    return next(c for c in found if 0 < sum(c in g.text for g in gens) < len(gens))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("cache", ["dynamic", "none"])
def test_rows_stopping_early_do_not_disturb_the_batch(sharp: Tiny, arch: str, cache: str) -> None:
    loaded = sharp(arch)
    stop = _stop_char(_gen(loaded, batch_size=1, max_new_tokens=10))
    for ivs in ([], [EDIT]):
        single = _gen(loaded, batch_size=1, max_new_tokens=10, stop_strings=(stop,), interventions=ivs, cache=cache)
        batched = _gen(loaded, batch_size=4, max_new_tokens=10, stop_strings=(stop,), interventions=ivs, cache=cache)
        if not ivs:
            assert {g.stop_reason for g in single} == {"stop_string", "max_new_tokens"}
        assert [(g.token_ids, g.text, g.stop_reason) for g in batched] == [
            (g.token_ids, g.text, g.stop_reason) for g in single
        ]


def test_greedy_equals_a_plain_loop_over_the_unhooked_model(sharp: Tiny) -> None:
    loaded = sharp("llama")
    gens = _gen(loaded, batch_size=4, max_new_tokens=10)
    _check_sensitive(gens)
    eos = eos_ids(loaded)
    for prompt, gen in zip(encode_prompts(loaded, PROMPTS, chat=False), gens, strict=True):
        ids = list(prompt.ids)
        expected: list[int] = []
        with torch.inference_mode():
            for _ in range(10):  # full recompute, no cache, no padding, no position ids
                token = int(loaded.model(torch.tensor([ids])).logits[0, -1].argmax())
                if token in eos:
                    break
                expected.append(token)
                ids.append(token)
        assert list(gen.token_ids) == expected
        assert gen.prompt_tokens == len(prompt)
        assert gen.token_ids[: len(prompt.ids)] != prompt.ids  # the prompt is stripped
        assert gen.text == loaded.tokenizer.decode(list(gen.token_ids), skip_special_tokens=True)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_identity_edit_generates_the_baseline(sharp: Tiny, arch: str) -> None:
    loaded = sharp(arch)
    identity = AttentionEdit((0, 1, 2, 3), FromPattern(SIGNATURE), Pattern(TEST_MARKER), "scale", 1.0)
    baseline = _gen(loaded)
    _check_sensitive(baseline, _gen(loaded, interventions=[EDIT]))  # the same edit at scale 4 does something
    assert _ids(_gen(loaded, interventions=[identity])) == _ids(baseline)
    assert torch.equal(next_token_logits(loaded, PROMPTS, interventions=[identity]), next_token_logits(loaded, PROMPTS))


def test_generated_positions_leave_the_prompt_untouched(sharp: Tiny) -> None:
    loaded = sharp("llama")
    push = ResidualAdd(2, torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(0)), coef=40.0,
                       positions=GENERATED)  # fmt: skip
    assert torch.equal(next_token_logits(loaded, PROMPTS, interventions=[push]), next_token_logits(loaded, PROMPTS))
    base, steered = _gen(loaded), _gen(loaded, interventions=[push])
    for b, s in zip(base, steered, strict=True):
        assert b.token_ids[0] == s.token_ids[0]  # chosen from prompt-only logits
        assert b.token_ids[1:] != s.token_ids[1:]


def test_next_token_logits_equals_a_plain_forward(sharp: Tiny) -> None:
    loaded = sharp("gpt2")  # absolute position embeddings: padding must not shift positions
    got = next_token_logits(loaded, PROMPTS, batch_size=4)
    with torch.inference_mode():
        expected = torch.stack([loaded.model(torch.tensor([p.ids])).logits[0, -1]
                                for p in encode_prompts(loaded, PROMPTS, chat=False)])  # fmt: skip
    assert got.shape == (len(PROMPTS), len(loaded.tokenizer)) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# --- positions under the KV cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("early", [False, True])
def test_positions_under_the_kv_cache_with_padding(sharp: Tiny, early: bool) -> None:
    loaded = sharp("llama")
    prompts = PROMPTS[:3]
    encoded = {len(p): p for p in encode_prompts(loaded, prompts, chat=False)}
    knockout = AttentionEdit(1, FromPattern(SIGNATURE, occurrence="last"), Pattern(TEST_MARKER), "knockout")
    steps = 6
    stops = (_stop_char(_gen(loaded, prompts, max_new_tokens=steps, interventions=[knockout])),) if early else ()
    capture = AttentionCapture(1)
    gens = _gen(loaded, prompts, batch_size=3, max_new_tokens=steps, interventions=[knockout, capture],
                stop_strings=stops)  # fmt: skip
    assert len(encoded) == 3 and (("stop_string" in {g.stop_reason for g in gens}) == early)
    # A row takes part in forward pass s while it still has a token to produce.
    passes = {g.prompt_tokens: g.n_tokens + (g.stop_reason == "eos") for g in gens}
    records = capture.records[1]
    assert len(records) == max(passes.values())
    width = max(encoded)
    prefill = records[0]
    pad = -prefill.query_pos[:, 0]
    assert sorted((width - pad).tolist()) == sorted(encoded) and (pad > 0).sum() == 2  # two padded rows
    assert torch.equal(prefill.query_pos, torch.arange(width)[None] - pad[:, None])
    for step, record in enumerate(records):
        pad = -record.key_pos[:, 0]  # identifies each row, whichever rows are still in the batch
        length = width - pad
        assert {n for n, k in passes.items() if k > step} <= set(length.tolist())
        assert torch.equal(record.key_pos, torch.arange(width + step)[None] - pad[:, None])
        if step:
            assert record.query_pos.shape == (len(length), 1)
            assert torch.equal(record.query_pos[:, 0], length + step - 1)  # unpadded: prompt_len + step - 1
        # The knockout follows each row's own positions: marker keys get exactly 0 from every source query.
        for row, n in enumerate(length.tolist()):
            prompt = encoded[n]
            marker = sorted(Pattern(TEST_MARKER).resolve(prompt).indices)
            start = FromPattern(SIGNATURE, occurrence="last").resolve(prompt).start
            keys = [int((record.key_pos[row] == m).nonzero()) for m in marker]
            for q, qpos in enumerate(record.query_pos[row].tolist()):
                w = record.weights[row, :, q]
                if qpos >= 0:
                    torch.testing.assert_close(w.sum(-1), torch.ones(loaded.n_heads))
                edge = w[:, keys]
                if qpos >= start:  # type: ignore[operator]
                    assert torch.equal(edge, torch.zeros_like(edge))
                elif qpos >= marker[-1]:
                    assert edge.sum() > 0


# --- sampling -----------------------------------------------------------------------------------------------------


def test_sampling_does_not_depend_on_the_batch(sharp: Tiny) -> None:
    loaded = sharp("llama")
    batched = _gen(loaded, temperature=0.8, seed=7, batch_size=4)
    for prompt, gen in zip(PROMPTS, batched, strict=True):
        (alone,) = _gen(loaded, [prompt], temperature=0.8, seed=7)
        assert alone.token_ids == gen.token_ids
    reordered = _gen(loaded, PROMPTS[::-1], temperature=0.8, seed=7, batch_size=2)
    assert _ids(reordered) == _ids(batched)[::-1]
    assert _ids(_gen(loaded, temperature=0.8, seed=8)) != _ids(batched)
    assert _ids(batched) != _ids(_gen(loaded))  # not greedy


def test_sampling_seed_depends_on_the_prompt_id(sharp: Tiny) -> None:
    loaded = sharp("llama")
    text = PROMPTS[0].text
    twins = _gen(loaded, [Prompt("a", text), Prompt("b", text)], temperature=0.8, seed=7, batch_size=2)
    assert twins[0].token_ids != twins[1].token_ids  # same text, own random stream per id
    (again,) = _gen(loaded, [Prompt("b", text)], temperature=0.8, seed=7)
    assert again.token_ids == twins[1].token_ids


def test_seeds_override_the_id_derived_seed(sharp: Tiny) -> None:
    loaded = sharp("llama")
    text = PROMPTS[0].text
    a = _gen(loaded, [Prompt("a", text)], temperature=0.8, seeds={"a": 11})
    b = _gen(loaded, [Prompt("b", text), PROMPTS[1]], temperature=0.8, seeds={"b": 11}, batch_size=2)
    assert a[0].token_ids == b[0].token_ids  # the seed, not the id, drives the stream
    assert _gen(loaded, [Prompt("a", text)], temperature=0.8, seeds={"a": 12})[0].token_ids != a[0].token_ids


class _ArgmaxSampler:
    """A sampler that takes the most likely token and logs which rows it was asked for, at which step."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def __call__(self, probs: torch.Tensor, prompt_ids: list[str], step: int) -> torch.Tensor:
        assert probs.shape[0] == len(prompt_ids)
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(prompt_ids)))
        self.calls.append((list(prompt_ids), step))
        return probs.argmax(-1)


def test_custom_sampler_gets_rows_and_steps(sharp: Tiny) -> None:
    loaded = sharp("gpt2")
    sampler = _ArgmaxSampler()
    gens = _gen(loaded, temperature=0.5, sampler=sampler, batch_size=4, max_new_tokens=6)
    assert _ids(gens) == _ids(_gen(loaded, max_new_tokens=6))  # argmax of softmax(l / T) is greedy
    for gen in gens:  # each row is drawn once per generated token, at steps 0, 1, 2, ...
        steps = [step for ids, step in sampler.calls if gen.prompt_id in ids]
        assert steps == list(range(gen.n_tokens + (gen.stop_reason != "max_new_tokens")))


def test_tiny_top_p_is_greedy(sharp: Tiny) -> None:
    loaded = sharp("gpt2")
    nucleus = _gen(loaded, temperature=0.8, top_p=1e-6, seed=3)  # keeps only the most likely token
    assert _ids(nucleus) == _ids(_gen(loaded))


# --- stopping -----------------------------------------------------------------------------------------------------


def test_stop_reason_max_new_tokens(tiny: Tiny) -> None:
    gens = _gen(tiny("llama"), max_new_tokens=6)
    assert [(g.stop_reason, g.n_tokens) for g in gens] == [("max_new_tokens", 6)] * len(PROMPTS)


def test_stop_string_cuts_the_text(tiny: Tiny) -> None:
    loaded = tiny("llama")
    (base,) = _gen(loaded, PROMPTS[:1], max_new_tokens=12)
    stop = base.text[3:5]  # two characters from the middle of the greedy completion
    cut = base.text.index(stop)
    (gen,) = _gen(loaded, PROMPTS[:1], max_new_tokens=12, stop_strings=(stop,))
    assert gen.stop_reason == "stop_string"
    assert gen.text == base.text[:cut]
    assert gen.token_ids == base.token_ids[: len(gen.token_ids)] and len(gen.token_ids) < len(base.token_ids)
    assert stop in loaded.tokenizer.decode(list(gen.token_ids))
    assert stop not in loaded.tokenizer.decode(list(gen.token_ids[:-1]))  # stopped at the first token possible


def test_stop_string_within_the_window(tiny: Tiny) -> None:
    loaded = tiny("gpt2")  # at its initial scale it writes newlines only, one byte token each
    (base,) = _gen(loaded, PROMPTS[:1], max_new_tokens=30)
    assert base.text == "\n" * 30
    (gen,) = _gen(loaded, PROMPTS[:1], max_new_tokens=30, stop_strings=("\n" * 16,))
    assert (gen.stop_reason, gen.n_tokens, gen.text) == ("stop_string", 16, "")


def test_long_stop_string_is_detected(tiny: Tiny) -> None:
    loaded = tiny("gpt2")  # at its initial scale it writes newlines only, one byte token each
    (base,) = _gen(loaded, PROMPTS[:1], max_new_tokens=30)
    assert base.text == "\n" * 30
    stop = "\n" * 20  # complete at the 20th generated token
    (gen,) = _gen(loaded, PROMPTS[:1], max_new_tokens=30, stop_strings=(stop,))
    assert gen.stop_reason == "stop_string"
    assert gen.n_tokens == 20 and gen.text == ""


def test_stop_reason_eos(tiny: Tiny) -> None:
    loaded = tiny("llama")
    eos = loaded.tokenizer.eos_token_id
    assert eos in eos_ids(loaded)
    towards_eos = loaded.model.lm_head.weight[eos].detach()
    force = ResidualAdd(3, towards_eos, coef=100.0, positions=GENERATED)  # from the first generated token on
    base, forced = _gen(loaded), _gen(loaded, interventions=[force])
    for b, f in zip(base, forced, strict=True):
        assert f.stop_reason == "eos"
        assert f.token_ids == b.token_ids[:1] and f.n_tokens == 1  # EOS itself is not returned
        assert f.text == loaded.tokenizer.decode(list(b.token_ids[:1]), skip_special_tokens=True)


def test_on_result_and_duplicate_ids(tiny: Tiny) -> None:
    loaded = tiny("qwen2")
    seen: list[Generation] = []
    gens = generate(loaded, PROMPTS, max_new_tokens=3, batch_size=2, on_result=seen.append, progress=False)
    assert sorted(g.prompt_id for g in seen) == sorted(p.id for p in PROMPTS)
    assert {g.prompt_id: g for g in seen} == {g.prompt_id: g for g in gens}
    with pytest.raises(SteerkitError, match="duplicate prompt id 'sq'"):
        generate(loaded, [PROMPTS[0], PROMPTS[0]], max_new_tokens=2, progress=False)
    strings = generate(loaded, ["a", "b"], max_new_tokens=2, progress=False)
    assert [g.prompt_id for g in strings] == ["p0", "p1"]


# --- configuration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer, got 0"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
        ({"temperature": -1.0}, "temperature must be finite and >= 0, got -1.0"),
        ({"temperature": float("nan")}, "temperature must be finite and >= 0, got nan"),
        ({"cache": "paged"}, "unknown cache strategy 'paged'"),
    ],
)
def test_bad_config_raises(tiny: Tiny, params: dict[str, Any], named: str) -> None:
    with pytest.raises(SteerkitError, match=named) as info:
        GenerationConfig(**params)
    assert "\n" not in str(info.value)
    with pytest.raises(SteerkitError, match=named):
        generate(tiny("llama"), ["x"], progress=False, **params)


def test_config_overrides_and_to_dict() -> None:
    cfg = GenerationConfig(max_new_tokens=5, stop_strings=("\n}",))
    assert cfg.to_dict()["max_new_tokens"] == 5 and cfg.to_dict()["stop_strings"] == ("\n}",)
    assert GenerationConfig(**{**cfg.to_dict(), "seed": 3}).seed == 3


# --- embedded model -----------------------------------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_batched_greedy_equals_one_at_a_time(embedded: LoadedModel, n50: PromptCorpus) -> None:
    # The six shortest prompts of different token lengths: a left-padded batch at the lowest cost.
    encoded = encode_prompts(embedded, [p.as_prompt() for p in n50.prompts], chat=False)
    by_length = {len(e): e.id for e in sorted(encoded, key=len, reverse=True)}
    chosen = [by_length[n] for n in sorted(by_length)[:6]]
    prompts = [p.as_prompt() for p in n50.prompts if p.id in chosen]
    batched = generate(embedded, prompts, max_new_tokens=24, batch_size=6, progress=False)
    single = generate(embedded, prompts, max_new_tokens=24, batch_size=1, progress=False)
    assert [g.prompt_id for g in batched] == [p.id for p in prompts]
    assert _ids(batched) == _ids(single)
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.n_tokens > 0 for g in batched)
