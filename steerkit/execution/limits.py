"""Value types of the sandbox: the limits a program runs under, a job, and the result of running it.

Design note: these are plain frozen dataclasses with no process logic, so a caller can build, compare and log
them (`to_dict`) without touching subprocesses. Every limit is validated once, in `__post_init__`, with a
one-line `SteerkitError` naming the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from steerkit.errors import SteerkitError

Status = Literal["passed", "failed", "error", "timeout"]
STATUSES: tuple[Status, ...] = ("passed", "failed", "error", "timeout")
Isolation = Literal["auto", "required", "audit_hook_only"]
ISOLATIONS: tuple[Isolation, ...] = ("auto", "required", "audit_hook_only")
SandboxLevel = Literal["namespaces", "audit_hook_only"]


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SteerkitError(f"ExecutionLimits.{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SteerkitError(f"ExecutionLimits.{name} must be {bound}, got {value!r}")


@dataclass(frozen=True)
class ExecutionLimits:
    """Resource limits for one sandboxed program.

    Attributes:
        wall_seconds: wall-clock limit from spawn; then the whole process group is killed (status "timeout").
        cpu_seconds: RLIMIT_CPU soft limit (SIGXCPU, error kind "cpu_time"); the hard limit is one second more.
        memory_mb: RLIMIT_AS (address space); an allocation beyond it raises MemoryError (error kind "memory").
        output_bytes: bytes kept per stream (stdout, stderr); a program that writes more is killed at once
            (error kind "output_limit"), so a flood can neither hang the parent nor fill its memory.
        max_processes: RLIMIT_NPROC headroom: the child may start at most this many tasks (processes or
            threads) beyond those its user already runs. Under namespaces the kernel enforces it (uid 65534 in
            the program's own user namespace); in the fallback as root it does not, and the audit hook (which
            refuses fork/exec/spawn/system/Popen) is the defence.
        file_size_mb: RLIMIT_FSIZE; a larger write fails with OSError (EFBIG) inside the program.
        isolate_network: in the fallback, also run the child in a fresh network namespace (`unshare --net`)
            when that works on this machine (under bubblewrap it always has one); the audit hook refusing every
            socket operation applies either way.
        site_packages: let the program import the interpreter's site-packages (default: standard library only,
            `python -S`, as MBPP's reference evaluation; also ~15 ms faster per program).
        hash_seed: PYTHONHASHSEED of the child, so set/dict-of-str iteration order (and hence pass/fail of
            order-sensitive programs) is reproducible; None gives a random seed per program.
        isolation: "auto" runs every program under bubblewrap namespaces when they work on this machine and
            otherwise falls back to the audit hook alone (with a one-line warning); "required" makes that
            fallback a SteerkitError; "audit_hook_only" skips the namespaces on purpose (benchmarks, tests).
    """

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    output_bytes: int = 64_000
    max_processes: int = 64
    file_size_mb: int = 16
    isolate_network: bool = True
    site_packages: bool = False
    hash_seed: int | None = 0
    isolation: Isolation = "auto"

    def __post_init__(self) -> None:
        wall = self.wall_seconds
        if isinstance(wall, bool) or not isinstance(wall, int | float) or not math.isfinite(wall) or wall <= 0:
            raise SteerkitError(f"ExecutionLimits.wall_seconds must be a finite number > 0, got {wall!r}")
        _check_int("cpu_seconds", self.cpu_seconds, 1)
        _check_int("memory_mb", self.memory_mb, 64)
        _check_int("output_bytes", self.output_bytes, 1)
        _check_int("max_processes", self.max_processes, 1)
        _check_int("file_size_mb", self.file_size_mb, 0)
        for name in ("isolate_network", "site_packages"):
            if not isinstance(getattr(self, name), bool):
                raise SteerkitError(f"ExecutionLimits.{name} must be true or false, got {getattr(self, name)!r}")
        if self.hash_seed is not None:
            _check_int("hash_seed", self.hash_seed, 0, 4_294_967_295)
        if self.isolation not in ISOLATIONS:
            raise SteerkitError(f"ExecutionLimits.isolation must be one of {ISOLATIONS}, got {self.isolation!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExecutionJob:
    """One unit of work for `run_many`.

    Attributes:
        code: the program (for MBPP: the solution).
        tests: test statements (MBPP's `test_list`: one `assert ...` each); None runs `code` as a whole
            program (`run_program` semantics).
        setup: test fixtures run after `code` and before the tests (MBPP's `test_setup_code`).
        limits: this job's limits; None uses the `limits` passed to `run_many`.
    """

    code: str
    tests: tuple[str, ...] | None = ()
    setup: str = ""
    limits: ExecutionLimits | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.code, str):
            raise SteerkitError(f"ExecutionJob.code must be a str, got {type(self.code).__name__}")
        if not isinstance(self.setup, str):
            raise SteerkitError(f"ExecutionJob.setup must be a str, got {type(self.setup).__name__}")
        if self.tests is not None:
            if isinstance(self.tests, str) or not isinstance(self.tests, Sequence):
                raise SteerkitError(f"ExecutionJob.tests must be a sequence of str, got {self.tests!r:.80}")
            object.__setattr__(self, "tests", tuple(self.tests))
            if not self.tests:
                raise SteerkitError("ExecutionJob.tests is empty; pass tests=None to run a whole program")
            bad = [t for t in self.tests if not isinstance(t, str)]
            if bad:
                raise SteerkitError(f"ExecutionJob.tests must all be str, got {bad[0]!r:.80}")
        if self.limits is not None and not isinstance(self.limits, ExecutionLimits):
            raise SteerkitError(f"ExecutionJob.limits must be ExecutionLimits or None, got {self.limits!r:.80}")


@dataclass(frozen=True)
class ExecutionResult:
    """What happened to one sandboxed program.

    Attributes:
        status: "passed" (ran to its end and every test held), "failed" (an assertion failed), "error"
            (anything else: an exception, a sandbox refusal, an early exit, a signal, a limit) or "timeout".
        error_kind: None when passed; else the exception class name ("AssertionError", "NameError",
            "SyntaxError", "SystemExit", "SandboxViolation", ...) or one of "memory", "cpu_time", "wall_time",
            "output_limit", "file_size", "killed_by_signal", "exited_before_tests" (run_tests),
            "exited_before_end" (run_program), "sandbox_start_failed".
        returncode: the child's exit status (negative: killed by that signal); None if it could not be read.
        stdout: captured standard output, at most `output_bytes` bytes (decoded with replacement).
        stderr: captured standard error, likewise (tracebacks and failed tests are printed here).
        seconds: wall time from spawn to reaping, in seconds.
        tests_passed: tests that ran and held.
        tests_total: tests given (0 for a whole program).
        cpu_seconds: user + system CPU time of the child (under namespaces: what the harness reported at its
            end, 0 when it did not get there; the kernel's wait4 only sees bubblewrap).
        violations: sandbox refusals the program triggered (audit event names, at most 20), also when the
            program caught the exception and went on.
        sandbox_level: "namespaces" (bubblewrap: own user, mount, pid, ipc, uts and network namespaces) or
            "audit_hook_only" (the fallback: a plain subprocess with rlimits and the audit hook).
    """

    status: Status
    error_kind: str | None
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    tests_passed: int
    tests_total: int
    cpu_seconds: float = 0.0
    violations: tuple[str, ...] = field(default=())
    sandbox_level: SandboxLevel = "audit_hook_only"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise SteerkitError(f"ExecutionResult.status must be one of {STATUSES}, got {self.status!r}")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (violations as a list)."""
        out = dataclasses.asdict(self)
        out["violations"] = list(self.violations)
        return out


DEFAULT_LIMITS = ExecutionLimits()
