"""The one exception type steerkit raises for bad input.

Entry points catch it, print its one-line message, mark the MLflow run FAILED and exit non-zero.
"""


class SteerkitError(ValueError):
    """Bad input or an impossible request; the message names the offending value in one line."""


class Pruned(Exception):  # noqa: N818 - named after what happened, like optuna.TrialPruned
    """A search objective stopped early because its trial's pruner said so: not an error.

    Objectives below `steerkit.search` raise it (they may not import optuna); `steerkit.search` turns it into
    `optuna.TrialPruned`, so the trial ends PRUNED and its MLflow child run KILLED.
    """
