"""Harness that runs inside the sandbox child process; the parent starts it as a script, never imports it.

Design note: standard library only and cheap to start (no json, no enum). It reads its payload (a marshal
file the parent wrote into the fresh working directory) and deletes it, lowers rlimits, installs an audit hook
(which user code cannot remove) and then runs the user code in a fresh `__main__` module. Progress goes to an
inherited pipe as lines `<nonce> <event> [<index>] [<kind>]`; `done` is written only after everything ran, so
`sys.exit`, `os._exit` or a signal before the end leave no `done` and can never read as a pass.

Threat model: buggy or accidentally harmful generated code. PEP 578 hooks are not a security boundary against
code written to defeat them (e.g. code that walks the harness's frames to find the nonce).
"""

import _signal
import builtins
import marshal
import os
import resource
import sys

PAYLOAD_NAME = "steerkit_payload.marshal"
MAX_VIOLATIONS = 20
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITABLE_DEVICES = frozenset({"/dev/null"})

# Refused outright: new processes, signals to others, raising limits, the network, raw memory via ctypes.
_DENY = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.exec",
        "os.spawn",
        "os.posix_spawn",
        "os.system",
        "os.startfile",
        "subprocess.Popen",
        "pty.spawn",
        "os.killpg",
        "resource.setrlimit",
        "resource.prlimit",
        "sys.addaudithook",
    }
)
_DENY_PREFIXES = ("socket.", "ctypes.", "_winapi.", "winreg.")
_DENY_IMPORTS = frozenset({"_posixsubprocess", "_ctypes", "ctypes"})

# Events that change the file system: (indices of path arguments, indices of dir_fd arguments).
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)),
    "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)),
    "os.link": ((0, 1), (2, 3)),
    "os.symlink": ((1,), (2,)),
    "os.chmod": ((0,), (2,)),
    "os.lchmod": ((0,), ()),
    "os.chown": ((0,), (3,)),
    "os.lchown": ((0,), ()),
    "os.utime": ((0,), (3,)),
    "os.truncate": ((0,), ()),
    "os.chflags": ((0,), ()),
    "os.lchflags": ((0,), ()),
    "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()),
    "shutil.rmtree": ((0,), (1,)),
    "shutil.copyfile": ((1,), ()),
    "shutil.copymode": ((1,), ()),
    "shutil.copystat": ((1,), ()),
    "shutil.copytree": ((1,), ()),
    "shutil.move": ((0, 1), ()),
    "shutil.chown": ((0,), ()),
    "shutil.make_archive": ((0,), ()),
    "shutil.unpack_archive": ((1,), ()),
    "sqlite3.connect": ((0,), ()),
}


class SandboxViolation(PermissionError):
    """Raised by the audit hook; a PermissionError, so code handling OSError sees an ordinary failure."""


class Reporter:
    """Writes progress records to the inherited pipe; a closed or broken pipe just loses the records."""

    def __init__(self, fd: int, nonce: str) -> None:
        self._fd = fd
        self._prefix = nonce + " "
        self._write = os.write
        self.violations = 0

    def emit(self, *fields: object) -> None:
        words = ["".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in str(f))[:100] for f in fields]
        try:
            self._write(self._fd, (self._prefix + " ".join(words) + "\n").encode("utf-8", "replace"))
        except OSError:
            pass


def _set_limit(which: int, soft: int, hard: int) -> None:
    cur_soft, cur_hard = resource.getrlimit(which)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _user_tasks(uid: int) -> int:
    """Tasks (threads) the uid runs now: RLIMIT_NPROC counts them all, so the limit is set relative to it."""
    total = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            if os.stat("/proc/" + name).st_uid != uid:
                continue
            with open("/proc/" + name + "/stat", "rb") as f:
                total += int(f.read().rsplit(b")", 1)[1].split()[17])
        except (OSError, ValueError, IndexError):
            continue
    return total


