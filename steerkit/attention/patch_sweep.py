"""Seed 002, activation patching: move the Python item's activations into the Rust item of the same task.

Design note: donor = the Python test item, recipient = the Rust one, both cut after the first test marker; spans
are mapped by label (`interventions.position_map`). Per layer: the recipient's residual stream at `resid_post` is
replaced with the donor's on each span group (and all together), and the marker's attention row is replaced with
the donor's mapped row; `recovered` = the fraction of the donor-recipient logit difference the patch recovers.
The identity control patches the recipient with its own activations at every layer (must change nothing).
"""

from __future__ import annotations

import json
import math
from typing import Any

from steerkit.attention.patching import (
    SPANS,
    PatchScorer,
    attention_row_patch,
    encode_patch_prompt,
    pair_map,
    patched_logits,
    record_run,
    residual_patch,
)
from steerkit.core.checks import max_abs_diff
from steerkit.core.models import LoadedModel
from steerkit.core.progress import progress as progress_bar
from steerkit.core.records import RecordLog
from steerkit.interventions.position_map import identity_map
from steerkit.metrics import kl_divergence
from steerkit.stats.compare import median_difference_ci

GROUPS = (*SPANS, "all")


def identity_control(loaded: LoadedModel, rec_prompt: Any, recipient: Any, pmap: Any, layers: tuple[int, ...]) -> dict:
    """The recipient patched with its own residuals and attention rows at every layer: must equal the unpatched."""
    own = identity_map(pmap)
    out = {}
    for kind, patches in (
        ("residual", [residual_patch(layer, recipient, own, SPANS) for layer in layers]),
        ("attention_row", [attention_row_patch(layer, recipient, own) for layer in layers]),
    ):
        logits = patched_logits(loaded, rec_prompt, patches)
        out[f"identity_{kind}_max_abs_logit_diff"] = max_abs_diff(logits, recipient.logits)
        out[f"identity_{kind}_kl"] = float(kl_divergence(recipient.logits, logits))
        scorer = PatchScorer(recipient.logits, recipient.logits)
        out[f"identity_{kind}_recovered_defined"] = not math.isnan(scorer.score(logits)["recovered"])
    return out


def run_pair(loaded: LoadedModel, donor_item: Any, rec_item: Any, layers: tuple[int, ...]) -> tuple[list[dict], dict]:
    """Every (layer, patch) of one pair: rows of scores, plus the pair's identity checks."""
    donor_prompt, rec_prompt = encode_patch_prompt(loaded, donor_item), encode_patch_prompt(loaded, rec_item)
    pmap = pair_map(donor_item, donor_prompt, rec_item, rec_prompt)
    donor, recipient = record_run(loaded, donor_prompt, layers), record_run(loaded, rec_prompt, layers)
    scorer = PatchScorer(donor.logits, recipient.logits)
    checks = identity_control(loaded, rec_prompt, recipient, pmap, layers)
    t_d, t_r = scorer.tokens
    base = {"task": rec_item.task, "donor": donor_item.id, "recipient": rec_item.id, "donor_top": t_d}
    base |= {"recipient_top": t_r, "donor_top_text": loaded.tokenizer.decode([t_d])}
    base |= {"recipient_top_text": loaded.tokenizer.decode([t_r]), "position_map": json.dumps(pmap.to_dict())}
    rows = []
    for layer in layers:
        patches: dict[tuple[str, str], Any] = {
            ("residual", g): residual_patch(layer, donor, pmap, SPANS if g == "all" else (g,)) for g in GROUPS
        }
        patches[("attention_row", "marker_row")] = attention_row_patch(layer, donor, pmap)
        for (kind, group), patch in patches.items():
            score = scorer.score(patched_logits(loaded, rec_prompt, [patch]))
            rows.append({**base, "layer": layer, "kind": kind, "group": group, **score})
    return rows, checks


def cell_table(rows: list[dict], seed: int) -> list[dict]:
    """Median `recovered` (and recovered_kl) per (layer, kind, group) over pairs, with bootstrap 95% CIs."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["layer"], r["kind"], r["group"]), []).append(r)
    out = []
    for (layer, kind, group), sel in cells.items():
        entry: dict[str, Any] = {"layer": layer, "kind": kind, "group": group, "n_pairs": len(sel)}
        for metric in ("recovered", "recovered_kl"):
            vals = [r[metric] for r in sel if not math.isnan(r[metric])]
            med, low, high = median_difference_ci(vals, seed=seed) if vals else (None, None, None)
            entry |= {f"{metric}_median": med, f"{metric}_low": low, f"{metric}_high": high, f"{metric}_n": len(vals)}
        out.append(entry)
    return out


def run_pairs(
    loaded: LoadedModel, pairs: list[tuple[Any, Any]], layers: tuple[int, ...], log: RecordLog
) -> tuple[list[dict], dict[str, Any]]:
    """Every pair's rows (appended to `log`, flushed per pair) and the identity checks over pairs (worst value;
    booleans counted)."""
    rows: list[dict] = []
    checks: dict[str, Any] = {}
    for donor_item, rec_item in progress_bar(pairs, desc="patch pairs", unit="pair"):
        pair_rows, pair_checks = run_pair(loaded, donor_item, rec_item, layers)
        for key, value in pair_checks.items():
            checks[key] = (
                max(checks.get(key, value), value) if not isinstance(value, bool) else checks.get(key, 0) + value
            )
        for row in pair_rows:
            log.append(row)
        log.flush()
        rows += pair_rows
    return rows, checks
