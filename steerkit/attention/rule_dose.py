"""Calibrating the dose of a named n50 edge rule (the edges `generate_n50` scales) on the calibration split.

Design note: the phase-1 calibration in `dose` targets marker -> function-name edges of the attention-pairs
corpus; `generate_n50` scales a named edge rule (`signature_to_doctest`, `generated_to_doctest`, ...) on the n50
corpus, so a scale chosen there does not transfer. `RuleDoseObjective` calibrates the rule itself: the baseline
continuations of the calibration prompts are generated once (identity edit, the generate_n50 code path), then
each trial reads the applied dose at its scale with `applied_dose.applied_dose` (edge share at the layer and KL
over the generated positions, teacher-forced), the very figures generate_n50 logs as its dose. Objective:
|steered share - target share|. Rules with generated sources have no edited query in the prompt alone, which is
why the continuation is part of the measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from steerkit.attention.applied_dose import applied_dose
from steerkit.attention.dose import DoseSettings, ScaleTrials
from steerkit.attention.edge_rules import attention_scale
from steerkit.core.checks import IDENTITY_KEY, identity_logits
from steerkit.core.generation import GenerationConfig, Prompt, generate
from steerkit.core.models import LoadedModel
from steerkit.errors import SteerkitError

Row = dict[str, Any]


class RuleDoseObjective(ScaleTrials):
    """|share on the rule's edges at one scale - target share|, over the baseline continuations (teacher-forced)."""

    def __init__(
        self,
        loaded: LoadedModel,
        prompts: Sequence[Prompt],
        rule: str,
        layer: int,
        target_share: float,
        settings: DoseSettings,
        max_new_tokens: int,
        record: Callable[[Row, list[Row]], None] = lambda metrics, rows: None,
    ):
        if not 0.0 < target_share < 1.0:
            raise SteerkitError(f"target_share must be in (0, 1), got {target_share!r}")
        self.loaded, self.prompts, self.rule, self.layer = loaded, list(prompts), rule, layer
        self.reference, self.settings, self.record = target_share, settings, record
        self.edit_1 = attention_scale(rule, layer, 1.0)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=settings.batch_size, chat=settings.chat)
        gens = generate(loaded, self.prompts, interventions=[self.edit_1], config=cfg, progress=False)
        self.continuations = {g.prompt_id: list(g.token_ids) for g in gens}

    def evaluate(self, scale: float) -> dict[str, Any]:
        """Applied share, objective and KL over the generated positions at `scale`, with the per-prompt rows."""
        s = self.settings
        summary, rows = applied_dose(
            self.loaded,
            self.prompts,
            self.continuations,
            self.edit_1,
            attention_scale(self.rule, self.layer, scale),
            layer=self.layer,
            chat=s.chat,
            batch_size=s.batch_size,
        )
        steered = summary["dose_share_steered"]
        return {
            "scale": scale,
            "steered_level": steered,
            "natural_level": summary["dose_share_baseline"],
            "objective": abs(steered - self.reference),
            "kl_mean": summary["kl_generated_mean"],
            "kl_max": summary["kl_generated_max"],
            "rows": rows,
        }

    def identity_check(self) -> dict[str, float]:
        """Unhooked vs scale-1.0 logits (must be identical), and KL at scale 1.0 through the trial code path."""
        s = self.settings
        checks, _ = identity_logits(self.loaded, self.prompts, [self.edit_1], chat=s.chat, batch_size=s.batch_size)
        at_1 = self.evaluate(1.0)
        return {
            IDENTITY_KEY: checks[IDENTITY_KEY],
            "kl_at_scale_1": at_1["kl_max"],
            "natural_share": at_1["natural_level"],
        }

    def describe(self) -> dict[str, Any]:
        return {"edge_rule": self.rule, "metric": "total_mass", "target_share": self.reference}


__all__ = ["RuleDoseObjective"]
