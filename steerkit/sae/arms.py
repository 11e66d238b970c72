"""Steering arms at an SAE's hook point, and steered-vs-baseline comparison of per-task code outcomes.

Design note: an `Arm` is one direction to steer along: an SAE feature (its raw decoder row, through
`SAE.steering`, which refuses any hook point but the SAE's own) or a free vector (difference of means, a random
control direction) added with `ResidualAdd` at the same layer and hook. `compare` pairs a steered record of
`steerkit.sae.codegen.solve_problems` with the baseline record of the same task; `arm_metrics` summarises the
pairs with `steerkit.sae.features` (flip rates, similarities, length ratio, syntax-error rate). Pure apart
from building interventions: logging is the caller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from steerkit.core.positions import Selector
from steerkit.interventions import ResidualAdd
from steerkit.sae import SAE
from steerkit.sae.features import divergence, flip_counts, sequence_similarity, syntax_error_rate
from steerkit.stats import join_by_id


@dataclass(frozen=True)
class Arm:
    """A steering direction at the SAE's hook point: an SAE feature (`SAE.steering`) or a raw vector."""

    name: str
    sae: SAE
    feature: int | None = None
    vector: torch.Tensor | None = None

    def intervention(self, coef: float, positions: Selector) -> ResidualAdd:
        if self.feature is not None:
            return self.sae.steering(self.feature, coef, positions=positions)
        self.sae.check_hook(self.sae.cfg.layer, self.sae.cfg.hook)
        return ResidualAdd(self.sae.cfg.layer, self.vector, coef=coef, hook=self.sae.cfg.hook, positions=positions)

    def norm(self) -> float:
        vec = self.sae.decoder_direction(self.feature) if self.feature is not None else self.vector
        return float(torch.as_tensor(vec).norm())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "feature": self.feature, "norm": self.norm()}


def compare(base: dict[str, Any], steered: dict[str, Any], arm: str, coef: float) -> dict[str, Any]:
    """One task's steered record against its baseline record (no token ids: tables stay small).

    The baseline outcome is the re-run of the baseline's program in the steered program's sandbox batch
    (`rerun_*`, from `solve_problems(companions=...)`) when present, else the recorded one. A timeout on either
    side makes the pair missing (`paired` False: no flip either way); flip statistics use paired rows only.
    """
    rerun = "rerun_status" in steered
    base_passed = bool(steered["rerun_passed"] if rerun else base["passed"])
    base_status = steered["rerun_status"] if rerun else base["status"]
    paired = "timeout" not in (base_status, steered["status"])
    return {
        "task_id": steered["task_id"],
        "arm": arm,
        "coefficient": coef,
        "paired": paired,
        "baseline_status": base_status,
        "recorded_baseline_passed": bool(base["passed"]),
        "baseline_passed": base_passed,
        "steered_passed": bool(steered["passed"]),
        "corrected": paired and not base_passed and bool(steered["passed"]),
        "corrupted": paired and base_passed and not steered["passed"],
        "identical": base["completion"] == steered["completion"],
        "char_similarity": sequence_similarity(base["completion"], steered["completion"]),
        "token_similarity": sequence_similarity(list(base["token_ids"]), list(steered["token_ids"])),
        "status": steered["status"],
        "error_kind": steered["error_kind"],
        "syntax_ok": steered["syntax_ok"],
        "steered_completion": steered["completion"],
        "steered_code": steered["code"],
        "baseline_completion": base["completion"],
        "_token_ids": steered["token_ids"],
        "_baseline_token_ids": base["token_ids"],
    }


def paired_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose baseline and steered programs both ran to an outcome (no timeout on either side)."""
    return [r for r in rows if r.get("paired", True)]


def with_reference(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the coefficient-0 arm's outcome of the same task (joined by task id): `zero_passed`, and
    `zero_paired` (both that arm's pair and this row's pair ran without a timeout)."""
    joined = join_by_id(rows, reference, key="task_id", names=("steered", "coefficient 0"))
    return [{**r, "zero_passed": z["steered_passed"], "zero_paired": r["paired"] and z["paired"]} for r, z in joined]


def arm_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Flip counts and rates over the paired rows (`n_missing` = pairs lost to a timeout), divergence over all;
    with `with_reference` rows, the discordant counts vs the coefficient-0 arm (`vs_zero_b`: it failed, this
    arm passed; `vs_zero_c`: the reverse) over `vs_zero_n` tasks."""
    both = paired_rows(rows)
    zero = [r for r in rows if r.get("zero_paired")]
    vs_zero = {
        "vs_zero_n": len(zero),
        "vs_zero_b": sum(not r["zero_passed"] and r["steered_passed"] for r in zero),
        "vs_zero_c": sum(r["zero_passed"] and not r["steered_passed"] for r in zero),
    }
    flips = flip_counts([r["baseline_passed"] for r in both], [r["steered_passed"] for r in both])
    div = divergence(
        [r["baseline_completion"] for r in rows],
        [r["steered_completion"] for r in rows],
        [r["_baseline_token_ids"] for r in rows],
        [r["_token_ids"] for r in rows],
    )
    return {
        **{k: v for k, v in flips.to_dict().items()},
        **div,
        "syntax_error_rate": syntax_error_rate([r["steered_code"] for r in rows]),
        "pass_rate": sum(r["steered_passed"] for r in both) / len(both) if both else math.nan,
        "n_identical": sum(r["identical"] for r in rows),
        "n_missing": len(rows) - len(both),
        **(vs_zero if rows and "zero_paired" in rows[0] else {}),
    }


def public(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def examples_text(rows: list[dict[str, Any]], n: int) -> str:
    """Markdown with up to `n` examples, flipped tasks first."""
    ordered = sorted(rows, key=lambda r: (not (r["corrected"] or r["corrupted"]), r["task_id"]))
    parts = []
    for r in ordered[:n]:
        parts.append(
            f"## task {r['task_id']}: baseline {'pass' if r['baseline_passed'] else 'fail'} -> steered "
            f"{'pass' if r['steered_passed'] else 'fail'} ({r['status']} {r['error_kind']})\n\n"
            f"### baseline\n```\n{r['baseline_completion']}\n```\n### steered\n```\n{r['steered_completion']}\n```\n"
        )
    return "\n".join(parts)
