"""Donor -> recipient position maps for activation patching between prompts of different lengths.

Design note: a map is built from labelled spans (marker <-> marker, function name <-> function name, parameters
<-> parameters), each resolved with a `Selector` on its own prompt, so the two prompts may differ in length and
tokenisation. Within a span the tokens (sorted; a span need not be contiguous) are aligned by relative position:
recipient token i of n covers the interval [i/n, (i+1)/n) of the span, donor token j of m covers [j/m, (j+1)/m).

- Residual patching gives recipient token i the donor token under the start of its interval, j = floor(i*m/n)
  (n == m: the identity; n > m: donor tokens repeat; n < m: some donor tokens are not used).
- Attention mass is transferred by interval overlap, so a span keeps its total donor mass: donor token j sends
  the fraction |I_i ∩ J_j| / |J_j| of its weight to recipient token i. The overlaps are computed in integers
  (intervals scaled by n*m), so equal lengths give fractions of exactly 1.0 and 0.0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from steerkit.core.positions import EncodedPrompt, Selector
from steerkit.errors import SteerkitError


@dataclass(frozen=True)
class SpanPair:
    """One labelled span in both prompts: sorted, distinct token indices (non-empty)."""

    label: str
    donor: tuple[int, ...]
    recipient: tuple[int, ...]

    def __post_init__(self) -> None:
        for side in ("donor", "recipient"):
            tokens = getattr(self, side)
            if not tokens:
                raise SteerkitError(f"span {self.label!r} selects no {side} token")
            if list(tokens) != sorted(set(tokens)) or tokens[0] < 0:
                raise SteerkitError(f"span {self.label!r} {side} tokens must be sorted, distinct, >= 0: {tokens}")

    def residual_pairs(self) -> list[tuple[int, int]]:
        """(recipient position, donor position) per recipient token: donor token floor(i*m/n)."""
        m, n = len(self.donor), len(self.recipient)
        return [(r, self.donor[i * m // n]) for i, r in enumerate(self.recipient)]

    def transfer(self) -> list[tuple[int, int, float]]:
        """(recipient position, donor position, fraction of the donor token's weight) for every overlap > 0."""
        m, n = len(self.donor), len(self.recipient)
        out = []
        for i, r in enumerate(self.recipient):
            for j, d in enumerate(self.donor):
                overlap = min((i + 1) * m, (j + 1) * n) - max(i * m, j * n)  # in units of 1/(n*m)
                if overlap > 0:
                    out.append((r, d, overlap / n))
        return out


@dataclass(frozen=True)
class PositionMap:
    """Labelled span pairs; a recipient position belongs to at most one span."""

    spans: tuple[SpanPair, ...]

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for span in self.spans:
            for r in span.recipient:
                if r in seen:
                    raise SteerkitError(f"recipient position {r} is in spans {seen[r]!r} and {span.label!r}")
                seen[r] = span.label

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(s.label for s in self.spans)

    def select(self, labels: Iterable[str] | None = None) -> tuple[SpanPair, ...]:
        """The spans with these labels (all when None), in map order."""
        if labels is None:
            return self.spans
        wanted = list(labels)
        unknown = [x for x in wanted if x not in self.labels]
        if unknown:
            raise SteerkitError(f"unknown span {unknown[0]!r} (choose from {', '.join(self.labels)})")
        return tuple(s for s in self.spans if s.label in wanted)

    def residual_pairs(self, labels: Iterable[str] | None = None) -> list[tuple[int, int]]:
        return [pair for span in self.select(labels) for pair in span.residual_pairs()]

    def transfer(self, labels: Iterable[str] | None = None) -> list[tuple[int, int, float]]:
        return [t for span in self.select(labels) for t in span.transfer()]

    def recipient_positions(self, labels: Iterable[str] | None = None) -> tuple[int, ...]:
        return tuple(sorted(r for span in self.select(labels) for r in span.recipient))

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {s.label: {"donor": list(s.donor), "recipient": list(s.recipient)} for s in self.spans}


def identity_map(position_map: PositionMap) -> PositionMap:
    """The recipient mapped onto itself with the same spans (the identity control of patching)."""
    return PositionMap(tuple(SpanPair(s.label, s.recipient, s.recipient) for s in position_map.spans))


def build_position_map(
    donor: EncodedPrompt, recipient: EncodedPrompt, groups: Mapping[str, tuple[Selector, Selector]]
) -> PositionMap:
    """Resolve `label -> (donor selector, recipient selector)` into a `PositionMap`.

    Selectors must resolve to explicit token indices (e.g. `Pattern`), not open ranges.

    Raises:
        SteerkitError: A selector matches nothing, resolves to a range, or two recipient spans overlap.
    """
    spans = []
    for label, (donor_sel, recipient_sel) in groups.items():
        sides = []
        for prompt, selector in ((donor, donor_sel), (recipient, recipient_sel)):
            row = selector.resolve(prompt)
            if row.start is not None:
                raise SteerkitError(f"span {label!r}: selector {selector!r} is a range, not token positions")
            sides.append(tuple(sorted(row.indices)))
        spans.append(SpanPair(label, sides[0], sides[1]))
    return PositionMap(tuple(spans))
