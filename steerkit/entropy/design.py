"""The prompts x sources x samples design shared by the entropy entry points.

Design note: every generation is one *cell* (source, prompt, sample) with its own prompt id
`source|prompt|sample`, so seeds and byte streams are keyed per cell and a cell's output never depends on
the batch it ran in. Every arm goes through one `generate` call with one `GenerationConfig`, hence one
temperature for all. Seeds and stream keys are drawn in a fixed cell order: in `single_stream` mode one
source instance per source serves all its cells in order; in `multi_stream` each prompt gets its own forked
instance (`EntropySource.fork`). Per-sample records go to the `RecordLog` the script passes as they finish.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from steerkit.cli import as_bool, as_float, as_int
from steerkit.core.generation import Generation, GenerationConfig, Prompt, Sampler, generate
from steerkit.core.models import LoadedModel, load_model
from steerkit.core.records import RecordLog
from steerkit.corpora.prompts import CorpusPrompt, PromptCorpus, load_prompt_corpus
from steerkit.entropy.sources import ByteStream, EntropySource, make_source, parse_sources
from steerkit.errors import SteerkitError
from steerkit.metrics.text import TEXT_METRICS
from steerkit.stats.design import Design as TestDesign

StreamMode = Literal["single_stream", "multi_stream"]
STREAM_MODES = ("single_stream", "multi_stream")
SAMPLES_FILE = "samples/generations.jsonl"
ALL_SOURCES = "mt,os,sha256_mix,pcg64,fixed"
TESTED_METRICS = (*TEXT_METRICS, "length_tokens")  # entropy_analysis tests each one per source


def design_args(*, samples: int = 3, max_new_tokens: int = 48, tests: bool = True) -> list[tuple[str, Any, str]]:
    """The parameters every entropy entry point shares, as (flag, default, help) for `cli.add_args`; with `tests`
    (a run whose samples `entropy_analysis` tests), `--allow-underpowered`."""
    allow = [("--allow-underpowered", "false", "run even if the design cannot reject (tags the run)")]
    return [
        ("--model", "smollm2-135m-instruct", ""),
        ("--sources", ALL_SOURCES, "comma-separated: mt, os, sha256_mix, pcg64, fixed"),
        ("--samples", samples, "samples per prompt and source"),
        ("--limit", 4, "first N prompts (0 = all)"),
        ("--max-new-tokens", max_new_tokens, ""),
        ("--temperature", 0.7, "the same for every arm"),
        ("--top-p", 1.0, ""),
        ("--seed", 0, "seeds the reproducible sources (mt, pcg64)"),
        ("--chat", "true", "apply the chat template (open-ended prompts to an instruct model)"),
        ("--batch-size", 16, ""),
        ("--dtype", "float32", ""),
        ("--device", "cpu", ""),
        ("--threads", "auto", "torch threads: auto or N (steerkit.core.threads)"),
        ("--corpus", "corpus/entropy_prompts.json", ""),
        ("--experiment", "steerkit", ""),
        *(allow if tests else []),
    ]


@dataclass(frozen=True)
class Design:
    """The validated shared parameters: sources, sampling config (one temperature for all arms), prompts."""

    sources: list[str]
    seed: int
    n_samples: int
    cfg: GenerationConfig
    corpus: PromptCorpus
    prompts: list[CorpusPrompt]

    @classmethod
    def from_params(
        cls,
        *,
        sources: str,
        samples: str | int,
        limit: str | int,
        max_new_tokens: str | int,
        temperature: str | float,
        top_p: str | float,
        seed: str | int,
        chat: str | bool,
        batch_size: str | int,
        corpus: str,
    ) -> Design:
        """Validate the shared parameters of `design_args` (strings as MLflow passes them; one-line errors
        naming the bad value) before any model loads."""
        temp = as_float("temperature", temperature, 0.0)
        if temp == 0:
            raise SteerkitError(f"temperature must be > 0 for sampling, got {temperature!r}")
        seed_value = as_int("seed", seed, 0)
        cfg = GenerationConfig(
            max_new_tokens=as_int("max_new_tokens", max_new_tokens, 1),
            batch_size=as_int("batch_size", batch_size, 1),
            temperature=temp,
            top_p=as_float("top_p", top_p),
            seed=seed_value,
            chat=as_bool("chat", chat),
        )
        prompt_corpus = load_prompt_corpus(corpus)
        prompts = list(prompt_corpus.limit(as_int("limit", limit, 0)))
        n_samples = as_int("samples", samples, 1)
        return cls(parse_sources(sources), seed_value, n_samples, cfg, prompt_corpus, prompts)

    def declared(self, alpha: float = 0.05, baseline: str = "mt", controls: Sequence[str] = ("fixed",)) -> TestDesign:
        """The hypotheses `entropy_analysis` tests on this run with its defaults: every tested metric of every
        source other than the baseline and the controls vs the baseline, paired Wilcoxon over prompts (BH)."""
        tested = [s for s in self.sources if s != baseline and s not in controls]
        family = max(len(TESTED_METRICS) * len(tested), 1)
        return TestDesign("text metrics vs baseline source", "wilcoxon_exact", len(self.prompts), family, alpha)

    def cells(self) -> list[Cell]:
        return build_cells(self.prompts, self.sources, self.n_samples)

    def load_model(
        self, *, model: str, dtype: str, device: str, threads: str = "auto"
    ) -> tuple[LoadedModel, dict[str, Any]]:
        """Load the model; also the design's resolved parameters, for the script to log once."""
        loaded = load_model(model, dtype=dtype, device=device, threads=threads)
        params = {
            "n_prompts": len(self.prompts),
            "n_cells": len(self.prompts) * len(self.sources) * self.n_samples,
            "corpus_sha256": self.corpus.sha256,
            "generation": self.cfg.to_dict(),
            **loaded.params(),
        }
        return loaded, params


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
    log: RecordLog,
    *,
    seeds: Mapping[str, int] | None = None,
    sampler: Sampler | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Generate every cell, appending each record to `log` and flushing it as its batch finishes.

    Returns the records in cell order: cell fields, `extra[cell id]`, and the `Generation` fields.
    """
    by_id = {c.id: c for c in cells}
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
