"""Single-forward-pass attention knockout (seed 002, phase 2): samples, control edges, metrics, layer tests.

Design note: one forward pass over an item's whole code (teacher forcing) gives every number at once, because
attention is causal: the logits at the last token of the test marker are the next-token logits of the prompt
that ends there, and the tokens after the marker are a reference continuation whose NLL measures a perplexity
change. The knocked edges go from every marker token (query) to the target tokens in the signature (keys):
causally valid, since the marker comes after the definition. The control knocks out edges from the same queries
to random keys drawn from the positions before the first marker token, excluding the targets, the marker and
position 0 (the attention sink every row leans on: the targets never include it, so a
control that could hit it would be a far stronger intervention than the one it controls for). Every edit acts on
marker rows and later, so the prefix before the marker is computed once per item into a KV cache and each
condition runs only the rest (on CPU this roughly halves the cost of a layer sweep). The control's keys are
drawn in `knockout_controls`, matched by the attention mass removed, not only by the edge count.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats as sps
from transformers import DynamicCache

from steerkit.core.models import LoadedModel
from steerkit.core.positions import EncodedPrompt, Explicit
from steerkit.corpora.attention_pairs import AttentionItem, encode_item
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionEdit, steer
from steerkit.metrics import kl_divergence, top1_changed, topk_overlap
from steerkit.stats import benjamini_hochberg
from steerkit.stats.compare import median_difference_ci

TARGET_CHOICES = ("function_name", "parameters", "both")


@dataclass(frozen=True)
class KnockoutSample:
    """One test item, encoded, with its resolved positions.

    Attributes:
        item: the corpus item.
        encoded: its code as the model sees it.
        sources: marker token positions (every occurrence): the knocked queries.
        targets: target token positions in the signature: the knocked keys.
        first_marker: first marker token; metrics "from the marker on" start here.
        prompt_end: last token of the first marker occurrence: the end of the prompt "code up to the marker".
    """

    item: AttentionItem
    encoded: EncodedPrompt
    sources: tuple[int, ...]
    targets: tuple[int, ...]
    first_marker: int
    prompt_end: int

    @property
    def id(self) -> str:
        return self.item.id


def prepare_sample(loaded: LoadedModel, item: AttentionItem, target: str = "function_name") -> KnockoutSample:
    """Encode a test item and resolve its marker and target tokens (`target`: function_name/parameters/both)."""
    if target not in TARGET_CHOICES:
        raise SteerkitError(f"unknown knockout target {target!r} (choose from {', '.join(TARGET_CHOICES)})")
    encoded = encode_item(loaded.tokenizer, item)
    sources = tuple(sorted(item.marker_selector().resolve(encoded).indices))
    names = ("function_name", "parameters") if target == "both" else (target,)
    targets = tuple(sorted({t for n in names for t in item.target_selector(n).resolve(encoded).indices}))
    first_span = item.marker_selector().spans(encoded)[0]
    first_tokens = encoded.char_span_tokens(*first_span)
    if max(targets) >= sources[0]:
        raise SteerkitError(f"item {item.id!r}: target token {max(targets)} is not before the marker {sources[0]}")
    if first_tokens[-1] >= len(encoded) - 1:
        raise SteerkitError(f"item {item.id!r}: nothing follows the marker (no reference continuation)")
    return KnockoutSample(item, encoded, sources, targets, sources[0], first_tokens[-1])


def knockout_edit(
    sample: KnockoutSample, layers: tuple[int, ...], keys: Sequence[int], op: str = "knockout", value: float = 1.0
) -> AttentionEdit:
    """`AttentionEdit` from the sample's marker tokens to `keys` at `layers`."""
    return AttentionEdit(layers, Explicit(sample.sources), Explicit(tuple(keys)), op, value)  # type: ignore[arg-type]


