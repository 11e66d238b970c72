"""Generation throughput on the embedded model: steered vs unsteered, batched vs one at a time, cache vs recompute.

Workload (issue #2): SmolLM2-135M-Instruct, CPU, batch 16, 128 new tokens, prompts from the n50 corpus, greedy.
Each figure is the median of `--repeats` runs; throughput = generated tokens / wall seconds.

Usage: python bench/bench_generation.py [--dtype float32|bfloat16] [--repeats 3] [--output bench.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from steerkit.attention.edge_rules import attention_scale
from steerkit.core.generation import generate
from steerkit.core.models import load_model
from steerkit.corpora.prompts import load_prompt_corpus

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median wall seconds of `fn()` over `repeats` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def interleaved(fns: dict[str, Any], repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Wall seconds of every `fns[name]()` per round, rounds of all of them in turn (so a machine slowing down
    or a neighbour's load hits every row alike, and rows compare pair by pair within a round), and the results of
    the last round. Odd rounds run the rows in reverse order, so drift within a round does not always land on the
    same rows (a fixed order put the last row 9% behind the first in one round-robin run of identical work)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for r in range(repeats):
        for name, fn in list(fns.items())[:: -1 if r % 2 else 1]:
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return times, results


def throughput(seconds: float, gens: list[Any]) -> float:
    return sum(g.n_tokens for g in gens) / seconds


def cached_load_seconds() -> float:
    """Wall time of `load_model()` in a fresh process (cache already filled), including imports."""
    code = "import time; t=time.perf_counter(); from steerkit.core.models import load_model; load_model(); "
    code += "print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--recompute-prompts", type=int, default=2, help="prompts for the slow recompute loop")
    p.add_argument("--output", default="")
    args = p.parse_args()
    torch.manual_seed(0)
    load_model()  # fill the GGUF cache before timing loads
    lm = load_model(dtype=args.dtype)
    corpus = load_prompt_corpus(ROOT / "corpus" / "generation_prompts_n50.json")
    prompts = [cp.as_prompt() for cp in corpus.prompts[: args.batch_size]]
    edit = attention_scale("signature_to_doctest", round(0.6 * lm.n_layers), 3.0)
    gen = {"max_new_tokens": args.max_new_tokens, "progress": False}
    bs = args.batch_size
    generate(lm, prompts[:2], max_new_tokens=4, progress=False)  # warm-up

    t_plain, plain = timed(lambda: generate(lm, prompts, batch_size=bs, **gen), args.repeats)
    t_steer, steered = timed(lambda: generate(lm, prompts, interventions=[edit], batch_size=bs, **gen), args.repeats)
    t_single, single = timed(lambda: generate(lm, prompts, batch_size=1, **gen), 1)
    few = prompts[: args.recompute_prompts]
    t_recomp, recomp = timed(lambda: generate(lm, few, batch_size=1, cache="none", **gen), 1)
    figures = {
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "unsteered_tok_s": throughput(t_plain, plain),
        "steered_tok_s": throughput(t_steer, steered),
        "one_at_a_time_tok_s": throughput(t_single, single),
        "recompute_loop_tok_s": throughput(t_recomp, recomp),
        "batched_equals_single": [g.token_ids for g in plain] == [g.token_ids for g in single],
        "cached_load_s": cached_load_seconds(),
    }
    figures["steered_over_unsteered"] = figures["steered_tok_s"] / figures["unsteered_tok_s"]
    figures["batched_over_single"] = figures["unsteered_tok_s"] / figures["one_at_a_time_tok_s"]
    figures["batched_over_recompute"] = figures["unsteered_tok_s"] / figures["recompute_loop_tok_s"]
    print(json.dumps(figures, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
