"""SAE file formats, converted at the boundary into the one `SAE` class.

Design note: one typed loader per format; keys are renamed once here and the rest of steerkit sees `SAE`.

- SAELens directory: `cfg.json` + `sae_weights.safetensors`. The hook point comes from `hook_name`
  (`blocks.12.hook_resid_post` -> layer 12, `resid_post`; top level, or under `metadata`/`meta` in SAELens >= 6),
  the activation from `architecture` (`standard` / `jumprelu` / `topk`) and `activation_fn` /
  `activation_fn_str` (`relu`, or `topk` with `activation_fn_kwargs.k`; `k` at top level in SAELens >= 6).
  Anything steerkit cannot reproduce exactly (non-residual hooks, per-head hooks, activation normalisation,
  a non-trivial scaling factor, other architectures) raises rather than loading something subtly different.
- GemmaScope `params.npz` (`W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold`; JumpReLU, no `b_dec` subtraction
  before encoding). The file has no hook metadata: `layer` comes from the caller or the conventional path
  `layer_12/width_16k/average_l0_82/params.npz`; GemmaScope residual SAEs read the block *output*
  (`resid_post`), the default here.
- A `train_sae` run's `sae/` artefact: `steerkit.tracking.local_artifact("runs:/<run_id>/sae")` downloads it
  (this package never imports MLflow), then it loads as a SAELens directory.
- A Hugging Face repo id with a folder, `google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82`, is
  fetched with `huggingface_hub.hf_hub_download` (the local cache or the network) and dispatched as above.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerkit.errors import SteerkitError
from steerkit.interventions.residual import HOOK_POINTS
from steerkit.sae.model import SAE, Activation, SAEConfig, parse_hook_name

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
NPZ_FILENAME = "params.npz"
_ARCH = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}


def _fold_b_dec(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite `x @ W_enc + b_enc` as `(x - b_dec) @ W_enc + b_enc'` with `b_enc' = b_enc + b_dec @ W_enc`."""
    w_enc, b_dec = tensors["W_enc"].double(), tensors["b_dec"].double()
    return {**tensors, "b_enc": (tensors["b_enc"].double() + b_dec @ w_enc).float()}


# --- GemmaScope params.npz --------------------------------------------------------------------------------------


def _npz_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with np.load(path) as data:
        for key in data.files:
            name = "W_" + key[2:] if key.lower().startswith("w_") else key
            out[name] = torch.from_numpy(np.asarray(data[key], dtype=np.float32))
    return out


def _layer_from_path(path: Path) -> int | None:
    match = re.search(r"layer_(\d+)", str(path))
    return int(match.group(1)) if match else None


def load_gemmascope_npz(path: str | Path, *, layer: int | None = None, hook: str = "resid_post") -> SAE:
    """A GemmaScope JumpReLU SAE from `params.npz`.

    Args:
        path: the `params.npz` file.
        layer: block index; None = parse `layer_<L>` from the path (raises when absent).
        hook: `resid_post` (GemmaScope residual SAEs read the block output) or `resid_pre`.
    """
    path = Path(path)
    if not path.is_file():
        raise SteerkitError(f"GemmaScope params file not found: {path}")
    if re.search(r"gemma-scope[^/]*-(mlp|att|transcoders)", str(path)):
        raise SteerkitError(f"{path} is not a residual-stream GemmaScope SAE (steerkit steers the residual stream)")
    if layer is None:
        layer = _layer_from_path(path)
        if layer is None:
            raise SteerkitError(f"cannot tell the layer of {path}: pass layer= (no 'layer_<L>' in the path)")
    if hook not in HOOK_POINTS:
        raise SteerkitError(f"unknown hook point {hook!r} (choose from {', '.join(HOOK_POINTS)})")
    tensors = _npz_tensors(path)
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise SteerkitError(f"{path} has no 2-D W_enc (keys: {sorted(tensors)})")
    d_in, d_sae = tensors["W_enc"].shape
    cfg = SAEConfig(
        d_in=int(d_in),
        d_sae=int(d_sae),
        activation="jumprelu",
        layer=layer,
        hook=hook,  # type: ignore[arg-type]  # checked above
        model=None,
        source=str(path),
    )
    for key in ("W_dec", "b_enc", "b_dec"):
        if key not in tensors:
            raise SteerkitError(f"{path} lacks {key} (keys: {sorted(tensors)})")
    return SAE.from_tensors(cfg, _fold_b_dec(tensors))


