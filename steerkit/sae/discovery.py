"""Seed 001, phase 2: SAE features that separate correct from incorrect baseline solutions.

Design note: features are read at the last prompt token (the SAE's own layer and hook); each is tested with
Fisher's exact test on firing vs passing, BH over the features that fire and are not generic (features firing on
more than a share of generic texts are dropped before testing, so the family is declared first). Controls: a
pool of features with similar firing rates, and the difference-of-means direction (usable only when its norm is
not tiny next to the residual norm).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerkit.core.activations import last_token_residuals
from steerkit.core.models import LoadedModel
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.sae.model import SAE

GENERIC_MODULES = (
    "abc argparse array asyncio base64 bisect calendar collections contextlib copy csv dataclasses datetime "
    "decimal difflib email enum fractions functools glob gzip hashlib heapq hmac html inspect io itertools json "
    "logging math mimetypes operator os pathlib pickle pprint queue random re secrets shutil socket sqlite3 "
    "statistics string struct subprocess tempfile textwrap threading timeit tokenize unittest uuid warnings zipfile"
).split()


def generic_texts(limit: int) -> list[str]:
    """Generic (non-task) texts: first paragraphs of stdlib module docstrings + the entropy corpus prompts."""
    texts = []
    for name in GENERIC_MODULES:
        doc = (importlib.import_module(name).__doc__ or "").strip()
        if doc:
            texts.append(doc.split("\n\n")[0].strip())
    corpus = Path(__file__).resolve().parents[2] / "corpus" / "entropy_prompts.json"
    texts += [cp.prompt for cp in load_prompt_corpus(corpus).prompts]
    return texts[:limit] if limit else texts


def encode_last_token(
    loaded: LoadedModel, sae: SAE, prompts: list[Any], layer: int, hook: str, chat: bool, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residuals `[n, d_model]`, SAE feature activations `[n, d_sae]`) at the last prompt token."""
    resid = last_token_residuals(loaded, prompts, layer, hook=hook, chat=chat, batch_size=batch)[layer]  # type: ignore[arg-type]
    with torch.no_grad():
        return resid, sae.encode(resid)


def dom_direction(resid: torch.Tensor, passed: np.ndarray, min_relative: float) -> dict[str, Any]:
    """Difference of means (correct - incorrect) `[d_model]`, its norm and norm / mean residual norm."""
    labels = torch.as_tensor(passed, dtype=torch.bool)
    vec = resid[labels].mean(0) - resid[~labels].mean(0)
    norm, mean_norm = float(vec.norm()), float(resid.norm(dim=-1).mean())
    relative = norm / mean_norm if mean_norm > 0 else 0.0
    return {
        "vector": vec.tolist(),
        "norm": norm,
        "mean_residual_norm": mean_norm,
        "relative_norm": relative,
        "usable": bool(relative >= min_relative),
    }


def control_pool(rates: np.ndarray, target: int, exclude: set[int], size: int) -> list[int]:
    """Up to `size` features with firing rate closest to `target`'s (ties by index), excluding `exclude`."""
    order = sorted((abs(float(rates[j]) - float(rates[target])), j) for j in range(rates.size) if j not in exclude)
    return [int(j) for _, j in order[:size]]
