"""Activation patching (ResidualPatch, AttentionRowPatch, position maps, entry point `patch_activations`) against
independent paths: the unhooked model, a hand-written forward hook, a hand-written eager attention that edits the
weight row, and position maps worked out by hand."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from steerkit import tracking
from steerkit.attention.patching import recovered
from steerkit.core.activations import ResidualCapture
from steerkit.core.generation import Prompt, encode_prompts
from steerkit.core.models import load_model
from steerkit.core.positions import EncodedPrompt, Pattern
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, AttentionRowPatch, ResidualPatch, steer
from steerkit.interventions.patching import mapped_attention_values
from steerkit.interventions.position_map import PositionMap, SpanPair, build_position_map, identity_map
from tests.conftest import all_runs, script

ROOT = Path(__file__).resolve().parents[1]

patch_activations = script("patch_activations")

ATTENTION_CORPUS = str(ROOT / "corpus" / "attention_pairs.json")
TEXT = 'def add(a, b):\n    """Return the sum.\n\n    >>> add(2, 3)\n    5\n    """\n    return a + b\n'
OTHER = "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\n#[test]\nfn test_add() {\n    assert_eq!(add(2, 3), 5);\n}\n"


def _encoded(loaded: Any, text: str = TEXT, pid: str = "p") -> EncodedPrompt:
    (prompt,) = encode_prompts(loaded, [Prompt(pid, text)], chat=False)
    return prompt


@torch.inference_mode()
def _logits(loaded: Any, prompt: EncodedPrompt, *interventions: Any) -> torch.Tensor:
    with steer(loaded, *interventions, prompts=[prompt]):
        return loaded.model(torch.tensor([prompt.ids])).logits


def _residuals(loaded: Any, prompt: EncodedPrompt, layer: int, hook: str) -> torch.Tensor:
    capture = ResidualCapture(layer, hook)  # type: ignore[arg-type]
    _logits(loaded, prompt, capture)
    return capture.records[layer][0][0]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("hook", ["resid_post", "resid_pre"])
def test_residual_patch_with_own_activations_is_bit_identical(tiny, arch: str, hook: str) -> None:
    loaded = tiny(arch)
    prompt = _encoded(loaded)
    plain = _logits(loaded, prompt)
    own = _residuals(loaded, prompt, 1, hook)
    positions = (0, 3, 7, len(prompt) - 1)
    got = _logits(loaded, prompt, ResidualPatch(1, hook, positions, own[list(positions)]))  # type: ignore[arg-type]
    assert torch.equal(got, plain)


@pytest.mark.parametrize("hook", ["resid_post", "resid_pre"])
def test_residual_patch_with_donor_values_equals_hand_written_hook(tiny, hook: str) -> None:
    loaded = tiny("llama")
    prompt, donor = _encoded(loaded), _encoded(loaded, OTHER, "donor")
    layer, positions, from_donor = 2, [2, 5, len(prompt) - 1], [1, 4, 9]
    values = _residuals(loaded, donor, layer, hook)[from_donor]

    def replace(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[0, positions] = values
        return hidden

    def post_hook(module: Any, args: Any, output: Any) -> Any:
        return (replace(output[0]), *output[1:]) if isinstance(output, tuple) else replace(output)

    def pre_hook(module: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (replace(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replace(kwargs["hidden_states"])}

    block = loaded.layers()[layer]
    handle = (
        block.register_forward_hook(post_hook)
        if hook == "resid_post"
        else block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    )
    try:
        with torch.inference_mode():
            expected = loaded.model(torch.tensor([prompt.ids])).logits
    finally:
        handle.remove()
    got = _logits(loaded, prompt, ResidualPatch(layer, hook, tuple(positions), values))  # type: ignore[arg-type]
    assert torch.equal(got, expected)
    assert (got - _logits(loaded, prompt)).abs().max() > 1e-3


class _RowReference:
    """Eager attention written here; at `layer` the rows `queries` get `values` on `keys`, the rest rescaled."""

    def __init__(self) -> None:
        self.patch: dict[str, Any] | None = None

    def __call__(self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                 scaling: float | None = None, **kwargs: Any) -> Any:  # fmt: skip
        groups = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        scores = query @ k.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if self.patch is not None and module.layer_idx == self.patch["layer"]:
            keys = self.patch["keys"]
            for a, q in enumerate(self.patch["queries"]):
                for h in range(weights.shape[1]):
                    row = weights[0, h, q].clone()
                    new_vals = self.patch["values"][h, a]
                    rest = [j for j in range(row.shape[0]) if j not in keys]
                    row[rest] = row[rest] * (1 - new_vals.sum()) / (1 - row[keys].sum())
                    row[keys] = new_vals
                    weights[0, h, q] = row
        return (weights @ v).transpose(1, 2).contiguous(), weights


@pytest.fixture(scope="module")
def row_reference() -> Iterator[tuple[_RowReference, Any]]:
    ref = _RowReference()
    AttentionInterface.register("attn2_row_ref", ref)
    AttentionMaskInterface.register("attn2_row_ref", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    loaded = load_model("tiny-llama")
    loaded.model.set_attn_implementation("attn2_row_ref")
    yield ref, loaded


def _own_rows(loaded: Any, prompt: EncodedPrompt, layer: int, queries: list[int], keys: list[int]) -> torch.Tensor:
    capture = AttentionCapture(layer)
    _logits(loaded, prompt, capture)
    return capture.records[layer][0].weights[0][:, queries][:, :, keys]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_attention_row_patch_with_own_rows_is_bit_identical(tiny, arch: str) -> None:
    loaded = tiny(arch)
    prompt = _encoded(loaded)
    plain = _logits(loaded, prompt)
    queries, keys = [len(prompt) - 3, len(prompt) - 1], [1, 2, 4]
    own = _own_rows(loaded, prompt, 1, queries, keys)
    assert torch.equal(_logits(loaded, prompt, AttentionRowPatch(1, tuple(queries), tuple(keys), own)), plain)


def test_attention_row_patch_equals_hand_written_eager_row_edit(tiny, row_reference) -> None:
    loaded = tiny("llama")
    ref, ref_model = row_reference
    prompt = _encoded(loaded)
    queries, keys, layer = [len(prompt) - 3, len(prompt) - 1], [1, 2, 4], 1
    values = torch.rand(loaded.n_heads, 2, 3, generator=torch.Generator().manual_seed(0)) * 0.3  # rows sum < 1
    patch = AttentionRowPatch(layer, tuple(queries), tuple(keys), values)
    capture = AttentionCapture(layer)
    got = _logits(loaded, prompt, patch, capture)
    ref.patch = {"layer": layer, "queries": queries, "keys": keys, "values": values}
    try:
        with torch.inference_mode():
            expected = ref_model.model(torch.tensor([prompt.ids])).logits
    finally:
        ref.patch = None
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    weights = capture.records[layer][0].weights[0]
    torch.testing.assert_close(weights[:, queries][:, :, keys], values)  # the written weights, as given
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))  # rows renormalised
    assert (got - _logits(loaded, prompt)).abs().max() > 1e-3


def test_patch_validation_names_the_bad_value(tiny) -> None:
    loaded = tiny("llama")
    prompt = _encoded(loaded)
    with pytest.raises(SteerkitError, match="after query"):
        AttentionRowPatch(1, (3,), (5,), torch.zeros(loaded.n_heads, 1, 1))
    with pytest.raises(SteerkitError, match="at most 1"):
        AttentionRowPatch(1, (9,), (1, 2), torch.full((loaded.n_heads, 1, 2), 0.6))
    with pytest.raises(SteerkitError, match=r"\[2, d_model\]"):
        ResidualPatch(1, "resid_post", (1, 2), torch.zeros(3, loaded.d_model))
    with pytest.raises(SteerkitError, match="outside prompt"):
        _logits(loaded, prompt, ResidualPatch(1, "resid_post", (999,), torch.zeros(1, loaded.d_model)))
    with pytest.raises(SteerkitError, match="heads"):
        _logits(loaded, prompt, AttentionRowPatch(1, (9,), (1,), torch.zeros(loaded.n_heads + 1, 1, 1)))


# --- position maps ---------------------------------------------------------------------------------------------------


def _hand_prompt(pid: str, words: list[str]) -> EncodedPrompt:
    """One 'token' per word (offsets by hand), so the expected token indices are known without a tokenizer."""
    offsets, pos = [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        pos += len(w)
    return EncodedPrompt(pid, "".join(words), tuple(range(len(words))), tuple(offsets))


def test_position_map_on_hand_made_prompts_of_different_lengths() -> None:
    donor = _hand_prompt("py", ["def ", "add", "(", "a", ", ", "b", "):\n", "  >>>"])  # 8 tokens
    recipient = _hand_prompt("rs", ["fn ", "ad", "d", "(", "a", ": i32, ", "b", ": i32", ") {}\n", "#[", "test", "]"])
    groups = {
        "marker": (Pattern(">>>"), Pattern(r"#\[test\]")),
        "function_name": (Pattern(r"(?<=def )add"), Pattern(r"(?<=fn )add")),
        "parameters": (Pattern(r"\b[ab]\b(?=[,)])"), Pattern(r"\b[ab]\b(?=:)")),
    }
    pmap = build_position_map(donor, recipient, groups)
    assert pmap.to_dict() == {
        "marker": {"donor": [7], "recipient": [9, 10, 11]},
        "function_name": {"donor": [1], "recipient": [1, 2]},
        "parameters": {"donor": [3, 5], "recipient": [4, 6]},
    }
    assert pmap.residual_pairs() == [(9, 7), (10, 7), (11, 7), (1, 1), (2, 1), (4, 3), (6, 5)]
    # one donor token spread over three recipient tokens: a third of its weight each
    assert pmap.transfer(["marker"]) == [(9, 7, 1 / 3), (10, 7, 1 / 3), (11, 7, 1 / 3)]
    assert pmap.transfer(["parameters"]) == [(4, 3, 1.0), (6, 5, 1.0)]
    # the other direction: three donor tokens onto two recipient tokens, by interval overlap
    span = SpanPair("x", (10, 11, 12), (4, 5))
    assert span.residual_pairs() == [(4, 10), (5, 11)]
    assert span.transfer() == [(4, 10, 1.0), (4, 11, 0.5), (5, 11, 0.5), (5, 12, 1.0)]
    rows = torch.tensor([[[0.0] * 10 + [0.2, 0.1, 0.3]]])  # [1 head, 1 query, 13 donor keys]
    moved = mapped_attention_values(rows, span.transfer(), (4, 5))
    torch.testing.assert_close(moved, torch.tensor([[[0.25, 0.35]]]))  # 0.2 + 0.1/2, 0.1/2 + 0.3
    assert float(moved.sum()) == pytest.approx(0.6)  # span mass conserved
    own = identity_map(pmap)
    assert all(r == d for r, d in own.residual_pairs())
    assert all(frac == 1.0 and r == d for r, d, frac in own.transfer())


def test_position_map_refuses_overlapping_spans() -> None:
    with pytest.raises(SteerkitError, match="recipient position 2"):
        PositionMap((SpanPair("a", (1,), (2,)), SpanPair("b", (3,), (2, 4))))


def test_recovered_fraction() -> None:
    assert recovered(clean=3.0, corrupted=1.0, patched=2.0) == 0.5
    assert recovered(clean=3.0, corrupted=1.0, patched=1.0) == 0.0
    assert recovered(clean=-2.0, corrupted=2.0, patched=-2.0) == 1.0
    assert recovered(1.0, 1.0, 1.0) != recovered(1.0, 1.0, 1.0)  # NaN: nothing to recover


# --- entry point -----------------------------------------------------------------------------------------------------


def test_patch_activations_main_logs_cells_and_identity(tracking_dir) -> None:
    patch_activations.main(["--model", "tiny-llama", "--limit", "2", "--layers", "0,2", "--corpus", ATTENTION_CORPUS])
    (run,) = all_runs()
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for kind in ("residual", "attention_row"):
        assert m[f"identity_{kind}_max_abs_logit_diff"] == 0.0 and m[f"identity_{kind}_kl"] == 0.0
        assert m[f"identity_{kind}_recovered_defined"] == 0  # own activations: nothing to recover, logged
    samples = mlflow.load_table("patch_samples.json", run_ids=[run.info.run_id])
    assert len(samples) == 2 * 2 * 5  # pairs x layers x (4 residual groups + attention row)
    cells = mlflow.load_table("patch_cells.json", run_ids=[run.info.run_id])
    assert len(cells) == 2 * 5
    assert len(tracking.load_jsonl_artifact(run.info.run_id, "samples/patches.jsonl")) == 20
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "recovered_heatmap.png" in artifacts


def test_patch_activations_bad_layer_fails_the_run(tracking_dir, monkeypatch, capsys) -> None:
    argv = ["x", "--model", "tiny-llama", "--limit", "1", "--layers", "0,77", "--corpus", ATTENTION_CORPUS]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(patch_activations.main)
    assert exc.value.code == 2
    assert "77" in capsys.readouterr().err.strip().splitlines()[-1]
    assert all_runs()[0].info.status == "FAILED"
