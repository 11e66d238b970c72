"""Per-item reports for a paired pruner (Optuna's WilcoxonPruner), for objectives that take an Optuna-style trial.

Design note: a search objective evaluates the same items (prompts, problems) at every trial. It reports each
item's value with the item's fixed index as the step, so the pruner pairs the current trial with the best one item
by item, and the trial's objective is the mean of what it reported (the pruner compares means too). Items are
evaluated in chunks of `every`; after each chunk the trial may be pruned, which raises `steerkit.errors.Pruned`
(steerkit.search turns it into optuna.TrialPruned; this module never imports optuna). A trial object without
`report` (a plain test double) is never pruned.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from steerkit.errors import Pruned, SteerkitError

PRUNED_AFTER_ATTR = "pruned_after_n"


def chunk_ends(n: int, every: int) -> Iterator[tuple[int, int]]:
    """`(start, end)` of consecutive chunks of `every` items out of `n` (one chunk when `every` is 0)."""
    if every < 0:
        raise SteerkitError(f"prune_every must be >= 0 (0 = report once at the end), got {every!r}")
    size = every or max(n, 1)
    for start in range(0, n, size):
        yield start, min(start + size, n)


def report_items(trial: Any, values: Mapping[int, float], n_done: int, n_total: int) -> None:
    """Report `{item index: value}` to the trial; raise `Pruned` if its pruner stops it before all items are done.

    `n_done` items of `n_total` have been evaluated so far (logged as the user attr `pruned_after_n`).
    """
    if not hasattr(trial, "report"):
        return
    for step, value in values.items():
        trial.report(float(value), step)
    if n_done < n_total and trial.should_prune():
        trial.set_user_attr(PRUNED_AFTER_ATTR, n_done)
        raise Pruned(f"trial {trial.number} pruned after {n_done} of {n_total} items")
