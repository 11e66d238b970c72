"""Entry point `entropy_seeds` (seed 004): does the origin of a 32-bit sampling seed change the text?

prompts x sources x samples, every cell sampled at the same temperature (the reference compared T=1.0 with
T=0.7) with its seed drawn from its source (`single_stream`: one instance per source serves every cell;
`multi_stream`: one instance per prompt). Logs each sample's seed and text (`samples/generations.jsonl`, written
as it goes, and the `samples.json` table), KS tests of each source's seeds against uniform and between
sources (`seed_ks.json`, on `ks_draws` fresh seeds per source), and the control: the `fixed` source gives
every sample of a prompt the same seed, so its samples must be identical (`fixed_identical_fraction` = 1).
Analyse with `entropy_analysis -P run_ids=<this run id>`.

Usage: mlflow run . -e entropy_seeds --env-manager local -P limit=4 -P samples=3
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from steerkit import tracking
from steerkit.corpus import load_prompt_corpus
from steerkit.entropy import compare_seed_distributions, make_source, parse_sources
from steerkit.entropy_design import build_cells, check_mode, identical_fraction, run_cells, seed_plan, table_rows
from steerkit.errors import SteerkitError
from steerkit.generation import GenerationConfig
from steerkit.models import load_model
from steerkit.params import as_bool, as_float, as_int

ALL_SOURCES = "mt,os,sha256_mix,pcg64,fixed"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="entropy_seeds", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sources", default=ALL_SOURCES, help="comma-separated: mt, os, sha256_mix, pcg64, fixed")
    p.add_argument("--mode", default="single_stream", help="single_stream or multi_stream")
    p.add_argument("--samples", default=3, help="samples per prompt and source")
    p.add_argument("--limit", default=4, help="first N prompts (0 = all)")
    p.add_argument("--max-new-tokens", default=48)
    p.add_argument("--temperature", default=0.7, help="the same for every arm")
    p.add_argument("--top-p", default=1.0)
    p.add_argument("--seed", default=0, help="seeds the reproducible sources (mt, pcg64)")
    p.add_argument("--ks-draws", default=2000, help="fresh seeds per source for the KS tests")
    p.add_argument("--chat", default="true", help="apply the chat template (open-ended prompts to an instruct model)")
    p.add_argument("--batch-size", default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default="corpus/entropy_prompts.json")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def seed_ks(sources: list[str], draws: int, seed: int) -> list[dict]:
    samples = {s: make_source(s, seed + 1).seeds(draws) for s in sources}
    return [r.to_dict() for r in compare_seed_distributions(samples)]


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("entropy_seeds", vars(args), experiment=args.experiment):
        sources = parse_sources(args.sources)
        mode = check_mode(args.mode)
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
        cells = build_cells(prompts, sources, as_int("samples", args.samples, 1))
        ks_draws = as_int("ks_draws", args.ks_draws, 1)
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
        seeds = seed_plan(cells, mode, seed)
        records = run_cells(
            loaded, cells, cfg, "generations", seeds=seeds, extra={k: {"seed": v} for k, v in seeds.items()}
        )
        tracking.log_table(table_rows(records), "samples.json")
        ks = seed_ks(sources, ks_draws, seed)
        tracking.log_json(ks, "seed_ks.json")
        metrics = summary(records, ks)
        tracking.log_metrics({**metrics, "experiment_seconds": time.perf_counter() - t0})
        print(json.dumps(metrics))


def summary(records: list[dict], ks: list[dict]) -> dict[str, float]:
    """Counts, the fixed-seed control, and the KS p-values against uniform per source."""
    by_prompt: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for r in records:
        by_prompt[(r["source"], r["prompt"])].append(r["token_ids"])
    out: dict[str, float] = {
        "n_samples": len(records),
        "mean_tokens": sum(r["n_tokens"] for r in records) / len(records),
    }
    fixed = {k: v for k, v in by_prompt.items() if k[0] == "fixed"}
    if fixed:
        out["fixed_identical_fraction"] = identical_fraction(fixed)
    others = {k: v for k, v in by_prompt.items() if k[0] != "fixed" and len(v) > 1}
    if others:
        out["nonfixed_identical_fraction"] = identical_fraction(others)
    for r in ks:
        if r["b"] == "uniform":
            out[f"ks_uniform_p_{r['a']}"] = r["p_value"]
    return out


if __name__ == "__main__":
    tracking.entry_point(main)
