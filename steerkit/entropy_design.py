"""The prompts x sources x samples design shared by the entropy entry points.

Design note: every generation is one *cell* (source, prompt, sample) with its own prompt id
`source|prompt|sample`, so seeds and byte streams are keyed per cell and a cell's output never depends on
the batch it ran in. Every arm goes through one `generate` call with one `GenerationConfig`, hence one
temperature for all. Seeds and stream keys are drawn in a fixed cell order: in `single_stream` mode one
source instance per source serves all its cells in order; in `multi_stream` each prompt gets its own forked
instance (`EntropySource.fork`). Per-sample records are written as they finish (`tracking.SampleLog`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from steerkit import tracking
from steerkit.corpus import CorpusPrompt
from steerkit.entropy import ByteStream, EntropySource, make_source
from steerkit.errors import SteerkitError
from steerkit.generation import Generation, GenerationConfig, Prompt, Sampler, generate
from steerkit.models import LoadedModel

StreamMode = Literal["single_stream", "multi_stream"]
STREAM_MODES = ("single_stream", "multi_stream")
SAMPLES_FILE = "samples/generations.jsonl"


@dataclass(frozen=True)
class Cell:
    """One generation of the design: `sample` of `prompt` under `source`."""

    source: str
    prompt: CorpusPrompt
    sample: int

    @property
    def id(self) -> str:
        return f"{self.source}|{self.prompt.id}|{self.sample}"

    def as_prompt(self) -> Prompt:
        return Prompt(self.id, self.prompt.prompt)


def build_cells(prompts: Sequence[CorpusPrompt], sources: Sequence[str], n_samples: int) -> list[Cell]:
    """Cells in source, prompt, sample order (the order in which seeds and keys are drawn)."""
    if n_samples < 1:
        raise SteerkitError(f"samples must be >= 1, got {n_samples!r}")
    return [Cell(s, p, k) for s in sources for p in prompts for k in range(n_samples)]


def check_mode(mode: str) -> StreamMode:
    if mode not in STREAM_MODES:
        raise SteerkitError(f"unknown mode {mode!r} (choose from {', '.join(STREAM_MODES)})")
    return mode  # type: ignore[return-value]


def _instances(cells: Sequence[Cell], mode: StreamMode, seed: int) -> dict[tuple[str, str], EntropySource]:
    """One source instance per source (single_stream) or per (source, prompt) (multi_stream)."""
    roots: dict[str, EntropySource] = {}
    out: dict[tuple[str, str], EntropySource] = {}
    for c in cells:
        root = roots.setdefault(c.source, make_source(c.source, seed))
        key = (c.source, c.prompt.id if mode == "multi_stream" else "")
        if key not in out:
            out[key] = root.fork(c.prompt.id) if mode == "multi_stream" else root
    return out


def seed_plan(cells: Sequence[Cell], mode: StreamMode, seed: int) -> dict[str, int]:
    """A 32-bit sampling seed per cell id, drawn from the cell's source in cell order."""
    inst = _instances(cells, mode, seed)
    return {c.id: inst[(c.source, c.prompt.id if mode == "multi_stream" else "")].seeds(1)[0] for c in cells}


def stream_plan(cells: Sequence[Cell], mode: StreamMode, seed: int) -> dict[str, ByteStream]:
    """A counter-mode byte stream per cell id, keyed from the cell's source in cell order, labelled by prompt."""
    inst = _instances(cells, mode, seed)
    return {c.id: inst[(c.source, c.prompt.id if mode == "multi_stream" else "")].stream(c.prompt.id) for c in cells}


def run_cells(
    loaded: LoadedModel,
    cells: Sequence[Cell],
    cfg: GenerationConfig,
    name: str,
    *,
    seeds: Mapping[str, int] | None = None,
    sampler: Sampler | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Generate every cell, logging each record to `samples/<name>.jsonl` as its batch finishes.

    Returns the records in cell order: cell fields, `extra[cell id]`, and the `Generation` fields.
    """
    by_id = {c.id: c for c in cells}
    log = tracking.SampleLog(name)
    done = 0

    def on_result(gen: Generation) -> None:
        nonlocal done
        c = by_id[gen.prompt_id]
        record: dict[str, Any] = {"id": c.id, "source": c.source, "prompt": c.prompt.id, "category": c.prompt.category}
        record |= {"sample": c.sample, **(extra or {}).get(c.id, {}), **gen.to_dict()}
        log.append(record)
        done += 1
        if done % cfg.batch_size == 0 or done == len(cells):
            log.flush()

    generate(loaded, [c.as_prompt() for c in cells], config=cfg, seeds=seeds, sampler=sampler, on_result=on_result)
    log.flush()
    order = {c.id: i for i, c in enumerate(cells)}
    return sorted(log.records, key=lambda r: order[r["id"]])


def table_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-sample rows for `tracking.log_table` (token ids dropped; they stay in the JSONL artifact)."""
    return [{k: v for k, v in r.items() if k not in ("token_ids", "prompt_id")} for r in records]


def identical_fraction(groups: Mapping[Any, Sequence[Sequence[int]]]) -> float:
    """Share of groups whose token-id sequences are all equal (1.0 for an empty mapping)."""
    if not groups:
        return 1.0
    return sum(all(list(x) == list(seqs[0]) for x in seqs) for seqs in groups.values()) / len(groups)
