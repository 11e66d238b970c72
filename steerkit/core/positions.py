"""Token positions from text: patterns and character spans of the prompt the model sees.

Design note: interventions name *where* they act with small selector dataclasses (`ALL`, `PROMPT`, `GENERATED`,
`Explicit`, `Pattern`, `FromPattern`, `Span`). A selector is resolved per prompt against an `EncodedPrompt`
(the possibly chat-templated text, its token ids and offset mapping) into `RowPositions`: a set of explicit
prompt positions plus an optional half-open range `[start, stop)` whose `stop=None` runs on into generated
tokens. Positions are unpadded indices (0 = first token of the prompt); `generate` adds each row's left padding.
Every token whose character span overlaps a match is covered, so a multi-token marker like `#[test]` yields
all of its tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from steerkit.errors import SteerkitError


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the model sees it.

    Attributes:
        id: the prompt's id (for error messages and logs).
        text: the text that was tokenised (chat template applied if asked).
        ids: token ids, `[seq]`.
        offsets: per token `(char_start, char_end)` into `text`; special tokens may have `(0, 0)`.
    """

    id: str
    text: str
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.ids)

    def char_span_tokens(self, start: int, end: int) -> list[int]:
        """Indices of the tokens whose characters overlap `[start, end)`."""
        return [i for i, (a, b) in enumerate(self.offsets) if b > a and a < end and b > start]


def encode(tokenizer: Any, prompt_id: str, text: str, *, add_special_tokens: bool = True) -> EncodedPrompt:
    """Tokenise `text` with offsets (fast tokenizers only)."""
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return EncodedPrompt(
        id=prompt_id,
        text=text,
        ids=tuple(enc["input_ids"]),
        offsets=tuple((int(a), int(b)) for a, b in enc["offset_mapping"]),
    )


@dataclass(frozen=True)
class RowPositions:
    """Resolved positions for one prompt: `indices` ∪ `[start, stop)`; `stop=None` includes generated tokens."""

    indices: frozenset[int] = frozenset()
    start: int | None = None
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.start is None and self.stop is not None:
            raise SteerkitError(f"RowPositions stop={self.stop} given without start")

    @property
    def is_empty(self) -> bool:
        no_range = self.start is None or (self.stop is not None and self.stop <= self.start)
        return not self.indices and no_range

    @property
    def first(self) -> int:
        """Earliest selected position."""
        candidates = list(self.indices) + ([self.start] if self.start is not None else [])
        return min(candidates)

    @property
    def last(self) -> float:
        """Latest selected position (`inf` when the range is open-ended)."""
        if self.start is not None and self.stop is None:
            return float("inf")
        candidates = list(self.indices) + ([self.stop - 1] if self.stop is not None else [])
        return max(candidates)


_NONE = 2**62  # sentinel "no range" start / open-ended stop, beyond any real position


@dataclass(frozen=True)
class RowTable:
    """`RowPositions` of a batch as tensors, so hooks build `[batch, n]` masks with no Python loop per row.

    Attributes:
        start, stop: `[batch]` range bounds (`_NONE` = no range / open-ended).
        table: `[batch, width]` explicit indices as a boolean lookup.
    """

    start: torch.Tensor
    stop: torch.Tensor
    table: torch.Tensor

    @classmethod
    def from_rows(cls, rows: list[RowPositions], device: torch.device | str = "cpu") -> RowTable:
        width = max([max(r.indices) + 1 for r in rows if r.indices] + [1])
        table = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            table[i, sorted(row.indices)] = True
        start = [_NONE if r.start is None else r.start for r in rows]
        stop = [_NONE if r.stop is None else r.stop for r in rows]
        return cls(
            torch.tensor(start, dtype=torch.long, device=device),
            torch.tensor(stop, dtype=torch.long, device=device),
            table.to(device),
        )

    def select(self, rows: torch.Tensor) -> RowTable:
        """The table of batch `rows` only."""
        return RowTable(self.start[rows], self.stop[rows], self.table[rows])

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        """Boolean `[batch, n]` mask of unpadded `positions` `[batch, n]` (negative = padding, never selected)."""
        in_range = (positions >= self.start[:, None]) & (positions < self.stop[:, None])
        width = self.table.shape[1]
        looked_up = self.table.gather(1, positions.clamp(0, width - 1)) & (positions < width)
        return (in_range | looked_up) & (positions >= 0)


class Selector:
    """Base of position selectors; `resolve` maps one encoded prompt to `RowPositions`."""

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:  # pragma: no cover - abstract
        raise SteerkitError(f"{type(self).__name__} cannot be resolved")


