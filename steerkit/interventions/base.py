"""The `steer()` context manager and the state its hooks share.

Design note: an intervention is a small frozen dataclass (what, where, how much). `steer()` validates each
against the model, asks it to attach its hooks, and removes every handle in `finally`, also when attaching
fails halfway. Hooks read one `SteerState`: which prompts are in the batch (their resolved positions as
`RowTable`s), each row's left padding, and the padded index of the first query of the current forward pass.
`generate` rebinds the state per batch and advances `query_start` per step, so positions stay right as the KV
cache grows and under padding. A bare forward pass binds with `steer(..., prompts=[...])`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from steerkit.core.positions import ALL, EncodedPrompt, RowPositions, RowTable, Selector
from steerkit.errors import SteerkitError

if TYPE_CHECKING:
    from steerkit.core.models import LoadedModel


class Handle(Protocol):
    def remove(self) -> None: ...


class Intervention(Protocol):
    """What `steer()` needs of an intervention."""

    def validate(self, loaded: LoadedModel) -> None: ...

    def selectors(self) -> dict[str, Selector]: ...

    def check_rows(self, rows: dict[str, RowPositions], prompt: EncodedPrompt) -> None: ...

    def attach(self, loaded: LoadedModel, state: SteerState, index: int) -> list[Handle]: ...


@dataclass
class SteerState:
    """What hooks of one `steer()` context share.

    Attributes:
        interventions: the active interventions, in order.
        prompts: the bound batch (`[batch]` encoded prompts, unpadded), or None before binding.
        pad: `[batch]` left-padding lengths.
        query_start: padded index of the first query of the current forward pass; None = infer from the
            key length (no cache, or a full cache).
        tables: resolved positions per `(intervention index, selector name)`.
    """

    interventions: tuple[Any, ...]
    prompts: list[EncodedPrompt] | None = None
    pad: torch.Tensor | None = None
    query_start: int | None = None
    tables: dict[tuple[int, str], RowTable] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def bind(self, prompts: Sequence[EncodedPrompt], pad: Sequence[int] | None = None) -> None:
        """Resolve every intervention's positions for this batch of prompts (checks causality per row)."""
        self.prompts = list(prompts)
        pad_list = list(pad) if pad is not None else [0] * len(self.prompts)
        self.pad = torch.tensor(pad_list, dtype=torch.long, device=self.device)
        self.query_start = None
        self.tables = {}
        for i, iv in enumerate(self.interventions):
            per_name: dict[str, list[RowPositions]] = {name: [] for name in iv.selectors()}
            for prompt in self.prompts:
                rows = {name: sel.resolve(prompt) for name, sel in iv.selectors().items()}
                iv.check_rows(rows, prompt)
                for name, row in rows.items():
                    per_name[name].append(row)
            for name, rows_list in per_name.items():
                self.tables[(i, name)] = RowTable.from_rows(rows_list, self.device)

    def select(self, rows: list[int]) -> None:
        """Keep only batch `rows` (finished rows leave the batch during generation)."""
        if self.prompts is None or self.pad is None:
            raise SteerkitError("select() before bind()")
        keep = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.prompts = [self.prompts[i] for i in rows]
        self.pad = self.pad[keep]
        self.tables = {key: t.select(keep) for key, t in self.tables.items()}

    def table(self, index: int, name: str, selector: Selector, batch: int) -> RowTable:
        """The resolved table; an unbound state only supports `ALL`."""
        if (index, name) in self.tables:
            return self.tables[(index, name)]
        if selector == ALL:
            return RowTable.from_rows([RowPositions(start=0)] * batch, self.device)
        raise SteerkitError(f"positions {selector!r} need prompts: use generate(), or steer(..., prompts=[...])")

    def query_positions(self, batch: int, q_len: int, k_len: int | None = None) -> torch.Tensor:
        """Unpadded positions `[batch, q_len]` of the current queries."""
        start = self.query_start if self.query_start is not None else (k_len or q_len) - q_len
        padded = torch.arange(start, start + q_len, device=self.device)[None, :]
        return padded - self._pad(batch)[:, None]

    def key_positions(self, batch: int, q_len: int, k_len: int) -> torch.Tensor:
        """Unpadded positions `[batch, k_len]` of the keys (the cache may hold only a sliding window)."""
        end = (self.query_start if self.query_start is not None else k_len - q_len) + q_len
        padded = torch.arange(end - k_len, end, device=self.device)[None, :]
        return padded - self._pad(batch)[:, None]

    def _pad(self, batch: int) -> torch.Tensor:
        if self.pad is None:
            return torch.zeros(batch, dtype=torch.long, device=self.device)
        if self.pad.shape[0] != batch:
            raise SteerkitError(f"bound batch of {self.pad.shape[0]} prompts but the model got {batch} rows")
        return self.pad


@contextmanager
def steer(
    loaded: LoadedModel, *interventions: Any, prompts: Sequence[EncodedPrompt] | None = None
) -> Iterator[SteerState]:
    """Apply `interventions` to `loaded.model` inside the block; hooks are always removed on exit.

    Args:
        loaded: the model.
        *interventions: `ResidualAdd`, `DirectionAblation`, `AttentionEdit`, `AttentionCapture`, ...
        prompts: bind positions for a bare forward pass over these (unpadded, equal-length or single) prompts.

    Yields:
        The shared `SteerState` (generate() rebinds it per batch).
    """
    state = SteerState(interventions=tuple(interventions), device=loaded.device)
    handles: list[Handle] = []
    try:
        for index, iv in enumerate(interventions):
            iv.validate(loaded)
            handles.extend(iv.attach(loaded, state, index))
        if prompts is not None:
            state.bind(prompts)
        yield state
    finally:
        for handle in reversed(handles):
            handle.remove()
