"""Tests for steerkit.core.models: geometry against config and weights, accessors against the module tree, errors,
chat formatting, the installed attention function as a pure delegate, and the embedded GGUF cache."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from steerkit.core.models import TINY_ARCHS, LoadedModel, embedded_gguf_path, load_model
from steerkit.errors import SteerkitError
from steerkit.interventions.attention import install

# Batch with left padding on row 1, so the delegate is exercised with a real attention mask too.
IDS = torch.tensor([[14, 70, 90, 33, 68, 101, 17, 3, 44, 59, 120, 7], [0, 0, 0, 0, 91, 38, 27, 66, 12, 5, 99, 150]])
MASK = torch.tensor([[1] * 12, [0] * 4 + [1] * 8])


def _blocks_and_attention(loaded: LoadedModel) -> tuple[torch.nn.ModuleList, str]:
    """The decoder blocks and the attention attribute name, read directly from the known HF module layout."""
    if loaded.arch == "gpt2":
        return loaded.model.transformer.h, "attn"
    return loaded.model.model.layers, "self_attn"


# --- geometry and accessors ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_geometry_matches_config_and_weights(tiny: Callable[[str], LoadedModel], arch: str) -> None:
    loaded = tiny(arch)
    cfg = loaded.model.config
    if arch == "gpt2":
        expected = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_head)
        assert loaded.model.transformer.wte.weight.shape[1] == loaded.d_model
    else:
        expected = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads)
        attn = loaded.model.model.layers[0].self_attn
        head_dim = attn.q_proj.out_features // loaded.n_heads
        assert attn.k_proj.out_features == loaded.n_kv_heads * head_dim
        assert loaded.model.model.embed_tokens.weight.shape[1] == loaded.d_model
    assert (loaded.n_layers, loaded.d_model, loaded.n_heads, loaded.n_kv_heads) == expected
    assert expected == ((4, 64, 4, 4) if arch == "gpt2" else (4, 64, 4, 2))  # what _tiny builds
    assert loaded.arch == ("gemma3_text" if arch == "gemma3" else arch)
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert not loaded.model.training


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_layers_and_attention_are_the_module_tree(tiny: Callable[[str], LoadedModel], arch: str) -> None:
    loaded = tiny(arch)
    blocks, attn_name = _blocks_and_attention(loaded)
    assert loaded.layers() is blocks
    assert len(loaded.layers()) == loaded.n_layers == len(blocks)
    for layer in range(loaded.n_layers):
        assert loaded.attention(layer) is getattr(blocks[layer], attn_name)


@pytest.mark.parametrize("bad", [-1, 4, True, 1.0])
def test_check_layer_rejects_out_of_range(tiny: Callable[[str], LoadedModel], bad: object) -> None:
    loaded = tiny("llama")
    with pytest.raises(SteerkitError, match=rf"layer {bad!r} out of range"):
        loaded.check_layer(bad)  # type: ignore[arg-type]
    with pytest.raises(SteerkitError, match=rf"layer {bad!r}"):
        loaded.attention(bad)  # type: ignore[arg-type]


def test_tiny_special_token_ids_match_the_tokenizer(tiny: Callable[[str], LoadedModel]) -> None:
    from steerkit.core.generation import eos_ids

    for arch in TINY_ARCHS:
        loaded = tiny(arch)
        tok, cfg = loaded.tokenizer, loaded.model.config
        assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|endoftext|>"
        assert eos_ids(loaded) == {tok.eos_token_id}, arch  # a generated "!" must not end generation as EOS
        assert (cfg.eos_token_id, cfg.pad_token_id) == (tok.eos_token_id, tok.pad_token_id), arch
        bang = loaded.model.get_input_embeddings().weight[tok.convert_tokens_to_ids("!")]
        assert bang.abs().sum() > 0, arch  # not zeroed as a padding embedding


def test_tiny_models_are_seeded() -> None:
    a, b = load_model("tiny-qwen2"), load_model("tiny-qwen2")
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "named"),
    [("no-such-model", "'no-such-model'"), ("tiny-mamba", "'mamba'"), ("/nowhere/x.gguf", "/nowhere/x.gguf")],
)
def test_unknown_spec_raises_naming_it(spec: str, named: str) -> None:
    with pytest.raises(SteerkitError, match=named) as info:
        load_model(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "named"), [({"dtype": "float8"}, "'float8'"), ({"device": "warp9"}, "'warp9'")])
def test_unknown_dtype_or_device_raises(kwargs: dict[str, str], named: str) -> None:
    with pytest.raises(SteerkitError, match=named):
        load_model("tiny-llama", **kwargs)


def test_dtype_is_applied() -> None:
    loaded = load_model("tiny-llama", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert loaded.describe()["dtype"] == "bfloat16"


# --- chat formatting -----------------------------------------------------------------------------------------


def test_format_prompt_uses_the_chat_template(tiny: Callable[[str], LoadedModel]) -> None:
    loaded = tiny("llama")
    assert loaded.format_prompt("fn a() {", chat=False) == "fn a() {"
    # The tiny template, rendered by hand for one user turn plus the generation prompt.
    assert loaded.format_prompt("fn a() {", chat=True) == "<|user|>fn a() {<|end|><|assistant|>"


def test_format_prompt_without_template_raises(tiny: Callable[[str], LoadedModel]) -> None:
    loaded = tiny("llama")
    tok = copy.deepcopy(loaded.tokenizer)
    tok.chat_template = None
    bare = dataclasses.replace(loaded, tokenizer=tok)
    assert bare.format_prompt("x", chat=False) == "x"
    with pytest.raises(SteerkitError, match="chat=True but model tiny-llama has no chat template"):
        bare.format_prompt("x", chat=True)


# --- the installed attention function is a pure delegate ------------------------------------------------


@torch.inference_mode()
def _prefill_and_step(loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a padded prefill and of one cached decode step."""
    out = loaded.model(input_ids=IDS, attention_mask=MASK, use_cache=True)
    step_mask = torch.cat([MASK, torch.ones(2, 1, dtype=MASK.dtype)], dim=1)
    step = loaded.model(input_ids=torch.tensor([[5], [6]]), attention_mask=step_mask,
                        cache=out.cache, use_cache=True)  # fmt: skip
    return out.logits, step.logits


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_installed_attention_equals_plain_sdpa(arch: str) -> None:
    loaded = load_model(f"tiny-{arch}")  # own copy: this test switches the implementation
    assert loaded.model.config._attn_implementation == "steerkit_sdpa"
    steerkit_logits = _prefill_and_step(loaded)
    loaded.model.set_attn_implementation("sdpa")
    plain_logits = _prefill_and_step(loaded)
    for ours, plain in zip(steerkit_logits, plain_logits, strict=True):
        assert torch.equal(ours, plain)


