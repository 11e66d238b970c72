"""The one progress bar (tqdm) for every loop a user waits on: prompts, layers, conditions, trials, programs.

Design note: bars go to stderr and only where someone watches: on when stderr is a terminal, off otherwise (an
MLflow log, CI, a worker's log file), so logs stay readable. `STEERKIT_PROGRESS=0` turns every bar off and
`STEERKIT_PROGRESS=1` on, whatever stderr is; a caller's `enable=False` (an inner loop under an outer bar) wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

ENV = "STEERKIT_PROGRESS"
T = TypeVar("T")


def enabled(enable: bool = True) -> bool:
    """Whether a bar shows: `enable`, then `$STEERKIT_PROGRESS` (0/1), then whether stderr is a terminal."""
    if not enable:
        return False
    env = os.environ.get(ENV, "").strip().lower()
    if env in ("0", "false", "off", "no"):
        return False
    if env in ("1", "true", "on", "yes"):
        return True
    return sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, unit: str = "it",
             enable: bool = True) -> Any:  # fmt: skip
    """A tqdm bar over `iterable` (or a manual one with `total`, advanced by `.update()`), shown per `enabled`."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled(enable), dynamic_ncols=True)
