"""`run_tests`, `run_program`, `run_many`: jobs in, results out; the process work is in `process.py`.

Design note: the child reports progress records (`start`, `program ok|error KIND`, `test I pass|fail|error
KIND`, `violation EVENT`, `done`) tagged with a per-run nonce; the parent decides the status from those records
and from how the process ended, never from the exit status alone, so an early exit cannot read as a pass.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from steerkit.core.progress import progress
from steerkit.errors import SteerkitError
from steerkit.execution.limits import (
    DEFAULT_LIMITS,
    ExecutionJob,
    ExecutionLimits,
    ExecutionResult,
    SandboxLevel,
    Status,
)
from steerkit.execution.process import Watch, spawn_and_watch

_SIGNAL_KINDS: dict[int, str] = {signal.SIGXCPU: "cpu_time", signal.SIGXFSZ: "file_size"}
_AUDIT_HOOK = {"enabled": True}


@contextmanager
def audit_hook_disabled() -> Iterator[None]:
    """Test-only switch: programs started inside this block run without the audit hook.

    It exists to show that the kernel layer alone contains a program (the fork bomb: RLIMIT_NPROC, not the
    hook, must stop it). Process-wide while it is active; never use it outside tests.
    """
    _AUDIT_HOOK["enabled"] = False
    try:
        yield
    finally:
        _AUDIT_HOOK["enabled"] = True


def _parse_records(raw: bytes, nonce: str) -> list[list[str]]:
    """Progress records carrying this run's nonce; anything else on the pipe is ignored."""
    prefix = nonce + " "
    lines = raw.decode("utf-8", "replace").split("\n")
    return [line[len(prefix) :].split(" ") for line in lines if line.startswith(prefix)]


def _test_outcomes(records: list[list[str]], total: int) -> dict[int, list[str]]:
    outcomes: dict[int, list[str]] = {}
    for rec in records:
        if rec[0] == "test" and len(rec) >= 3 and rec[1].isdigit() and int(rec[1]) < total:
            outcomes.setdefault(int(rec[1]), rec[2:])
    return outcomes


def _kind(name: str) -> str:
    return "memory" if name == "MemoryError" else name


def _abnormal(seen: Watch, records: list[list[str]], limits: ExecutionLimits, early: str) -> tuple[Status, str] | None:
    """The outcome when the child did not run to its `done` record (or did not exit cleanly after it)."""
    events = {rec[0] for rec in records}
    code = seen.returncode
    if seen.timed_out:
        return "timeout", "wall_time"
    if seen.overflow:
        return "error", "output_limit"
    if "start" not in events:
        return "error", "sandbox_start_failed"
    if "done" in events and code == 0:
        return None
    if code is not None and code < 0:
        if -code in _SIGNAL_KINDS:
            return "error", _SIGNAL_KINDS[-code]
        # SIGKILL at the hard CPU limit (a program may ignore SIGXCPU) is still a CPU-time outcome. Under
        # bwrap wait4 does not see the program's CPU time; a SIGKILL we did not send after at least the CPU
        # limit in wall time is then the kernel's (RLIMIT_CPU's hard limit; the other sender, the OOM killer,
        # is ruled out by RLIMIT_AS).
        used = max(seen.cpu_seconds, seen.wall_seconds)
        if -code == signal.SIGKILL and used >= limits.cpu_seconds:
            return "error", "cpu_time"
        return "error", "killed_by_signal"
    return "error", early if "done" not in events else "nonzero_exit"


def _interpret(
    seen: Watch, nonce: str, seconds: float, tests_total: int, limits: ExecutionLimits, early: str, level: SandboxLevel
) -> ExecutionResult:
    records = _parse_records(bytes(seen.records), nonce)
    outcomes = _test_outcomes(records, tests_total)
    passed = sum(1 for o in outcomes.values() if o[0] == "pass")
    status: Status
    kind: str | None
    abnormal = _abnormal(seen, records, limits, early)
    program = next((rec for rec in records if rec[0] == "program"), ["program", "missing"])
    if abnormal is not None:
        status, kind = abnormal
    elif program[1] != "ok":
        status, kind = "error", _kind(program[2] if len(program) > 2 else "unknown")
    elif len(outcomes) < tests_total:
        status, kind = "error", early
    else:
        first_bad = next((outcomes[i] for i in range(tests_total) if outcomes[i][0] != "pass"), None)
        if first_bad is None:
            status, kind = "passed", None
        else:
            status = "failed" if first_bad[0] == "fail" else "error"
            kind = _kind(first_bad[1] if len(first_bad) > 1 else "unknown")
    violations = tuple(rec[1] for rec in records if rec[0] == "violation" and len(rec) > 1)
    cpu = seen.cpu_seconds
    reported = next((rec[1] for rec in records if rec[0] == "cpu" and len(rec) > 1), "")
    if reported.replace(".", "", 1).isdigit():
        cpu = max(cpu, float(reported))
    return ExecutionResult(
        status=status,
        error_kind=kind,
        returncode=seen.returncode,
        stdout=bytes(seen.stdout).decode("utf-8", "replace"),
        stderr=bytes(seen.stderr).decode("utf-8", "replace"),
        seconds=seconds,
        tests_passed=passed,
        tests_total=tests_total,
        cpu_seconds=cpu,
        violations=violations,
        sandbox_level=level,
    )