@pytest.mark.parametrize(
    "arch",
    [
        "llama",
        "gemma3",
        "gpt2",
    ],
)
def test_installed_attention_equals_plain_eager(arch: str) -> None:
    loaded = load_model(f"tiny-{arch}")
    loaded.model.set_attn_implementation("eager")
    plain_logits = _prefill_and_step(loaded)
    install(loaded.model)
    assert loaded.model.config._attn_implementation == "steerkit_eager"
    steerkit_logits = _prefill_and_step(loaded)
    for ours, plain in zip(steerkit_logits, plain_logits, strict=True):
        assert torch.equal(ours, plain)


def test_install_is_idempotent(tiny: Callable[[str], LoadedModel]) -> None:
    loaded = tiny("llama")
    install(loaded.model)
    assert loaded.model.config._attn_implementation == "steerkit_sdpa"


# --- embedded model ------------------------------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_reload_from_cache_gives_identical_logits(embedded: LoadedModel) -> None:
    again = load_model()
    assert again.model is not embedded.model
    ids = embedded.tokenizer("/// #[test]\nfn gcd(a: u64, b: u64) -> u64 {\n", return_tensors="pt").input_ids
    assert again.tokenizer("/// #[test]\nfn gcd(a: u64, b: u64) -> u64 {\n").input_ids == ids[0].tolist()
    with torch.inference_mode():
        assert torch.equal(embedded.model(ids).logits, again.model(ids).logits)
    assert again.describe() == embedded.describe()


@pytest.mark.embedded
def test_embedded_describe_has_gguf_sha256(embedded: LoadedModel) -> None:
    path = Path(embedded_gguf_path("smollm2-135m-instruct"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    facts = embedded.describe()
    assert facts["source_sha256"] == digest == embedded.source_sha256
    cfg = embedded.model.config
    assert facts["model"] == "smollm2-135m-instruct" and facts["arch"] == "llama"
    assert (facts["n_layers"], facts["d_model"]) == (cfg.num_hidden_layers, cfg.hidden_size)
    assert (facts["n_heads"], facts["n_kv_heads"]) == (cfg.num_attention_heads, cfg.num_key_value_heads)
    assert facts["dtype"] == "float32" and facts["device"] == "cpu"


@pytest.mark.embedded
def test_embedded_chat_template_is_chatml(embedded: LoadedModel) -> None:
    text = embedded.format_prompt("fn a() {", chat=True)
    assert text.endswith("<|im_start|>user\nfn a() {<|im_end|>\n<|im_start|>assistant\n")


def test_dtype_auto_is_bf16_only_where_native(monkeypatch):
    from steerkit.core import models

    monkeypatch.setattr(models, "native_bf16", lambda device: False)
    assert load_model("tiny-llama", dtype="auto").describe()["dtype"] == "float32"
    monkeypatch.setattr(models, "native_bf16", lambda device: True)
    assert load_model("tiny-llama", dtype="auto").describe()["dtype"] == "bfloat16"
    with pytest.raises(SteerkitError, match="unknown dtype 'bf17'"):
        load_model("tiny-llama", dtype="bf17")