def apply_limits(limits: dict) -> None:
    """rlimits for this process (inherited by nothing: new processes are refused anyway)."""
    mb = 1024 * 1024
    _set_limit(resource.RLIMIT_CORE, 0, 0)
    _set_limit(resource.RLIMIT_CPU, limits["cpu_seconds"], limits["cpu_seconds"] + 1)
    _set_limit(resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb)
    _set_limit(resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb, limits["file_size_mb"] * mb)
    uid = os.getuid()
    # Root is exempt from RLIMIT_NPROC (kernel), so counting its tasks would cost time for nothing.
    headroom = limits["max_processes"] + (_user_tasks(uid) if uid != 0 else 0)
    _set_limit(resource.RLIMIT_NPROC, headroom, headroom)
    # A write past RLIMIT_FSIZE then fails with EFBIG (an OSError the program sees) instead of killing it.
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)


def _resolve(path: object) -> str | None:
    """Absolute, symlink-free form of a path argument; None when it is not a path (e.g. a file descriptor)."""
    if isinstance(path, int):
        return None
    text = os.fsdecode(os.fspath(path))  # type: ignore[call-overload]
    return os.path.realpath(os.path.join(os.getcwd(), text))


class Guard:
    """The audit hook: decides every event against the sandbox root (the temporary working directory)."""

    def __init__(self, root: str, reporter: Reporter) -> None:
        self.root = root.rstrip("/") + "/"
        self.reporter = reporter
        self.own_proc = "/proc/" + str(os.getpid())
        # /dev/stdout and /dev/stderr resolve to our own pipes (reopening a file through /proc/self/fd
        # resolves to the file itself and is checked like any path).
        self.own_pipes = self.own_proc + "/fd/pipe:["

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            reason = self._check_open(args)
        elif event in _PATH_EVENTS:
            reason = self._check_paths(event, args)
        elif event in _DENY or event.startswith(_DENY_PREFIXES):
            reason = "not allowed in the sandbox"
        elif event == "import" and args and args[0] in _DENY_IMPORTS:
            reason = "module not allowed in the sandbox"
        elif event == "os.kill" and args and args[0] != os.getpid():
            reason = "signals to other processes are not allowed"
        else:
            return
        if reason is not None:
            self.refuse(event, reason)

    def refuse(self, event: str, reason: str) -> None:
        """Report the refusal to the parent, then raise it in the program."""
        if self.reporter.violations < MAX_VIOLATIONS:
            self.reporter.violations += 1
            self.reporter.emit("violation", event)
        raise SandboxViolation(f"sandbox refused {event}: {reason}")

    def _inside(self, resolved: str) -> bool:
        return resolved.startswith(self.root) or resolved == self.root[:-1]

    def _other_process(self, resolved: str) -> bool:
        # /proc/<pid>/environ etc. of the parent or any other process would leak their environment.
        if not resolved.startswith("/proc/"):
            return False
        top = resolved.split("/")[2]
        return top.isdigit() and "/proc/" + top != self.own_proc

    def _check_open(self, args: tuple) -> str | None:
        path, mode, flags = (tuple(args) + (None, None, 0))[:3]
        if isinstance(path, int):
            return None
        try:
            if mode is None and not os.path.isabs(os.fsdecode(os.fspath(path))):
                return "os.open with a relative path (its dir_fd is invisible to the hook)"
            resolved = _resolve(path)
        except (TypeError, ValueError, OSError):
            return "unreadable path"
        if resolved is None:
            return None
        if self._other_process(resolved):
            return f"{resolved} belongs to another process"
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        if not writes or resolved in _WRITABLE_DEVICES or resolved.startswith(self.own_pipes):
            return None
        if not self._inside(resolved):
            return f"write outside the sandbox directory: {resolved}"
        try:
            kind = os.stat(resolved).st_mode & 0o170000
        except OSError:
            return None
        if kind in (0o020000, 0o060000):  # character / block device created inside the sandbox (mknod)
            return f"write to a device: {resolved}"
        return None

    def _check_paths(self, event: str, args: tuple) -> str | None:
        path_idx, fd_idx = _PATH_EVENTS[event]
        for i in fd_idx:
            if i < len(args) and args[i] is not None and args[i] != -1:
                return "dir_fd arguments are not allowed"
        for i in path_idx:
            if i >= len(args):
                continue
            if event == "sqlite3.connect" and args[i] in (":memory:", b":memory:", ""):
                continue
            if isinstance(args[i], int) and event != "os.truncate":
                return "file-descriptor form not allowed"
            try:
                resolved = _resolve(args[i])
            except (TypeError, ValueError, OSError):
                return "unreadable path"
            if resolved is not None and not self._inside(resolved):
                return f"outside the sandbox directory: {resolved}"
        return None