@dataclass(frozen=True)
class Range(Selector):
    """`which="all"`: every position; `"prompt"`: prompt tokens only; `"generated"`: generated tokens only."""

    which: Literal["all", "prompt", "generated"] = "all"

    def __post_init__(self) -> None:
        if self.which not in ("all", "prompt", "generated"):
            raise SteerkitError(f"unknown position range {self.which!r} (all, prompt, generated)")

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:
        if self.which == "all":
            return RowPositions(start=0)
        if self.which == "prompt":
            return RowPositions(start=0, stop=len(prompt))
        return RowPositions(start=len(prompt))


ALL = Range("all")
PROMPT = Range("prompt")
GENERATED = Range("generated")


@dataclass(frozen=True)
class Explicit(Selector):
    """Explicit prompt token indices; negative indices count from the end of the prompt (-1 = last token)."""

    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        if not self.indices:
            raise SteerkitError("Explicit positions need at least one index")

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:
        n = len(prompt)
        out = {i + n if i < 0 else i for i in self.indices}
        bad = [i for i in self.indices if not -n <= i < n]
        if bad:
            raise SteerkitError(f"position {bad[0]} out of range for prompt {prompt.id!r} of {n} tokens")
        return RowPositions(indices=frozenset(out))


@dataclass(frozen=True)
class Pattern(Selector):
    """Tokens covering matches of regex `pattern` (`occurrence`: "all", "first", "last" or an index).

    `group` selects a capture group of the match (0 = whole match).
    """

    pattern: str
    occurrence: Literal["all", "first", "last"] | int = "all"
    group: int = 0

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise SteerkitError(f"invalid pattern {self.pattern!r}: {exc}") from exc

    def spans(self, prompt: EncodedPrompt) -> list[tuple[int, int]]:
        matches = [m.span(self.group) for m in re.finditer(self.pattern, prompt.text, re.MULTILINE)]
        matches = [s for s in matches if s[1] > s[0]]
        if not matches:
            raise SteerkitError(f"pattern {self.pattern!r} not found in prompt {prompt.id!r}")
        if self.occurrence == "all":
            return matches
        if self.occurrence == "first":
            return matches[:1]
        if self.occurrence == "last":
            return matches[-1:]
        if not -len(matches) <= self.occurrence < len(matches):
            raise SteerkitError(
                f"pattern {self.pattern!r} occurs {len(matches)} times in prompt {prompt.id!r}, "
                f"occurrence {self.occurrence} requested"
            )
        return [matches[self.occurrence]]

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:
        tokens = {t for a, b in self.spans(prompt) for t in prompt.char_span_tokens(a, b)}
        return RowPositions(indices=frozenset(tokens))


@dataclass(frozen=True)
class FromPattern(Selector):
    """Every position from the first token of a match on, generated tokens included (or up to the prompt end)."""

    pattern: str
    occurrence: Literal["first", "last"] | int = "first"
    include_generated: bool = True

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:
        start = min(Pattern(self.pattern, self.occurrence).resolve(prompt).indices)
        return RowPositions(start=start, stop=None if self.include_generated else len(prompt))


@dataclass(frozen=True)
class Span(Selector):
    """Tokens overlapping the character span `[start, end)` of the prompt text."""

    start: int
    end: int

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:
        if not 0 <= self.start < self.end <= len(prompt.text):
            raise SteerkitError(
                f"span [{self.start}, {self.end}) outside prompt {prompt.id!r} of {len(prompt.text)} chars"
            )
        return RowPositions(indices=frozenset(prompt.char_span_tokens(self.start, self.end)))


@dataclass(frozen=True)
class PerPrompt(Selector):
    """A different selector per prompt id (e.g. positions computed elsewhere)."""

    by_id: tuple[tuple[str, Selector], ...]

    @classmethod
    def of(cls, mapping: dict[str, Selector]) -> PerPrompt:
        return cls(tuple(mapping.items()))

    def resolve(self, prompt: EncodedPrompt) -> RowPositions:
        for key, selector in self.by_id:
            if key == prompt.id:
                return selector.resolve(prompt)
        raise SteerkitError(f"no positions given for prompt {prompt.id!r}")


def parse_selector(text: str) -> Selector:
    """Selector from a CLI/MLflow string: `all`, `prompt`, `generated`, `3,4,-1`, `pattern:RE`, `from:RE`."""
    if text in ("all", "prompt", "generated"):
        return Range(text)  # type: ignore[arg-type]
    if text.startswith("pattern:"):
        return Pattern(text.removeprefix("pattern:"))
    if text.startswith("from:"):
        return FromPattern(text.removeprefix("from:"))
    try:
        return Explicit(tuple(int(x) for x in text.split(",")))
    except ValueError as exc:
        raise SteerkitError(
            f"unknown positions {text!r} (all, prompt, generated, pattern:RE, from:RE, or 1,2,3)"
        ) from exc
