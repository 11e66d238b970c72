"""The `steer()` context manager and the one state its hooks share.

Design note: an intervention is a small frozen dataclass (what, where, how much). `steer()` validates each
against the model, asks it to attach its hooks, and removes every handle in `finally`, also when attaching
fails halfway. Hooks read a `SteerState`: which prompts are in the batch (their resolved positions as
`RowTable`s), each row's left padding, and the padded index of the first query of the current forward pass.
`generate` rebinds the state per batch and advances `query_start` per step, so positions stay right as the KV
cache grows and under padding. A bare forward pass binds with `steer(..., prompts=[...])`.

Composition: there is **one state per model**, and a nested `steer()` extends it rather than opening a second
one. Positions are a property of the forward pass (which prompts, how padded, which query comes first), not of an
intervention, so one state is the single source of truth and nothing has to be kept in sync: whoever binds a
batch (`generate`, `next_token_logits`, an inner `steer(prompts=...)`) binds it for every active intervention,
the outer context's included. (The alternative, one state per context with the batch fanned out to each, keeps
several copies of the same positions and breaks as soon as one caller binds only its own: an outer capture once
moved an inner attention edit that way.) An inner context appends its interventions, resolves their positions for
the batch already bound, and on exit removes them and restores the outer binding exactly as it was, so
`steer(A)` around `steer(B)` is the flat `steer(A, B)`. Contexts must close in reverse order (a `with` block
does); closing an outer one first is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from steerkit.core.positions import ALL, EncodedPrompt, RowPositions, RowTable, Selector
from steerkit.errors import SteerkitError

if TYPE_CHECKING:
    from steerkit.core.models import LoadedModel

_STATE_ATTR = "_steerkit_state"  # the model's one SteerState, present while a steer() context is open


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
        row_arms: `[batch]` the arm each row runs, when several arms share the batch (`generate_arms`); None =
            every row runs every intervention.
        arm_of: intervention index -> its arm; an intervention there selects nothing in another arm's rows
            (interventions not there, e.g. an outer context's, apply to every row).
    """

    interventions: tuple[Any, ...]
    prompts: list[EncodedPrompt] | None = None
    pad: torch.Tensor | None = None
    query_start: int | None = None
    tables: dict[tuple[int, str], RowTable] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    row_arms: list[int] | None = None
    arm_of: dict[int, int] = field(default_factory=dict)

    def bind(
        self, prompts: Sequence[EncodedPrompt], pad: Sequence[int] | None = None, arms: Sequence[int] | None = None
    ) -> None:
        """Resolve every intervention's positions for this batch of prompts (checks causality per row);
        `arms[row]`: the arm each row runs (see `arm_of`)."""
        self.prompts = list(prompts)
        pad_list = list(pad) if pad is not None else [0] * len(self.prompts)
        self.pad = torch.tensor(pad_list, dtype=torch.long, device=self.device)
        self.row_arms = list(arms) if arms is not None else None
        self.query_start = None
        self.tables = {}
        self.resolve_new(0)

    def resolve_new(self, first: int) -> None:
        """Resolve the positions of interventions `first..` for the batch already bound (a nested context)."""
        if self.prompts is None:
            return
        for i, iv in enumerate(self.interventions[first:], start=first):
            per_name: dict[str, list[RowPositions]] = {name: [] for name in iv.selectors()}
            for r, prompt in enumerate(self.prompts):
                if self.row_arms is not None and self.arm_of.get(i, self.row_arms[r]) != self.row_arms[r]:
                    for name in per_name:  # another arm's row: this intervention selects nothing there
                        per_name[name].append(RowPositions())
                    continue
                rows = {name: sel.resolve(prompt) for name, sel in iv.selectors().items()}
                iv.check_rows(rows, prompt)
                for name, row in rows.items():
                    per_name[name].append(row)
            for name, rows_list in per_name.items():
                self.tables[(i, name)] = RowTable.from_rows(rows_list, self.device)

    def snapshot(self) -> SteerState:
        """A copy of the interventions and the binding, for `restore` when a nested context closes."""
        prompts = None if self.prompts is None else list(self.prompts)
        return replace(self, tables=dict(self.tables), prompts=prompts, arm_of=dict(self.arm_of))

    def restore(self, saved: SteerState) -> None:
        self.interventions, self.prompts, self.pad = saved.interventions, saved.prompts, saved.pad
        self.query_start, self.tables = saved.query_start, saved.tables
        self.row_arms, self.arm_of = saved.row_arms, saved.arm_of

    def select(self, rows: list[int]) -> None:
        """Keep only batch `rows` (finished rows leave the batch during generation)."""
        if self.prompts is None or self.pad is None:
            raise SteerkitError("select() before bind()")
        keep = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.prompts = [self.prompts[i] for i in rows]
        self.pad = self.pad[keep]
        self.row_arms = None if self.row_arms is None else [self.row_arms[i] for i in rows]
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


def active_state(loaded: LoadedModel) -> SteerState | None:
    """The model's open `SteerState` (None outside every `steer()` context)."""
    return getattr(loaded.model, _STATE_ATTR, None)


@contextmanager
def steer(
    loaded: LoadedModel, *interventions: Any, prompts: Sequence[EncodedPrompt] | None = None
) -> Iterator[SteerState]:
    """Apply `interventions` to `loaded.model` inside the block; hooks are always removed on exit.

    Nested inside another `steer()` on the same model, the interventions join the open state (after the outer
    ones) and leave it on exit; see the module note for the composition rules.

    Args:
        loaded: the model.
        *interventions: `ResidualAdd`, `DirectionAblation`, `AttentionEdit`, `AttentionCapture`, ...
        prompts: bind positions for a bare forward pass over these (unpadded, equal-length or single) prompts,
            for every active intervention (an outer context's too, until this block ends).

    Yields:
        The model's shared `SteerState` (generate() rebinds it per batch).
    """
    for iv in interventions:
        iv.validate(loaded)
    state = active_state(loaded)
    outermost = state is None
    if state is None:
        state = SteerState(interventions=(), device=loaded.device)
        setattr(loaded.model, _STATE_ATTR, state)
    saved = state.snapshot()
    first = len(state.interventions)
    state.interventions = state.interventions + tuple(interventions)
    handles: list[Handle] = []
    try:
        for index, iv in enumerate(interventions, start=first):
            handles.extend(iv.attach(loaded, state, index))
        if prompts is not None:
            state.bind(prompts)
        else:
            state.resolve_new(first)
        yield state
    finally:
        for handle in reversed(handles):
            handle.remove()
        in_order = len(state.interventions) == first + len(interventions)
        state.restore(saved)
        if outermost:
            delattr(loaded.model, _STATE_ATTR)
        if not in_order:
            raise SteerkitError("steer() contexts on one model must close in reverse order of opening")
