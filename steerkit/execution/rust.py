"""Rust: `compile_and_test_rust` compiles a source with `rustc --test` and runs its libtest binary, both sandboxed.

Design note: two sandboxes per source, one per step, sharing one fresh per-run directory (mode 0700 on the
host, deleted afterwards) bound at /sandbox: the compile sees the Rust sysroot read-only and writes the test
binary there (so `include_str!("/etc/passwd")` or `include_bytes!` of anything outside fails: those paths do
not exist inside); the test run sees only /usr and that directory. Both run under `prlimit` (util-linux), so
the limits are set inside, by the kernel, for uid 65534 (compile limits: `COMPILE_LIMITS`). The test binary
runs with `--test-threads=1` (deterministic order) and libtest's per-test lines are parsed; the status comes
from those lines, libtest's summary and the exit status together, so exiting early (no summary) or running
zero tests is never a pass. Without namespaces the same steps run as plain subprocesses with the same rlimits
(`sandbox_level` "audit_hook_only": there is no audit hook for native code, so the fallback is rlimits, a
scrubbed environment and `unshare --net` only; `isolation="required"` refuses it).

Limit (documented): a test may write a forged libtest summary to stdout itself; libtest offers no nonce. The
threat model is buggy or accidentally harmful model output, as for Python.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from steerkit.core.progress import progress
from steerkit.errors import SteerkitError
from steerkit.execution.limits import DEFAULT_LIMITS, ExecutionLimits, SandboxLevel
from steerkit.execution.process import Watch, network_prefix, watch_command
from steerkit.execution.sandbox import SAFE_PATH, SANDBOX_ID, WORKDIR, bwrap_command, level_for, tool, user_namespace

RustStatus = Literal["passed", "failed", "compile_error", "timeout", "killed", "error"]
RUST_STATUSES: tuple[RustStatus, ...] = ("passed", "failed", "compile_error", "timeout", "killed", "error")
TestOutcome = Literal["ok", "failed", "ignored"]
EDITIONS = ("2015", "2018", "2021", "2024")
# rustc is a large multi-threaded program: more address space, tasks and time than a test binary needs, and
# room for the warnings of a long generated file (past the output cap a compile counts as "killed").
COMPILE_LIMITS = ExecutionLimits(
    wall_seconds=60.0, cpu_seconds=60, memory_mb=4096, output_bytes=1_000_000, max_processes=256, file_size_mb=256
)
_SOURCE, _BINARY = "solution.rs", "solution_tests"
_TEST_LINE = re.compile(r"^test (\S+)(?: - should panic)? \.\.\. (ok|FAILED|ignored)\b", re.MULTILINE)
_RUNNING = re.compile(r"^running (\d+) tests?$", re.MULTILINE)
_SUMMARY = re.compile(r"^test result: (ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored", re.MULTILINE)
_OUTCOME: dict[str, TestOutcome] = {"ok": "ok", "FAILED": "failed", "ignored": "ignored"}


@dataclass(frozen=True)
class RustJob:
    """One source for `run_rust_many`: `id` comes back on its result."""

    id: str
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not isinstance(self.source, str):
            raise SteerkitError(f"RustJob id and source must be str, got {self.id!r:.40} / {type(self.source)}")


@dataclass(frozen=True)
class RustResult:
    """What happened to one Rust source.

    Attributes:
        id: the job's id ("" for `compile_and_test_rust`).
        status: "passed" (every test ran and was ok or ignored, at least one ok, libtest's summary agrees,
            exit 0), "failed" (a test failed, or no test ran), "compile_error", "timeout" (compile or run hit
            its wall limit; the whole process tree was killed), "killed" (a signal or the output cap) or
            "error" (anything else, e.g. exiting before libtest's summary).
        tests: per libtest test name: "ok", "failed" or "ignored".
        compile_stderr: rustc's diagnostics (capped at `output_bytes`).
        stdout: the test binary's standard output (libtest's report; capped).
        stderr: its standard error (capped).
        sandbox_level: "namespaces" or "audit_hook_only" (see `steerkit.execution.sandbox_level`).
        seconds: wall time of compile and run together.
    """

    id: str
    status: RustStatus
    tests: dict[str, TestOutcome]
    compile_stderr: str
    stdout: str
    stderr: str
    sandbox_level: str
    seconds: float

    def __post_init__(self) -> None:
        if self.status not in RUST_STATUSES:
            raise SteerkitError(f"RustResult.status must be one of {RUST_STATUSES}, got {self.status!r}")

    @property
    def passed(self) -> bool:
        """True only when the status is "passed" and at least one test ran and was ok."""
        return self.status == "passed" and any(v == "ok" for v in self.tests.values())

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@functools.cache
def rust_sysroot() -> str:
    """The Rust sysroot of the `rustc` on PATH (`rustc --print sysroot`; trusted toolchain, not generated code)."""
    rustc = shutil.which("rustc")
    if rustc is None:
        raise SteerkitError("compile_and_test_rust needs `rustc` on PATH, not found")
    done = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, timeout=60, check=False)
    sysroot = done.stdout.strip()
    if done.returncode != 0 or not os.path.isfile(os.path.join(sysroot, "bin", "rustc")):
        raise SteerkitError(f"`rustc --print sysroot` gave no usable sysroot: {done.stderr.strip()[:200]!r}")
    return os.path.realpath(sysroot)


@functools.cache
def _linker() -> str:
    """The C compiler rustc links with, symlinks resolved: `cc` is usually /etc/alternatives/cc -> ..., and
    /etc does not exist inside the sandbox."""
    cc = shutil.which("cc", path=SAFE_PATH)
    if cc is None:
        raise SteerkitError(f"compile_and_test_rust needs a C compiler `cc` on {SAFE_PATH} to link, not found")
    return os.path.realpath(cc)


def _prlimit(limits: ExecutionLimits) -> list[str]:
    mb = 1 << 20
    return [
        tool("prlimit"),
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--as={limits.memory_mb * mb}",
        f"--fsize={limits.file_size_mb * mb}",
        f"--nproc={limits.max_processes}",
        "--core=0",
        "--",
    ]


def _environment(home: str) -> dict[str, str]:
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home, "RUST_BACKTRACE": "0"}


def _step(argv: list[str], limits: ExecutionLimits, level: SandboxLevel, host_dir: str, binds: list[str]) -> Watch:
    """One sandboxed step with the per-run directory as its working directory (/sandbox inside)."""
    inner = [*_prlimit(limits), *argv]
    if level != "namespaces":
        return watch_command([*network_prefix(limits), *inner], limits, env=_environment(host_dir), cwd=host_dir)[0]
    with user_namespace() as ns:
        command = bwrap_command(inner, userns_fd=ns, ro_binds=binds, workdir=host_dir)
        fds = [] if ns is None else [ns]
        env = _environment(WORKDIR)
        return watch_command(command, limits, env=env, cwd="/", pass_fds=fds, namespaced=True)[0]


def _text(buf: bytearray) -> str:
    return bytes(buf).decode("utf-8", "replace")


def _run_status(seen: Watch, stdout: str) -> tuple[RustStatus, dict[str, TestOutcome]]:
    tests = {name: _OUTCOME[word] for name, word in _TEST_LINE.findall(stdout)}
    if seen.timed_out:
        return "timeout", tests
    if seen.overflow or (seen.returncode is not None and seen.returncode < 0):
        return "killed", tests
    running, summary = _RUNNING.search(stdout), _SUMMARY.search(stdout)
    if running is None or summary is None or len(tests) != int(running.group(1)):
        return "error", tests  # ended before libtest's report was complete (e.g. exit(0) inside a test)
    failed = sum(v == "failed" for v in tests.values())
    if failed or summary.group(1) == "FAILED":
        return "failed", tests
    agrees = int(summary.group(2)) == sum(v == "ok" for v in tests.values()) and seen.returncode == 0
    if not agrees:
        return "error", tests
    return ("passed" if any(v == "ok" for v in tests.values()) else "failed"), tests


def _check_edition(edition: object) -> str:
    if edition not in EDITIONS:
        raise SteerkitError(f"Rust edition must be one of {EDITIONS}, got {edition!r}")
    return str(edition)


def _compile_and_test(job: RustJob, limits: ExecutionLimits, edition: str) -> RustResult:
    level = level_for(limits)
    compile_limits = dataclasses.replace(COMPILE_LIMITS, isolation=limits.isolation)
    sysroot = rust_sysroot()
    with tempfile.TemporaryDirectory(prefix="steerkit-rust-", ignore_cleanup_errors=True) as tmp:
        host_dir = os.path.join(tmp, "w")  # tmp itself stays 0700: only this run's sandboxes reach inside
        os.mkdir(host_dir, 0o755)
        Path(host_dir, _SOURCE).write_text(job.source, encoding="utf-8")
        if level == "namespaces" and os.geteuid() == 0:
            os.chown(host_dir, SANDBOX_ID, SANDBOX_ID)
        where = WORKDIR if level == "namespaces" else host_dir
        rustc = [
            f"{sysroot}/bin/rustc",
            "--test",
            "--edition",
            edition,
            "-C",
            "debuginfo=0",
            "-C",
            f"linker={_linker()}",
        ]
        rustc += ["--color", "never", "-o", f"{where}/{_BINARY}", f"{where}/{_SOURCE}"]
        built = _step(rustc, compile_limits, level, host_dir, [sysroot])
        seconds = built.wall_seconds
        compile_stderr = _text(built.stderr)
        if built.timed_out or built.overflow or built.returncode != 0 or not Path(host_dir, _BINARY).is_file():
            status: RustStatus = "timeout" if built.timed_out else "killed" if built.overflow else "compile_error"
            return RustResult(job.id, status, {}, compile_stderr, "", "", level, seconds)
        run = [f"{where}/{_BINARY}", "--test-threads=1", "--color", "never"]
        seen = _step(run, limits, level, host_dir, [])
    stdout = _text(seen.stdout)
    status, tests = _run_status(seen, stdout)
    return RustResult(
        job.id, status, tests, compile_stderr, stdout, _text(seen.stderr), level, seconds + seen.wall_seconds
    )


def _check_limits(limits: object) -> ExecutionLimits:
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, ExecutionLimits):
        raise SteerkitError(f"limits must be an ExecutionLimits or None, got {limits!r:.80}")
    return limits


def compile_and_test_rust(source: str, *, limits: ExecutionLimits | None = None, edition: str = "2021") -> RustResult:
    """Compile `source` with `rustc --test` and run its tests, each step in its own sandbox.

    Args:
        source: a Rust source file with `#[test]` functions (a `#[cfg(test)] mod tests` or top-level tests).
        limits: limits of the test run (wall, CPU, memory, output, tasks, file size) and the isolation policy;
            the compile runs under `COMPILE_LIMITS` with the same isolation. None: `DEFAULT_LIMITS`.
        edition: the Rust edition passed to rustc.

    Returns:
        The RustResult (id "").
    """
    if not isinstance(source, str):
        raise SteerkitError(f"compile_and_test_rust source must be a str, got {type(source).__name__}")
    return _compile_and_test(RustJob(id="", source=source), _check_limits(limits), _check_edition(edition))


def run_rust_many(
    jobs: Sequence[RustJob], *, limits: ExecutionLimits | None = None, workers: int = 2
) -> list[RustResult]:
    """`compile_and_test_rust` for many jobs, `workers` at a time (edition 2021); results in input order."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SteerkitError(f"run_rust_many workers must be an integer >= 1, got {workers!r}")
    checked = _check_limits(limits)
    bad = next((j for j in jobs if not isinstance(j, RustJob)), None)
    if bad is not None:
        raise SteerkitError(f"run_rust_many jobs must be RustJob objects, got {bad!r:.80}")
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="rust-sandbox") as pool:
        results = pool.map(lambda job: _compile_and_test(job, checked, "2021"), jobs)
        return list(progress(results, desc="rust sandbox", total=len(jobs), unit="program"))
