"""Judge validation: agreement with hand labels on the rules' own labelled set and on a held-out one.

Design note: the rule judge's rules were written while reading `judge_labels.json`, so its accuracy there is an
in-sample figure that flatters the judge. `judge_heldout.jsonl` holds replies written separately from the rules
and never used to change them; its accuracy and per-class confusion counts are the figures to believe. Both are
reported for the rule judge, and for the LLM judge when it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerkit.refusal.judges import HELP_LABELS, REFUSAL_LABELS, Agreement, agreement, judge, load_judge_labels
from steerkit.refusal.llm_judge import LLMJudge

if TYPE_CHECKING:
    from steerkit.core.models import LoadedModel

LABEL_SETS = {"": "judge_labels.json", "heldout_": "judge_heldout.jsonl"}


def validate_judges(loaded: LoadedModel, judge_kind: str, corpus_dir: str | Path) -> dict[str, Agreement]:
    """Agreement of the rule (and, unless `judge_kind` is `rule`, the LLM) judge with each labelled set in
    `corpus_dir`: keys `rule_refusal`, `rule_helpfulness`, `llm_refusal`, `llm_vs_rule`, and the same with a
    `heldout_` infix (`rule_heldout_refusal`, ...) for the held-out set."""
    out: dict[str, Agreement] = {}
    for infix, name in LABEL_SETS.items():
        items = load_judge_labels(Path(corpus_dir) / name)
        gold = [i.refusal for i in items]
        rule = [judge(i.response, i.prompt) for i in items]
        out[f"rule_{infix}refusal"] = agreement(gold, [v.refusal for v in rule], REFUSAL_LABELS)
        helpful = [i.helpfulness for i in items]
        out[f"rule_{infix}helpfulness"] = agreement(helpful, [v.helpfulness for v in rule], HELP_LABELS)
        if judge_kind != "rule":
            llm = LLMJudge(loaded).judge_many([i.prompt for i in items], [i.response for i in items])
            out[f"llm_{infix}refusal"] = agreement(gold, [v.refusal for v in llm], REFUSAL_LABELS)
            out[f"llm_{infix}vs_rule"] = agreement([v.refusal for v in rule], [v.refusal for v in llm], REFUSAL_LABELS)
    return out


def validation_metrics(found: dict[str, Agreement]) -> dict[str, Any]:
    """Flat metrics: `judge_<key>_accuracy`, `judge_<key>_kappa`, `judge_<key>_n` and, for the held-out set, the
    per-class confusion counts `judge_<key>_gold_<label>_pred_<label>`."""
    metrics: dict[str, Any] = {}
    for key, a in found.items():
        metrics.update({f"judge_{key}_accuracy": a.accuracy, f"judge_{key}_kappa": a.kappa, f"judge_{key}_n": a.n})
        if "heldout" in key:
            metrics.update({f"judge_{key}_{cell}": count for cell, count in a.counts().items()})
    return metrics
