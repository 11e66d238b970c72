"""The one exception type steerkit raises for bad input.

Entry points catch it, print its one-line message, mark the MLflow run FAILED and exit non-zero.
"""


class SteerkitError(ValueError):
    """Bad input or an impossible request; the message names the offending value in one line."""
