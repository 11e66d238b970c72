"""Text metrics on hand-computed texts."""

from __future__ import annotations

import math

import pytest

from steerkit.metrics import TEXT_METRICS, text_metrics
from steerkit.metrics.text import (
    char_entropy,
    distinct_n,
    miller_madow_entropy,
    mtld,
    repeated_trigram_ratio,
    type_token_ratio,
    word_entropy,
    words,
)


def test_words_lowercase_and_keep_apostrophes():
    assert words("The cat's HAT, the end.") == ["the", "cat's", "hat", "the", "end"]


def test_miller_madow_entropy_by_hand():
    # "aabb": plug-in 1 bit, K=2, N=4: + 1 / (8 ln 2) bits.
    assert char_entropy("aabb") == pytest.approx(1 + 1 / (8 * math.log(2)))
    # one symbol: plug-in 0, K-1 = 0.
    assert char_entropy("aaaa") == 0.0
    # "a b c d": 4 distinct words, plug-in 2 bits, + 3 / (8 ln 2).
    assert word_entropy("a b c d") == pytest.approx(2 + 3 / (8 * math.log(2)))
    assert miller_madow_entropy([]) == 0.0


def test_ttr_distinct_and_repeated_trigrams_by_hand():
    text = "a b a b a b"
    assert type_token_ratio(text) == pytest.approx(2 / 6)
    assert distinct_n(text, 2) == pytest.approx(2 / 5)  # bigrams: ab ba ab ba ab
    assert repeated_trigram_ratio(text) == pytest.approx(1 - 2 / 4)  # aba bab aba bab
    assert repeated_trigram_ratio("one two three four") == 0.0
    assert distinct_n("single", 2) == 0.0 and type_token_ratio("") == 0.0


def test_mtld_by_hand():
    # Forward on "a a b b": ttr 1, 0.5 (<= 0.72: factor 1, reset), then b: 1, b: 0.5 (factor 2), nothing left.
    assert mtld("a a b b") == pytest.approx(4 / 2)
    # "a b c a": ttr 1, 1, 1, 0.75 -> partial (1 - 0.75) / 0.28 both ways.
    assert mtld("a b c a") == pytest.approx(4 / (0.25 / 0.28))
    # Forward "a b a c": 1, 1, 2/3 (factor, reset), c: 1 -> 4 / 1; backward "c a b a": 1, 1, 1, 0.75.
    assert mtld("a b a c") == pytest.approx((4 / 1 + 4 / (0.25 / 0.28)) / 2)
    assert mtld("all words differ") == 3.0  # no factor at all: the text counts as one
    assert mtld("") == 0.0


def test_text_metrics_has_every_metric():
    m = text_metrics("The sea, the sea, the endless sea.")
    assert tuple(m) == TEXT_METRICS
    assert m["length_words"] == 7.0 and m["ttr"] == pytest.approx(3 / 7)
