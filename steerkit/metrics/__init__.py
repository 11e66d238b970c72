"""Per-completion and per-position metrics for steering experiments.

Design note: pure functions over tensors and strings; aggregation and logging
live elsewhere so that each metric can be tested against an independent path.
"""

from steerkit.metrics.divergence import kl_divergence, top1_changed, topk_overlap
from steerkit.metrics.preservation import (
    TEST_MARKERS,
    Preservation,
    has_test_marker,
    rust_test_preservation,
)
from steerkit.metrics.text import (
    TEXT_METRICS,
    char_entropy,
    distinct_n,
    miller_madow_entropy,
    mtld,
    repeated_trigram_ratio,
    text_metrics,
    type_token_ratio,
    word_entropy,
)

__all__ = [
    "TEST_MARKERS",
    "Preservation",
    "has_test_marker",
    "kl_divergence",
    "rust_test_preservation",
    "top1_changed",
    "topk_overlap",
    "TEXT_METRICS",
    "char_entropy",
    "distinct_n",
    "miller_madow_entropy",
    "mtld",
    "repeated_trigram_ratio",
    "text_metrics",
    "type_token_ratio",
    "word_entropy",
]