# --- SAELens directories ----------------------------------------------------------------------------------------


def _meta(cfg: dict[str, Any], key: str) -> Any:
    """A field at the top level or in SAELens 6's `metadata` / `meta` block."""
    for block in (cfg, cfg.get("metadata") or {}, cfg.get("meta") or {}):
        if isinstance(block, dict) and block.get(key) is not None:
            return block[key]
    return None


def _saelens_activation(cfg: dict[str, Any], where: Path) -> tuple[Activation, int | None]:
    arch = cfg.get("architecture", "standard")
    fn = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "jumprelu":
        return "jumprelu", None
    if arch == "topk" or (arch == "standard" and fn == "topk"):
        k = cfg.get("k", kwargs.get("k"))
        if k is None or float(k) != int(k):
            raise SteerkitError(f"topk SAE in {where} has no integer k (got {k!r})")
        return "topk", int(k)
    if arch == "standard" and fn == "relu":
        return "relu", None
    raise SteerkitError(f"unsupported SAELens architecture {arch!r} / activation {fn!r} in {where}")


def _check_saelens_extras(cfg: dict[str, Any], where: Path) -> None:
    norm = cfg.get("normalize_activations")
    if norm not in (None, False, "none"):
        raise SteerkitError(f"SAE in {where} normalises its inputs ({norm!r}); steerkit loads only 'none'")
    if _meta(cfg, "hook_head_index") is not None:
        raise SteerkitError(f"SAE in {where} reads one attention head; steerkit steers the residual stream")


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise SteerkitError(f"SAELens weights not found: {path}")
    tensors = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        raise SteerkitError(f"{path} has a non-trivial scaling_factor; fold it into W_dec first")
    return tensors