def neutralise_posixsubprocess(guard: Guard) -> None:
    """`_posixsubprocess.fork_exec` forks without an audit event: replace it (re-imports are refused)."""
    import _posixsubprocess

    def fork_exec(*args: object, **kwargs: object) -> int:
        guard.refuse("_posixsubprocess.fork_exec", "not allowed in the sandbox")
        return -1

    _posixsubprocess.fork_exec = fork_exec  # type: ignore[attr-defined]


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


def _report_exception(exc: BaseException, namespace: dict) -> str:
    kind = _kind(exc)
    if isinstance(exc, MemoryError):
        namespace.clear()  # free what the program held, so reporting itself does not run out of memory
    try:
        import traceback

        tb = exc.__traceback__
        traceback.print_exception(type(exc), exc, tb.tb_next if tb is not None else None)  # skip _run's frame
    except BaseException:  # noqa: BLE001 - reporting must never mask the original outcome
        pass
    return kind


def _run(source: str, filename: str, namespace: dict) -> BaseException | None:
    try:
        exec(compile(source, filename, "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are outcomes too
        return exc
    return None


def run_user_code(payload: dict, reporter: Reporter) -> None:
    """The program, then the test set-up (MBPP's fixtures use the program's classes), then each test.

    Every outcome is reported as it happens.
    """
    module = type(sys)("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = ["<program>"]
    namespace = module.__dict__
    exc = _run(payload["program"], "<program>", namespace)
    if exc is None and payload["setup"]:
        exc = _run(payload["setup"], "<setup>", namespace)
    if exc is not None:
        reporter.emit("program", "error", _report_exception(exc, namespace))
        return
    reporter.emit("program", "ok")
    for index, test in enumerate(payload["tests"]):
        exc = _run(test, f"<test {index}>", namespace)
        if exc is None:
            reporter.emit("test", index, "pass")
        elif isinstance(exc, AssertionError):
            print(f"test {index} failed: {test[:300]}", file=sys.stderr)
            reporter.emit("test", index, "fail", _kind(exc))
        else:
            reporter.emit("test", index, "error", _report_exception(exc, namespace))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # noqa: BLE001 - a broken stream must not stop the completion record
            pass


def main() -> None:
    with open(PAYLOAD_NAME, "rb") as f:
        payload = marshal.load(f)
    os.remove(PAYLOAD_NAME)
    reporter = Reporter(payload["fd"], payload["nonce"])
    apply_limits(payload["limits"])
    if payload.get("audit_hook", True):  # off only through runner.audit_hook_disabled (tests of the kernel layer)
        guard = Guard(os.path.realpath(os.getcwd()), reporter)
        neutralise_posixsubprocess(guard)
        sys.addaudithook(guard)
    del payload["nonce"]
    reporter.emit("start")
    run_user_code(payload, reporter)
    _flush()
    # Under bwrap the parent's wait4 sees bwrap, not this process: report our own CPU time.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    reporter.emit("cpu", f"{usage.ru_utime + usage.ru_stime:.6f}")
    reporter.emit("done")
    os._exit(0)


if __name__ == "__main__":
    main()
