"""Seed 003: did any steered configuration move the selection outcome at all?

Design note: `report.select` used to name the configuration with the highest harm_train rate even when every
configuration tied with the alpha-0 baseline (all at 0 refusal, say): a "winner" picked by sort order. Here each
real-direction configuration is tested against the baseline on harm_train first (the split selection uses,
prompts joined by id in `report.paired_tests`): an exact one-sided McNemar test in the outcome's goal (more
refusal for `more_refusal`, more compliance for `less_refusal`), Benjamini-Hochberg over every real-direction
configuration (the declared family, logged as `effect_family_size`; control directions are never candidates).
Only configurations with BH q <= alpha and more gains than losses may be picked; when none is, the selection
is "no effective configuration" and no winner is named, as in `steerkit.sae.effect` for coefficients.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from steerkit.stats import benjamini_hochberg, mcnemar_exact

NO_EFFECT = "no effective configuration"


def mark_effects(train_tests: pd.DataFrame, outcome: str, alpha: float) -> pd.DataFrame:
    """Real-direction rows of `train_tests` (`report.paired_tests(records, "harm_train")`) for `outcome`, with
    `effect_p` (one-sided exact McNemar, steered gains > losses), `effect_q` (BH over these rows) and
    `effective` (q <= alpha and b > c)."""
    columns = ["condition", "effect_p", "effect_q", "effective", "effect_family_size"]
    if train_tests.empty:  # no steered condition ran: nothing can be effective
        return pd.DataFrame(columns=columns).astype({"effective": bool})
    rows = train_tests[(train_tests.outcome == outcome) & (train_tests.direction == "refusal")].copy()
    p = [mcnemar_exact(int(b), int(c), "greater").p_value for b, c in zip(rows.b_gained, rows.c_lost)]
    bh = benjamini_hochberg(p, alpha=alpha)
    rows["effect_p"] = p
    rows["effect_q"] = bh.q_values
    rows["effective"] = [bool(r) and b > c for r, b, c in zip(bh.rejected, rows.b_gained, rows.c_lost)]
    rows["effect_family_size"] = bh.family_size
    return rows[columns]


def no_effect(outcome: str, marked: pd.DataFrame, n_feasible: int, alpha: float) -> dict[str, Any]:
    """The selection record when no configuration may be named: `effective` False and a one-line `reason`."""
    n, k = len(marked), int(marked.effective.sum())
    beat = f"{k} beat the baseline but none keeps benign helpfulness" if k else "none beat the alpha-0 baseline"
    test = f"one-sided exact McNemar on harm_train, BH over {n} configurations, q <= {alpha}"
    return {
        "outcome": outcome,
        "effective": False,
        "reason": f"{NO_EFFECT} for {outcome}: of {n} configurations ({n_feasible} within the helpfulness floor) "
        f"{beat} ({test})",
        "effect_family_size": n,
    }
