"""Statistics for steered-vs-baseline experiments: pure functions, counts or records in, frozen results out.

`tests` (exact McNemar, Fisher, Benjamini-Hochberg), `intervals` (Wilson, Newcombe risk differences), `paired`
(arms joined by sample id, the arm-vs-arm metric table), `compare` (run-vs-run comparisons, BH over a declared
family). No I/O, no mlflow.
"""

from steerkit.stats.intervals import (
    RiskDifference,
    paired_risk_difference,
    risk_difference_independent,
    wilson_interval,
)
from steerkit.stats.paired import join_by_id, paired_binary_summary
from steerkit.stats.tests import (
    BHResult,
    FisherResult,
    McNemarResult,
    PairedCounts,
    benjamini_hochberg,
    fisher_exact_one_tailed,
    mcnemar_exact,
    paired_outcomes,
)

__all__ = [
    "BHResult",
    "FisherResult",
    "McNemarResult",
    "PairedCounts",
    "RiskDifference",
    "benjamini_hochberg",
    "fisher_exact_one_tailed",
    "join_by_id",
    "mcnemar_exact",
    "paired_binary_summary",
    "paired_outcomes",
    "paired_risk_difference",
    "risk_difference_independent",
    "wilson_interval",
]
