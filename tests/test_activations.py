"""Residual capture against the model's own `output_hidden_states` (an independent path)."""

from __future__ import annotations

import pytest
import torch

from steerkit.core.activations import ResidualCapture, last_token_residuals, token_residuals
from steerkit.core.generation import Prompt
from steerkit.errors import SteerkitError
from steerkit.interventions import ResidualAdd

TEXTS = ["def add(a, b):\n    return a + b", "fn main() {}", "A longer prompt about lists and loops in code."]


def _hidden_states(loaded, text: str) -> tuple[torch.Tensor, ...]:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = loaded.model(input_ids=ids, output_hidden_states=True)
    return tuple(h[0].float() for h in out.hidden_states)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_resid_pre_and_post_match_hidden_states(tiny, arch: str) -> None:
    loaded = tiny(arch)
    layers = list(range(loaded.n_layers - 1))  # HF's last hidden state is after the final norm
    pre = last_token_residuals(loaded, TEXTS, layers, hook="resid_pre", batch_size=2)
    post = last_token_residuals(loaded, TEXTS, layers, hook="resid_post", batch_size=2)
    for i, text in enumerate(TEXTS):
        hs = _hidden_states(loaded, text)
        for layer in layers:
            torch.testing.assert_close(pre[layer][i], hs[layer][-1], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(post[layer][i], hs[layer + 1][-1], rtol=1e-4, atol=1e-5)


def test_token_residuals_are_unpadded_and_skip_first(tiny) -> None:
    loaded = tiny("llama")
    rows = token_residuals(loaded, TEXTS, 1, batch_size=3)
    full = token_residuals(loaded, TEXTS, 1, batch_size=1, skip_first=False)
    for text, row, whole in zip(TEXTS, rows, full):
        hs = _hidden_states(loaded, text)
        assert row.shape == (hs[2].shape[0] - 1, loaded.d_model)
        torch.testing.assert_close(whole, hs[2], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(row, hs[2][1:], rtol=1e-4, atol=1e-5)


def test_capture_sees_steering_applied_earlier_in_the_same_pass(tiny) -> None:
    loaded = tiny("llama")
    vec = torch.ones(loaded.d_model)
    plain = last_token_residuals(loaded, [Prompt("a", TEXTS[0])], 0)[0]
    added = last_token_residuals(
        loaded, [Prompt("a", TEXTS[0])], 0, interventions=[ResidualAdd(layer=0, vector=vec, coef=2.0)]
    )[0]
    torch.testing.assert_close(added - plain, 2.0 * vec[None], rtol=0, atol=1e-5)


def test_bad_hook_and_layer_are_errors(tiny) -> None:
    loaded = tiny("llama")
    with pytest.raises(SteerkitError, match="resid_mid"):
        last_token_residuals(loaded, TEXTS, 0, hook="resid_mid")  # type: ignore[arg-type]
    with pytest.raises(SteerkitError, match="99"):
        last_token_residuals(loaded, TEXTS, 99)
    with pytest.raises(SteerkitError, match="batch_size"):
        last_token_residuals(loaded, TEXTS, 0, batch_size=0)
    assert ResidualCapture(0).records == {}
