"""Lexical diversity and entropy of generated text (seed 004's outcome measures).

Design note: pure functions of a string. Words are lower-cased runs of letters, digits, underscores and
apostrophes (`[\\w']+`); characters are Unicode code points. Entropies are in bits with the Miller-Madow bias
correction (+ (K - 1) / (2N) nats, K = observed symbols, N = count), because plug-in entropy of short texts is
biased low. MTLD follows McCarthy & Jarvis (2010): factors end when the running TTR falls to 0.72, a partial
factor is credited at the end, and the forward and backward passes are averaged. Conventions for degenerate
input (an empty text, or no factor at all) are documented on each function so their values are never NaN.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

MTLD_THRESHOLD = 0.72
_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of `text`."""
    return _WORD.findall(text.lower())


def miller_madow_entropy(symbols: Sequence[object]) -> float:
    """Shannon entropy in bits with the Miller-Madow correction; 0.0 for an empty sequence."""
    n = len(symbols)
    if n == 0:
        return 0.0
    counts = Counter(symbols).values()
    plug_in = -sum(c / n * math.log2(c / n) for c in counts)
    return plug_in + (len(counts) - 1) / (2 * n * math.log(2))


def char_entropy(text: str) -> float:
    """Miller-Madow entropy (bits) of the characters of `text`."""
    return miller_madow_entropy(list(text))


def word_entropy(text: str) -> float:
    """Miller-Madow entropy (bits) of the words of `text`."""
    return miller_madow_entropy(words(text))


def type_token_ratio(text: str) -> float:
    """Distinct words / words; 0.0 when there are no words."""
    toks = words(text)
    return len(set(toks)) / len(toks) if toks else 0.0


def _mtld_pass(toks: Sequence[str], threshold: float) -> float:
    factors, types, count, ttr = 0.0, set(), 0, 1.0
    for tok in toks:
        count += 1
        types.add(tok)
        ttr = len(types) / count
        if ttr <= threshold:
            factors, types, count, ttr = factors + 1, set(), 0, 1.0
    if count:
        factors += (1 - ttr) / (1 - threshold)
    # No factor at all (every word distinct): the whole text counts as one factor.
    return len(toks) / factors if factors > 0 else float(len(toks))


def mtld(text: str, threshold: float = MTLD_THRESHOLD) -> float:
    """Measure of textual lexical diversity: mean of the forward and backward passes; 0.0 without words."""
    toks = words(text)
    if not toks:
        return 0.0
    return (_mtld_pass(toks, threshold) + _mtld_pass(toks[::-1], threshold)) / 2


def _ngrams(toks: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams / n-grams; 0.0 when the text has fewer than n words."""
    grams = _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_trigram_ratio(text: str) -> float:
    """Share of word trigrams that repeat an earlier trigram; 0.0 when there are none."""
    grams = _ngrams(words(text), 3)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


TEXT_METRICS = (
    "char_entropy",
    "word_entropy",
    "ttr",
    "mtld",
    "distinct_2",
    "repeated_trigram_ratio",
    "length_words",
)


def text_metrics(text: str) -> dict[str, float]:
    """All metrics of `TEXT_METRICS` for one text."""
    return {
        "char_entropy": char_entropy(text),
        "word_entropy": word_entropy(text),
        "ttr": type_token_ratio(text),
        "mtld": mtld(text),
        "distinct_2": distinct_n(text, 2),
        "repeated_trigram_ratio": repeated_trigram_ratio(text),
        "length_words": float(len(words(text))),
    }
