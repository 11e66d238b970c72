"""Sandbox throughput: Python programs/s and Rust compile+run/s, with and without bubblewrap namespaces.

Workload: MBPP-sized Python jobs (a function and three asserts) through `run_many`, and small Rust sources (a
function and two `#[test]`s) through `run_rust_many`, `--workers` at a time (default 2, the machine's cores),
at isolation "audit_hook_only" (the pre-bubblewrap design) and "required" (namespaces). Each figure is the
median of `--repeats` batches, the two levels alternating batch by batch (on a shared machine, load from other
processes then hits both alike); a warm-up batch runs first. Also the median latency of one program run alone.

Usage: python bench/bench_sandbox.py [--python-jobs 200] [--rust-jobs 12] [--repeats 3] [--out bench_sandbox.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerkit.execution import ExecutionJob, ExecutionLimits, RustJob, run_many, run_rust_many, sandbox_level

LEVELS = {"audit_hook_only": "without bwrap (audit hook only)", "required": "with bwrap (namespaces)"}
PY = "def double(x):\n    return 2 * x\n"
PY_TESTS = ("assert double(1) == 2", "assert double(-3) == -6", "assert double(0) == 0")
RUST = (
    "pub fn double(x: i64) -> i64 {{\n    2 * x + {k} - {k}\n}}\n#[cfg(test)]\nmod tests {{\n    use super::*;\n"
    "    #[test]\n    fn pos() {{ assert_eq!(double(2), 4); }}\n"
    "    #[test]\n    fn neg() {{ assert_eq!(double(-1), -2); }}\n}}\n"
)


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(batches: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per batch, the levels run alternately so that load from other processes hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(repeats):
        for name, fn in batches.items():
            times[name].append(seconds(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def bench(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    limits = {level: ExecutionLimits(isolation=level) for level in LEVELS}  # type: ignore[arg-type]
    jobs = [ExecutionJob(code=PY + f"# {i}\n", tests=PY_TESTS) for i in range(args.python_jobs)]
    rust = [RustJob(id=str(i), source=RUST.format(k=i)) for i in range(args.rust_jobs)]

    def python_batch(level: str) -> Callable[[], None]:
        return lambda: assert_all(run_many(jobs, workers=args.workers, limits=limits[level]))

    def one(level: str) -> Callable[[], None]:
        return lambda: assert_all(run_many(jobs[:1], workers=1, limits=limits[level]))

    def rust_batch(level: str) -> Callable[[], None]:
        return lambda: assert_all(run_rust_many(rust, workers=args.workers, limits=limits[level]))

    for level in LEVELS:  # warm-up
        python_batch(level)()
    py = interleaved({level: python_batch(level) for level in LEVELS}, args.repeats)
    alone = interleaved({level: one(level) for level in LEVELS}, max(args.repeats * 10, 20))
    rs = interleaved({level: rust_batch(level) for level in LEVELS}, args.repeats)
    return {
        level: {
            "python_programs_per_s": args.python_jobs / py[level],
            "python_ms_per_program_alone": alone[level] * 1000,
            "rust_compile_run_per_s": args.rust_jobs / rs[level],
            "rust_ms_per_source": rs[level] / args.rust_jobs * 1000 * args.workers,
        }
        for level in LEVELS
    }


def assert_all(results: list[Any]) -> None:
    assert all(r.passed for r in results), next(r for r in results if not r.passed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python-jobs", type=int, default=200)
    parser.add_argument("--rust-jobs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_sandbox.json"))
    args = parser.parse_args()
    if sandbox_level() != "namespaces":
        raise SystemExit("bubblewrap namespaces do not start here: nothing to compare (see sandbox_level())")
    load_before = os.getloadavg()[0]
    results = bench(args)
    base, ns = results["audit_hook_only"], results["required"]
    ratio = base["python_programs_per_s"] / ns["python_programs_per_s"]
    report = {
        "cpu": cpu_model(),
        "workers": args.workers,
        "python_jobs": args.python_jobs,
        "rust_jobs": args.rust_jobs,
        "repeats": args.repeats,
        "results": results,
        "python_cost_ratio_bwrap_vs_without": ratio,
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }
    print(f"CPU: {report['cpu']}, workers={args.workers}, median of {args.repeats} interleaved batches")
    print(f"load average before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"{'level':34} {'py prog/s':>10} {'py ms alone':>12} {'rust c+r/s':>11} {'rust ms/src':>12}")
    for level, label in LEVELS.items():
        r = results[level]
        print(
            f"{label:34} {r['python_programs_per_s']:10.1f} {r['python_ms_per_program_alone']:12.1f} "
            f"{r['rust_compile_run_per_s']:11.2f} {r['rust_ms_per_source']:12.0f}"
        )
    print(f"bwrap cost for Python: {ratio:.2f}x the per-program time without it (target < 2x)")
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
