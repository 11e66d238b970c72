"""Sandboxed execution of generated (untrusted) Python: never `exec` in the steerkit process.

Design note: each program runs in its own subprocess (`python -B -s -S -P`, no site-packages, no user site,
no script directory on `sys.path`) with a fresh temporary working directory (deleted afterwards), an
environment built from scratch (no secret of the parent's `os.environ` reaches it), rlimits on CPU time,
address space, file size and tasks, core dumps off, a wall timeout after which the whole process group is
killed, stdout/stderr read incrementally and capped, and `unshare --net` where available.

Inside the child a small harness (`_child.py`) installs a PEP 578 audit hook before any user code runs. It
refuses: sockets (creation, connect, bind, DNS); new processes (`os.fork`, `os.exec*`, `os.spawn*`,
`os.posix_spawn`, `os.system`, `subprocess.Popen`, and `_posixsubprocess.fork_exec`, which has no event of its
own and is replaced); `ctypes`; raising rlimits; signals to other processes; writes (open for writing,
remove, rename, mkdir, rmdir, chmod, utime, link, symlink, shutil.*, sqlite3) outside the working directory
(except /dev/null) or to device nodes; reads of other processes' `/proc/<pid>/` (their environment). The hook
raises `SandboxViolation` (a PermissionError) and reports the event to the parent.

Completion cannot be faked by exiting early: the harness writes progress records carrying a random nonce to
an inherited pipe and a `done` record only after the program and every test ran; `sys.exit(0)`, `raise
SystemExit`, `os._exit(0)` or a signal before that is an error ("SystemExit", "exited_before_tests", ...).

Limits of the design (documented, not hidden): an audit hook is not a security boundary against code written
to defeat it (PEP 578 says so); code that introspects the harness's frames could find the nonce. RLIMIT_NPROC
is not enforced by the kernel for root, so as root the audit hook is the only fork-bomb defence. Reads of
ordinary files are allowed. The threat model is buggy or accidentally harmful model output.
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
