"""Entry point `direct_injection` (seed 004): sampling whose randomness is each source's byte stream.

No 32-bit seed bottleneck: every cell (source, prompt, sample) gets a counter-mode byte stream keyed with 32
bytes from its source, and `StreamSampler` turns the stream into token draws (`gumbel`: argmax(log p +
noise_scale * Gumbel noise), one 32-bit uniform per vocabulary entry; `inverse_cdf`: one 53-bit uniform per
step). Every arm samples at the same temperature. Each record logs its stream key, so any stream (OS
randomness included) can be replayed. Controls, logged and enforced (a broken one fails the run):
`replay_identical_fraction` (the first source's arm regenerated from the logged keys must match exactly),
`fixed_identical_fraction` (the fixed source gives every sample the same key, so the same text), and
`stream_repeated_blocks` (32-byte blocks repeated in 64 KiB of each source's stream: must be 0; the reference's
hash stream repeated one block).
Analyse with `entropy_analysis -P run_ids=<this run id>`.

Usage: mlflow run . -e direct_injection --env-manager local -P method=inverse_cdf
       (or -P method=gumbel -P noise_scale=1.0)
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from steerkit import cli, tracking
from steerkit.cli import as_bool, as_float
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import LoadedModel
from steerkit.entropy.control import require_controls
from steerkit.entropy.design import (
    Cell,
    Design,
    check_mode,
    design_args,
    identical_fraction,
    run_cells,
    stream_plan,
    table_rows,
)
from steerkit.entropy.sampler import SAMPLING_METHODS, StreamSampler
from steerkit.entropy.sources import ByteStream, make_source, repeated_blocks


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("direct_injection", __doc__)
    cli.add_args(p, design_args(samples=3, max_new_tokens=48))
    p.add_argument("--mode", default="single_stream", help="single_stream or multi_stream")
    p.add_argument("--method", default="inverse_cdf", help=", ".join(SAMPLING_METHODS))
    p.add_argument("--noise-scale", default=1.0, help="gumbel only: 1 = exact sampling, 0 = greedy")
    return p.parse_args(argv)


def stream_checks(sources: list[str], seed: int) -> dict[str, float]:
    """Repeated 32-byte blocks in 64 KiB of one stream per source (0 expected)."""
    return {
        f"stream_repeated_blocks_{s}": repeated_blocks(make_source(s, seed).stream("check").read(65536))
        for s in sources
    }


def replay(
    loaded: LoadedModel, records: list[dict], cells: list[Cell], cfg: GenerationConfig, method: str, noise: float
) -> float:
    """Regenerate the first source's cells from their logged keys; the share whose tokens match."""
    first = [c for c in cells if c.source == cells[0].source]
    keys = {r["id"]: r["stream_key"] for r in records}
    streams = {c.id: ByteStream(bytes.fromhex(keys[c.id]), c.prompt.id) for c in first}
    again = run_cells(loaded, first, cfg, tracking.SampleLog("replay"), sampler=StreamSampler(streams, method, noise))
    original = {r["id"]: r["token_ids"] for r in records}
    return sum(r["token_ids"] == original[r["id"]] for r in again) / len(again)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("direct_injection", vars(args), experiment=args.experiment):
        design = Design.from_params(**cli.kwargs_for(Design.from_params, args))
        mode = check_mode(args.mode)
        noise = as_float("noise_scale", args.noise_scale, 0.0)
        StreamSampler({}, args.method, noise)  # validates method and noise scale before the model loads
        cells, cfg, seed = design.cells(), design.cfg, design.seed
        tracking.log_design(design.declared(), as_bool("allow_underpowered", args.allow_underpowered))
        loaded, resolved = design.load_model(**cli.kwargs_for(design.load_model, args))
        tracking.log_params(resolved)
        t0 = time.perf_counter()
        streams = stream_plan(cells, mode, seed)
        extra = {
            cid: {"stream_key": s.key_hex, "method": args.method, "noise_scale": noise} for cid, s in streams.items()
        }
        sampler = StreamSampler(streams, args.method, noise)
        records = run_cells(loaded, cells, cfg, tracking.SampleLog("generations"), sampler=sampler, extra=extra)
        tracking.log_table(table_rows(records), "samples.json")
        metrics = {
            "n_samples": len(records),
            "replay_identical_fraction": replay(loaded, records, cells, cfg, args.method, noise),
        }
        by_prompt: dict[str, list[list[int]]] = defaultdict(list)
        for r in records:
            if r["source"] == "fixed":
                by_prompt[r["prompt"]].append(r["token_ids"])
        if by_prompt:
            metrics["fixed_identical_fraction"] = identical_fraction(by_prompt)
        metrics |= stream_checks(design.sources, seed)
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        require_controls(metrics)  # logged above, then enforced: a broken control fails the run
        print(json.dumps(metrics))


if __name__ == "__main__":
    tracking.entry_point(main)
