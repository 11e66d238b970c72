"""Tiny random models for mechanics tests: no download, seeded, a few layers.

The tokenizer is byte-level BPE with no merges (one token per byte) built in memory with `tokenizers`, so it
has offset mappings and a chat template like a real one while needing no file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_tokenizer() -> Any:
    """A fast tokenizer with one token per byte, special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=_SPECIALS[0], pad_token=_SPECIALS[0])
    tok.add_special_tokens({"additional_special_tokens": _SPECIALS[1:]})
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def _config(arch: str, tok: Any) -> Any:
    import transformers as tf

    special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.eos_token_id}
    common: dict[str, Any] = {"vocab_size": len(tok), **special}
    llama_like = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **common,
    )
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "gemma":
        return tf.GemmaConfig(head_dim=16, **llama_like)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(head_dim=16, sliding_window=64, **llama_like)
    return tf.GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=512, **common)


def tiny_model(arch: str) -> tuple[nn.Module, Any]:
    """A seeded random `arch` causal LM (4 layers, d_model 64, GQA where the family has it)."""
    from transformers import AutoModelForCausalLM

    tok = byte_tokenizer()
    config = _config(arch, tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    return model, tok