@torch.inference_mode()
def tail_logits(loaded: LoadedModel, sample: KnockoutSample, conditions: Sequence[Sequence[Any]]) -> list[torch.Tensor]:
    """Float32 logits `[len - first_marker, vocab]` (positions from the first marker token on) per condition.

    The tokens before the first marker are computed once into a KV cache: every edit here acts on marker rows
    and later, so that prefix is the same under every condition. Each condition (a list of interventions; `[]`
    = the unhooked model) then runs the rest of the sequence on its own copy of the cache.
    """
    ids = torch.tensor([sample.encoded.ids], device=loaded.device)
    prefix = sample.first_marker
    cache = DynamicCache(config=loaded.model.config)
    loaded.model(input_ids=ids[:, :prefix], cache=cache, use_cache=True, logits_to_keep=1)
    positions = torch.arange(prefix, ids.shape[1], device=loaded.device)[None]
    out = []
    for interventions in conditions:
        with steer(loaded, *interventions, prompts=[sample.encoded]) as state:
            state.query_start = prefix
            logits = loaded.model(
                input_ids=ids[:, prefix:], position_ids=positions, cache=copy.deepcopy(cache), use_cache=True
            ).logits
        out.append(logits[0].float().cpu())
    return out


def sample_metrics(sample: KnockoutSample, base: torch.Tensor, edited: torch.Tensor, k: int) -> dict[str, float]:
    """Metrics of one sample from its tail logits (`tail_logits`): baseline vs edited.

    Returns:
        kl_last, top1_changed_last, topk_overlap_last at the last marker token (prompt end); kl_mean and
        top1_changed_frac over every position from the first marker token on; nll_base, nll_edited (mean NLL
        in nats of the reference continuation: the tokens after the marker, teacher-forced) and nll_delta.
    """
    last = sample.prompt_end - sample.first_marker
    ids = torch.tensor(sample.encoded.ids[sample.prompt_end + 1 :])
    nll = {}
    for name, logits in (("base", base), ("edited", edited)):
        logp = torch.log_softmax(logits[last:-1].double(), dim=-1)
        nll[name] = float(-logp.gather(1, ids[:, None]).mean())
    kl_all = kl_divergence(base, edited)
    return {
        "kl_last": float(kl_all[last]),
        "top1_changed_last": float(top1_changed(base[last], edited[last])),
        "topk_overlap_last": float(topk_overlap(base[last], edited[last], k)),
        "kl_mean": float(kl_all.mean()),
        "top1_changed_frac": float(top1_changed(base, edited).double().mean()),
        "nll_base": nll["base"],
        "nll_edited": nll["edited"],
        "nll_delta": nll["edited"] - nll["base"],
    }


def paired_test(knocked: Sequence[float], control: Sequence[float], seed: int = 0) -> dict[str, float | None]:
    """Knockout vs control over samples: Wilcoxon signed-rank (primary), paired t, median difference + 95% CI.

    All differences zero: Wilcoxon p = 1.0 (no evidence either way, as `compare.compare_continuous`); fewer
    than 2 samples: p values None.
    """
    a, b = np.asarray(knocked, dtype=float), np.asarray(control, dtype=float)
    diffs = a - b
    if diffs.size < 2:
        wil, tt = None, None
    elif np.all(diffs == 0):
        wil, tt = 1.0, None
    else:
        wil = float(sps.wilcoxon(a, b, zero_method="wilcox").pvalue)
        t_p = float(sps.ttest_rel(a, b).pvalue)
        tt = t_p if np.isfinite(t_p) else None
    median, low, high = median_difference_ci(diffs, seed=seed) if diffs.size else (None, None, None)
    return {"wilcoxon_p": wil, "ttest_p": tt, "median_diff": median, "median_diff_low": low, "median_diff_high": high}


def layer_tests(
    rows: Sequence[dict[str, Any]], metric: str, alpha: float = 0.05, seed: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """One paired test per layer label of `rows` (`layer`, `knockout_<metric>`, `control_<metric>`), BH over the
    layers (the declared family). Returns (one row per layer, family size)."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))  # in the order of the sweep
    out = []
    for layer in layers:
        sel = [r for r in rows if r["layer"] == layer]
        test = paired_test([r[f"knockout_{metric}"] for r in sel], [r[f"control_{metric}"] for r in sel], seed)
        out.append({"layer": layer, "metric": metric, "n": len(sel), **test})
    bh = benjamini_hochberg([r["wilcoxon_p"] for r in out], alpha=alpha)
    for r, q, rej in zip(out, bh.q_values, bh.rejected):
        r["wilcoxon_q"], r["rejected"] = q, rej
    return out, bh.family_size


__all__ = [
    "TARGET_CHOICES",
    "KnockoutSample",
    "knockout_edit",
    "layer_tests",
    "paired_test",
    "prepare_sample",
    "sample_metrics",
    "tail_logits",
]
