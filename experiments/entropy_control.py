"""Entry point `entropy_control` (seed 004): the same seed values routed through different sources give the same text.

The mechanism check. One list of 32-bit seeds (drawn from `seed_source`) is given to every source's arm: cell
(source, prompt, k) samples with seed k of that prompt, at one temperature, through the same `generate` call.
If a source's identity could reach the text by any path other than the seed value, outputs would differ;
`identical_fraction` (share of (prompt, k) whose outputs agree across all sources) must be 1. As a contrast,
`distinct_seed_fraction` is the share of (prompt, k != k') pairs of the first source whose outputs differ: the
seed value itself does change the text.

Usage: mlflow run . -e entropy_control --env-manager local
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from steerkit import tracking
from steerkit.corpus import load_prompt_corpus
from steerkit.entropy import make_source, parse_sources
from steerkit.entropy_design import build_cells, identical_fraction, run_cells, table_rows
from steerkit.errors import SteerkitError
from steerkit.generation import GenerationConfig
from steerkit.models import load_model
from steerkit.params import as_bool, as_float, as_int


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="entropy_control", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sources", default="mt,os,sha256_mix,pcg64,fixed")
    p.add_argument("--seed-source", default="mt", help="the source the shared seed values come from")
    p.add_argument("--samples", default=3, help="seed values per prompt")
    p.add_argument("--limit", default=4, help="first N prompts (0 = all)")
    p.add_argument("--max-new-tokens", default=32)
    p.add_argument("--temperature", default=0.7)
    p.add_argument("--top-p", default=1.0)
    p.add_argument("--seed", default=0)
    p.add_argument("--chat", default="true")
    p.add_argument("--batch-size", default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/entropy_prompts.json")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def control_metrics(records: list[dict]) -> dict[str, float]:
    """identical_fraction across sources per (prompt, k); distinct_seed_fraction within the first source."""
    across: dict[tuple[str, int], list[list[int]]] = defaultdict(list)
    for r in records:
        across[(r["prompt"], r["sample"])].append(r["token_ids"])
    first = records[0]["source"]
    per_prompt: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)
    for r in records:
        if r["source"] == first:
            per_prompt[r["prompt"]].append((r["seed"], r["token_ids"]))
    pairs = [
        (a, b)
        for outs in per_prompt.values()
        for i, a in enumerate(outs)
        for b in outs[i + 1 :]
        if a[0] != b[0]  # pairs with different seed values
    ]
    distinct = sum(a[1] != b[1] for a, b in pairs) / len(pairs) if pairs else float("nan")
    return {
        "identical_fraction": identical_fraction(across),
        "n_groups": len(across),
        "distinct_seed_fraction": distinct,
        "n_seed_pairs": len(pairs),
    }


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("entropy_control", vars(args), experiment=args.experiment):
        sources = parse_sources(args.sources)
        seed = as_int("seed", args.seed, 0)
        temperature = as_float("temperature", args.temperature, 0.0)
        if temperature == 0:
            raise SteerkitError(f"temperature must be > 0 for sampling, got {args.temperature!r}")
        cfg = GenerationConfig(
            max_new_tokens=as_int("max_new_tokens", args.max_new_tokens, 1),
            batch_size=as_int("batch_size", args.batch_size, 1),
            temperature=temperature,
            top_p=as_float("top_p", args.top_p),
            seed=seed,
            chat=as_bool("chat", args.chat),
        )
        corpus = load_prompt_corpus(args.corpus)
        prompts = list(corpus.limit(as_int("limit", args.limit, 0)))
        n = as_int("samples", args.samples, 1)
        shared_values = make_source(args.seed_source, seed).seeds(len(prompts) * n)
        shared = {(p.id, k): shared_values[i * n + k] for i, p in enumerate(prompts) for k in range(n)}
        cells = build_cells(prompts, sources, n)
        seeds = {c.id: shared[(c.prompt.id, c.sample)] for c in cells}
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        tracking.log_params(
            {
                "n_prompts": len(prompts),
                "n_cells": len(cells),
                "corpus_sha256": corpus.sha256,
                "generation": cfg.to_dict(),
                **{f"model_{k}": v for k, v in loaded.describe().items()},
            }
        )
        t0 = time.perf_counter()
        extra = {c.id: {"seed": seeds[c.id], "seed_origin": args.seed_source} for c in cells}
        records = run_cells(loaded, cells, cfg, "generations", seeds=seeds, extra=extra)
        tracking.log_table(table_rows(records), "samples.json")
        metrics = control_metrics(records)
        tracking.set_tags({"steerkit.control_passed": str(metrics["identical_fraction"] == 1.0).lower()})
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        print(json.dumps(metrics))


if __name__ == "__main__":
    tracking.entry_point(main)