def _check_limits(limits: object) -> ExecutionLimits:
    if not isinstance(limits, ExecutionLimits):
        raise SteerkitError(f"limits must be an ExecutionLimits, got {limits!r:.80}")
    return limits


def _execute(job: ExecutionJob, limits: ExecutionLimits) -> ExecutionResult:
    limits = _check_limits(job.limits or limits)
    tests = job.tests or ()
    payload = {
        "program": job.code,
        "setup": job.setup,
        "tests": list(tests),
        "limits": limits.to_dict(),
        "audit_hook": _AUDIT_HOOK["enabled"],
    }
    seen, nonce, seconds, level = spawn_and_watch(payload, limits)
    early = "exited_before_end" if job.tests is None else "exited_before_tests"
    return _interpret(seen, nonce, seconds, len(tests), limits, early, level)


def run_tests(
    code: str, tests: Sequence[str], *, setup: str = "", limits: ExecutionLimits = DEFAULT_LIMITS
) -> ExecutionResult:
    """Run `code`, then `setup`, then each test statement, in a fresh sandboxed subprocess.

    Every test runs (in order, in the program's namespace) and is counted; the status is decided by the first
    test that did not hold: "failed" for an AssertionError, "error" for anything else. Passed only if the
    program ran, every test ran and held, and the harness wrote its completion record (an early `sys.exit`,
    `os._exit` or signal is never a pass).

    Args:
        code: the program under test, e.g. a generated MBPP solution.
        tests: statements such as MBPP's `test_list` (`assert f(1) == 2`); must not be empty.
        setup: test fixtures run after `code`, before the tests (MBPP's `test_setup_code`, which builds
            objects of classes the solution defines: both MBPP tasks that have one, 367 and 927, fail if it
            runs first). An exception in it counts as an error of the program.
        limits: resource limits.

    Returns:
        The ExecutionResult.
    """
    if isinstance(tests, str):
        raise SteerkitError(f"tests must be a sequence of test statements, not one str: {tests!r:.80}")
    return _execute(ExecutionJob(code=code, tests=tuple(tests), setup=setup), _check_limits(limits))


def run_program(source: str, *, limits: ExecutionLimits = DEFAULT_LIMITS) -> ExecutionResult:
    """Run a whole program in a fresh sandboxed subprocess.

    Passed when the program's top level ran to its end without raising (SystemExit included, whatever its
    code: a program that exits early did not reach its end) and the child exited with status 0.
    """
    return _execute(ExecutionJob(code=source, tests=None), _check_limits(limits))


def _as_job(item: object, index: int) -> ExecutionJob:
    if isinstance(item, ExecutionJob):
        return item
    if isinstance(item, tuple | list) and len(item) == 2 and not isinstance(item[1], str):
        return ExecutionJob(code=item[0], tests=tuple(item[1]))
    raise SteerkitError(f"run_many job {index} must be an ExecutionJob or a (code, tests) pair, got {item!r:.80}")


def run_many(
    jobs: Sequence[tuple[str, Sequence[str]]] | Sequence[ExecutionJob],
    *,
    workers: int = 2,
    limits: ExecutionLimits = DEFAULT_LIMITS,
) -> list[ExecutionResult]:
    """Run many jobs, `workers` sandboxed subprocesses at a time; results in input order.

    Args:
        jobs: `(code, tests)` pairs (run_tests semantics) or ExecutionJob objects (setup, per-job limits,
            `tests=None` for a whole program).
        workers: concurrent subprocesses (threads only wait on them).
        limits: limits for jobs that carry none.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SteerkitError(f"run_many workers must be an integer >= 1, got {workers!r}")
    limits = _check_limits(limits)
    prepared = [_as_job(item, i) for i, item in enumerate(jobs)]
    if not prepared:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(prepared)), thread_name_prefix="sandbox") as pool:
        results = pool.map(lambda job: _execute(job, limits), prepared)
        return list(progress(results, desc="sandbox", total=len(prepared), unit="program"))
