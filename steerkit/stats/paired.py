"""Paired arms: the same samples in two arms, joined by sample id and summarised as one table of metrics.

Design note: records are written in batch order (sorted by length, resumed, or reused from another run), so
position is never a join key: `join_by_id` refuses arms whose id sets differ. `paired_binary_summary` is the
arm-vs-arm metric table of one binary outcome (counts, McNemar, Fisher, risk difference).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from steerkit.errors import SteerkitError
from steerkit.stats.intervals import paired_risk_difference
from steerkit.stats.tests import fisher_exact_one_tailed, mcnemar_exact, paired_outcomes


def join_by_id(
    left: Sequence[Mapping[str, Any]],
    right: Sequence[Mapping[str, Any]],
    *,
    key: str = "prompt_id",
    order: Iterable[str] | None = None,
    names: tuple[str, str] = ("baseline", "steered"),
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Join two arms' per-sample records by id: `[(left_row, right_row)]`, one pair per id.

    Paired statistics must pair the same prompt in both arms; records are written in batch order (sorted by
    length, resumed, or reused from another run), so position is never a join key.

    Args:
        left: One arm's records (dicts carrying `key`).
        right: The other arm's records.
        key: The id field.
        order: The ids in the order wanted (e.g. corpus order; must be exactly the joined ids); default: the
            order of `left`.
        names: What to call the two arms in error messages.

    Raises:
        SteerkitError: If an id is missing or repeated in an arm, the two arms' id sets differ, or `order`
            names other ids.
    """
    index: list[dict[str, Mapping[str, Any]]] = []
    for name, rows in zip(names, (left, right)):
        by_id: dict[str, Mapping[str, Any]] = {}
        for i, row in enumerate(rows):
            if key not in row:
                raise SteerkitError(f"{name} record {i} has no {key!r}")
            rid = str(row[key])
            if rid in by_id:
                raise SteerkitError(f"{name} arm has duplicate {key} {rid!r}")
            by_id[rid] = row
        index.append(by_id)
    only_left, only_right = index[0].keys() - index[1].keys(), index[1].keys() - index[0].keys()
    if only_left or only_right:
        extra = sorted(only_left)[:3] if only_left else sorted(only_right)[:3]
        side = names[0] if only_left else names[1]
        raise SteerkitError(
            f"arms {names[0]!r} and {names[1]!r} have different ids ({len(only_left)} only in {names[0]}, "
            f"{len(only_right)} only in {names[1]}; e.g. {side}: {', '.join(extra)})"
        )
    ids = [str(i) for i in order] if order is not None else list(index[0])
    if sorted(ids) != sorted(index[0]):
        raise SteerkitError(f"the requested order names {len(ids)} ids, but the arms hold {len(index[0])} others")
    return [(index[0][i], index[1][i]) for i in ids]


def paired_binary_summary(base: list[bool], steer: list[bool], label: str) -> dict[str, Any]:
    """Paired statistics of one binary outcome over two arms of the same prompts, as flat metrics.

    Counts per arm, the improvement (steered - baseline, also in percent), Fisher's one-tailed test (kept because
    seed 000's design asks for it), exact McNemar (two-sided and `greater`; the primary test for a paired design)
    and the paired risk difference with its Newcombe interval. Keys are prefixed by `label`, except for the
    `preserved` outcome whose keys are unprefixed (the seed's names).
    """
    counts = paired_outcomes(base, steer)
    k_b, k_s, n = sum(base), sum(steer), len(base)
    fisher = fisher_exact_one_tailed(k_s, n, k_b, n)
    rd = paired_risk_difference(counts.b, counts.c, n, both=counts.both)
    prefix = "" if label == "preserved" else f"{label}_"
    return {
        f"baseline_{label}": k_b,
        f"steered_{label}": k_s,
        f"{prefix}improvement": k_s - k_b,
        f"{prefix}improvement_pct": 100.0 * (k_s - k_b) / n,
        f"{prefix}fisher_exact_p": fisher.p_value,
        f"{prefix}mcnemar_b": counts.b,
        f"{prefix}mcnemar_c": counts.c,
        f"{prefix}mcnemar_p": mcnemar_exact(counts.b, counts.c).p_value,
        f"{prefix}mcnemar_p_greater": mcnemar_exact(counts.b, counts.c, "greater").p_value,
        f"{prefix}risk_difference": rd.estimate,
        f"{prefix}risk_difference_low": rd.low,
        f"{prefix}risk_difference_high": rd.high,
    }


__all__ = ["join_by_id", "paired_binary_summary"]