def load_saelens(directory: str | Path) -> SAE:
    """An SAE from a SAELens directory (`cfg.json` + `sae_weights.safetensors`), hook point from `hook_name`."""
    directory = Path(directory)
    cfg_path = directory / CFG_FILENAME
    if not cfg_path.is_file():
        raise SteerkitError(f"SAELens config not found: {cfg_path}")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise SteerkitError(f"{cfg_path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    name = _meta(raw, "hook_name") or _meta(raw, "hook_point")
    if name is None:
        raise SteerkitError(f"{cfg_path} has no hook_name")
    layer, hook = parse_hook_name(name)
    activation, k = _saelens_activation(raw, directory)
    _check_saelens_extras(raw, directory)
    cfg = SAEConfig(
        d_in=int(raw.get("d_in", 0)),
        d_sae=int(raw.get("d_sae", 0)),
        activation=activation,
        k=k,
        layer=layer,
        hook=hook,
        model=_meta(raw, "model_name"),
        source=str(directory),
    )
    tensors = _safetensors(directory / WEIGHTS_FILENAME)
    if raw.get("apply_b_dec_to_input", True) is False and "W_enc" in tensors and "b_dec" in tensors:
        tensors = _fold_b_dec(tensors)
    return SAE.from_tensors(cfg, tensors)


def save_saelens(sae: SAE, directory: str | Path) -> Path:
    """Write `cfg.json` (SAELens pre-6 field names, which SAELens 6 also reads) + `sae_weights.safetensors`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c = sae.cfg
    cfg = {
        "architecture": _ARCH[c.activation],
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": c.model or "",
        "hook_name": c.hook_name,
        "hook_layer": c.layer,
        "hook_head_index": None,
        "activation_fn_str": "topk" if c.activation == "topk" else "relu",
        "activation_fn_kwargs": {"k": c.k} if c.k is not None else {},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "prepend_bos": True,
        "steerkit": c.to_dict(),
    }
    tensors = {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in sae.named_parameters()}
    if c.activation == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().to("cpu", torch.float32).contiguous()
    save_file(tensors, str(directory / WEIGHTS_FILENAME))
    (directory / CFG_FILENAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


# --- Dispatch ---------------------------------------------------------------------------------------------------


def _load_local(path: Path, layer: int | None, hook: str | None) -> SAE:
    if path.is_dir() and (path / CFG_FILENAME).is_file():
        sae = load_saelens(path)
    elif path.is_dir() and (path / NPZ_FILENAME).is_file():
        return load_gemmascope_npz(path / NPZ_FILENAME, layer=layer, hook=hook or "resid_post")
    elif path.is_file() and path.suffix == ".npz":
        return load_gemmascope_npz(path, layer=layer, hook=hook or "resid_post")
    elif path.is_file() and (path.name == CFG_FILENAME or path.suffix == ".safetensors"):
        sae = load_saelens(path.parent)
    else:
        raise SteerkitError(f"no SAE at {path} (expected a dir with cfg.json + safetensors, or a params.npz)")
    if layer is not None or hook is not None:
        sae.check_hook(sae.cfg.layer if layer is None else layer, hook or sae.cfg.hook)
    return sae


def _download(repo_id: str, folder: str) -> Path:
    """Fetch a folder's cfg.json + weights, or its params.npz, from the Hub (or the local HF cache)."""
    from huggingface_hub import hf_hub_download

    errors: list[str] = []
    for names in ((CFG_FILENAME, WEIGHTS_FILENAME), (NPZ_FILENAME,)):
        try:
            paths = [hf_hub_download(repo_id, name, subfolder=folder or None) for name in names]
        except Exception as exc:  # noqa: BLE001  # hub errors vary by cause (offline, 404, auth): report them all
            errors.append(f"{names[0]}: {type(exc).__name__}")
            continue
        return Path(paths[-1]) if names == (NPZ_FILENAME,) else Path(paths[0]).parent
    raise SteerkitError(f"cannot fetch an SAE from {repo_id}/{folder} ({'; '.join(errors)})")


def load_sae(source: str | Path, *, layer: int | None = None, hook: str | None = None) -> SAE:
    """Load an SAE from a SAELens dir, a GemmaScope `params.npz`, or the Hugging Face Hub.

    Args:
        source: a local path (a `train_sae` run's `sae/` artefact: `tracking.local_artifact("runs:/<id>/sae")`);
            or a Hub repo id followed by the SAE's folder
            (`google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82`).
        layer, hook: for GemmaScope files, where the SAE sits (layer default: parsed from the path; hook
            default: `resid_post`); for SAELens dirs, an assertion: a mismatch with `hook_name` raises.

    Raises:
        SteerkitError: no SAE there, an unsupported format or hook point, or a hook mismatch.
    """
    if str(source).startswith("runs:/"):  # MLflow is read by steerkit.tracking only
        raise SteerkitError(f"resolve {source!r} with steerkit.tracking.local_artifact first, then load that path")
    path = Path(source)
    if path.exists():
        return _load_local(path, layer, hook)
    parts = str(source).strip("/").split("/")
    if len(parts) < 2 or str(source).startswith((".", "/", "~")):
        raise SteerkitError(f"no SAE at {source!r} (not a local path, nor owner/repo/folder on the Hub)")
    fetched = _download("/".join(parts[:2]), "/".join(parts[2:]))
    return _load_local(fetched, layer if layer is not None else _layer_from_path(Path(str(source))), hook)
