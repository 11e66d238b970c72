"""torch's intra-op thread count, one parameter for every entry point that loads a model.

Design note: torch starts one OpenMP worker per physical core it sees, whatever the process may actually use
(a CPU affinity mask, a container's cpuset) and whatever else runs on the machine. On a shared machine those
workers spin against other processes: on 2 busy cores one 4-pass `knockout` step took 43 s with two threads and
2.7 s with one. `auto` therefore takes torch's setting (in a fresh process its default: `OMP_NUM_THREADS`, else
the physical cores) capped at the CPUs this process may run on; a number sets it exactly. The value is
process-wide (torch has one pool), so it is applied once, by `load_model(threads=...)`, and logged with the
model's facts (`model_threads`).
"""

from __future__ import annotations

import os

import torch

from steerkit.errors import SteerkitError


def allowed_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_threads(threads: int | str) -> int:
    """`auto` = min(torch's current setting, `allowed_cpus()`); else a positive integer ("4" and 4 alike).

    Raises:
        SteerkitError: anything else (0, -1, "x"), naming the value.
    """
    if threads == "auto":
        return max(1, min(torch.get_num_threads(), allowed_cpus()))
    try:
        number = int(str(threads).strip())
    except ValueError:
        number = 0
    if isinstance(threads, bool) or number < 1:
        raise SteerkitError(f"threads must be a positive integer or 'auto', got {threads!r}")
    return number


def set_threads(threads: int | str) -> int:
    """Resolve `threads` and apply it to torch; returns the value set."""
    resolved = resolve_threads(threads)
    torch.set_num_threads(resolved)
    return resolved


__all__ = ["allowed_cpus", "resolve_threads", "set_threads"]
