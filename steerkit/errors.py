"""The one exception type steerkit raises for bad input.

Entry points catch it, print its one-line message, mark the MLflow run FAILED and exit non-zero.
"""

from __future__ import annotations

import importlib
from typing import Any


class SteerkitError(ValueError):
    """Bad input or an impossible request; the message names the offending value in one line."""


def optional_import(module: str, extra: str, needed_for: str) -> Any:
    """`importlib.import_module(module)`, or a one-line `SteerkitError` naming the pyproject extra that installs it
    (optional dependencies are imported where used, so the rest of steerkit works without them)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise SteerkitError(f"{needed_for} needs {top}, not installed: pip install 'steerkit[{extra}]'") from exc


class Pruned(Exception):  # noqa: N818 - named after what happened, like optuna.TrialPruned
    """A search objective stopped early because its trial's pruner said so: not an error.

    Objectives below `steerkit.search` raise it (they may not import optuna); `steerkit.search` turns it into
    `optuna.TrialPruned`, so the trial ends PRUNED and its MLflow child run KILLED.
    """
