"""Sandboxed execution of generated (untrusted) code, Python and Rust: never `exec` in the steerkit process.

Design note: two layers. The kernel layer (`sandbox.py`) runs every program, every `rustc` compile and every
Rust test binary under bubblewrap: own user, mount, pid, ipc, uts and network namespaces, uid/gid 65534 with
no capabilities and no_new_privs, a root file system holding only read-only binds of /usr and the one
toolchain needed (the Python installation; the Rust sysroot for compiles) plus a private working directory.
Nothing outside that directory is readable or writable: not $HOME, not the project, not /etc, not other
processes' /proc. rlimits (CPU, address space, file size, tasks, no core) are set inside, for a non-root uid in
its own user namespace, so RLIMIT_NPROC binds even when steerkit runs as root; when the program's first
process ends or times out, its whole pid namespace dies. Where bwrap cannot start, programs fall back to the
plain-subprocess design below and say so: `sandbox_level()` and every result's `sandbox_level` read
"audit_hook_only", a one-line warning is logged once, and `ExecutionLimits(isolation="required")` makes the
fallback a SteerkitError.

The Python layer (both levels): each program runs in its own subprocess (`python -B -s -S -P`, no
site-packages) with an environment built from scratch, rlimits, a wall timeout that kills the whole process
group, stdout/stderr read incrementally and capped. A small harness (`_child.py`) installs a PEP 578 audit hook
before any user code runs; it refuses sockets, new processes, ctypes, raising rlimits, signals to others,
writes outside the working directory and reads of other processes' /proc entries, and reports each refusal,
which gives precise error kinds ("SandboxViolation") on top of the kernel's plain errors. Completion cannot be
faked by exiting early: progress records carry a random nonce and `done` comes only after every test ran.

Limits (documented, not hidden): the audit hook is not a security boundary (PEP 578); in the fallback, reads of
ordinary files are allowed and, as root, RLIMIT_NPROC does not bind (the hook is the fork-bomb defence), and
Rust code has no hook at all. A Rust test can print a forged libtest summary (libtest has no nonce). The threat
model is buggy or accidentally harmful model output, contained by the kernel where namespaces are available.
"""

from steerkit.execution.limits import (
    DEFAULT_LIMITS,
    ISOLATIONS,
    STATUSES,
    ExecutionJob,
    ExecutionLimits,
    ExecutionResult,
    Isolation,
    SandboxLevel,
    Status,
)
from steerkit.execution.process import network_namespace_available
from steerkit.execution.runner import run_many, run_program, run_tests
from steerkit.execution.rust import COMPILE_LIMITS, RustJob, RustResult, compile_and_test_rust, run_rust_many
from steerkit.execution.sandbox import sandbox_level

__all__ = [
    "COMPILE_LIMITS",
    "DEFAULT_LIMITS",
    "ISOLATIONS",
    "STATUSES",
    "ExecutionJob",
    "ExecutionLimits",
    "ExecutionResult",
    "Isolation",
    "RustJob",
    "RustResult",
    "SandboxLevel",
    "Status",
    "compile_and_test_rust",
    "network_namespace_available",
    "run_many",
    "run_program",
    "run_rust_many",
    "run_tests",
    "sandbox_level",
]
