"""The calibration / evaluation split of a prompt corpus, defined once, by prompt id.

Design note: a dose or scale tuned on some prompts and reported on the same prompts overstates its effect, so the
phases that choose (`calibrate_dose`, `sweep_scales`, `search_worker`) read the `calibration` split and
`generate_n50` reports on the `eval` split. An item's split is a function of its id alone (a salted SHA-256 of
the id below `CALIBRATION_PERCENT`): it does not change when items are added, reordered or limited, and the two
splits are disjoint by construction. A run logs the split it used and `ids_digest` of the ids it read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, TypeVar

from steerkit.errors import SteerkitError

SPLITS = ("calibration", "eval", "all")
CALIBRATION_PERCENT = 30  # about 30% of the ids calibrate; 12 of the 50 n50 prompts
_SALT = "steerkit-split-v1"


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=_HasId)


def split_of(prompt_id: str) -> str:
    """`calibration` or `eval`: the split this id belongs to (the one definition)."""
    bucket = int(hashlib.sha256(f"{_SALT}:{prompt_id}".encode()).hexdigest(), 16) % 100
    return "calibration" if bucket < CALIBRATION_PERCENT else "eval"


def select_split(items: Sequence[T], split: str, limit: int = 0) -> list[T]:
    """The items of `split` (`all` = every item), in their corpus order; the first `limit` of them (0 = all)."""
    if split not in SPLITS:
        raise SteerkitError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    chosen = [item for item in items if split == "all" or split_of(item.id) == split]
    if not chosen:
        raise SteerkitError(f"split {split!r} holds no item of this corpus")
    if limit < 0:
        raise SteerkitError(f"limit must be >= 0, got {limit}")
    return chosen[:limit] if limit else chosen


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 (first 16 hex digits) of the sorted ids: which prompts a run read, in one loggable value."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def disjoint(chosen_on: str, reported_on: str) -> bool:
    """Whether results reported on `reported_on` avoid the prompts a value was chosen on (`chosen_on`)."""
    return "all" not in (chosen_on, reported_on) and chosen_on != reported_on


__all__ = ["CALIBRATION_PERCENT", "SPLITS", "disjoint", "ids_digest", "select_split", "split_of"]
