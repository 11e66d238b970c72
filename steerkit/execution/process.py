"""Spawning, watching and reaping one sandboxed child process.

Design note: one subprocess per program (`python -B -s -S -P _child.py`, in a new session so the whole group
can be killed), an environment built from scratch (nothing from `os.environ`). At level "namespaces" the
command is bubblewrap (`sandbox.py`): the payload goes in through a memfd that bwrap copies into the private
tmpfs working directory, and the harness is bound read-only. At level "audit_hook_only" a fresh temporary
directory is the working directory (deleted afterwards), optionally inside `unshare --net`. The calling thread drives a
`selectors` loop over stdout, stderr and the progress pipe with the wall deadline as timeout, so output is read
incrementally and capped, and neither a flood nor a hang can block the parent. The child is left a zombie
(`waitid(WNOWAIT)`) while its group is killed, so the group id cannot have been reused, then reaped with
`wait4`, which also gives its CPU time.
"""

from __future__ import annotations

import functools
import marshal
import os
import secrets
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from steerkit.errors import SteerkitError
from steerkit.execution.limits import ExecutionLimits, SandboxLevel
from steerkit.execution.sandbox import SAFE_PATH, WORKDIR, bwrap_command, exit_code, level_for, user_namespace

_CHILD = Path(__file__).with_name("_child.py")
_CHILD_INSIDE = "/opt/steerkit/_child.py"
_PAYLOAD_NAME = "steerkit_payload.marshal"  # must equal _child.PAYLOAD_NAME
_RECORD_CAP = 1 << 20  # progress-pipe bytes kept; a program writing junk there cannot grow the parent
_DRAIN_AFTER_KILL = 2.0  # seconds to wait for pipes to close after a kill (a stray holder cannot hang us)
_SAFE_PATH = SAFE_PATH


@dataclass
class Watch:
    """What the parent saw of one child."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    records: bytearray = field(default_factory=bytearray)
    timed_out: bool = False
    overflow: bool = False
    returncode: int | None = None
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


@functools.cache
def _unshare_prefix() -> tuple[str, ...]:
    """`unshare --net` if it works here (root or user namespaces), else nothing; probed once per process."""
    exe = shutil.which("unshare", path=_SAFE_PATH)
    if exe is None or not sys.platform.startswith("linux"):
        return ()
    try:
        probe = subprocess.run(
            [exe, "--net", "true"], env={"PATH": _SAFE_PATH}, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    return (exe, "--net") if probe.returncode == 0 else ()


def network_namespace_available() -> bool:
    """Whether children can get a private network namespace on this machine (else: the audit hook only)."""
    return bool(_unshare_prefix())


def network_prefix(limits: ExecutionLimits) -> list[str]:
    """`unshare --net` for a fallback child when isolate_network is set and it works here, else nothing."""
    return list(_unshare_prefix()) if limits.isolate_network else []


def _command(limits: ExecutionLimits) -> list[str]:
    if not sys.platform.startswith("linux"):
        # RLIMIT_AS, /proc and waitid(WNOWAIT) are what the limits and the clean group kill rest on.
        raise SteerkitError(f"steerkit.execution runs programs on Linux only, got platform {sys.platform!r}")
    if not sys.executable:
        raise SteerkitError("sys.executable is empty: cannot start a sandboxed interpreter")
    prefix = network_prefix(limits)
    flags = ["-B", "-s", "-P"] + ([] if limits.site_packages else ["-S"])
    return [*prefix, sys.executable, *flags, str(_CHILD)]


def _environment(workdir: str, limits: ExecutionLimits) -> dict[str, str]:
    # Built from scratch: nothing of os.environ (tokens, credentials) reaches the child.
    env = {
        "PATH": _SAFE_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONUTF8": "1",
    }
    env["PYTHONHASHSEED"] = "random" if limits.hash_seed is None else str(limits.hash_seed)
    return env


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_into(fd: int, buf: bytearray, cap: int) -> tuple[bool, bool]:
    """Read what is there; returns (eof, overflowed). Bytes past `cap` are read and dropped."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return False, False
    except OSError:
        return True, False
    if not chunk:
        return True, False
    room = cap - len(buf)
    if room > 0:
        buf += chunk[:room]
    return False, len(chunk) > room


def _watch(proc: subprocess.Popen[bytes], records_fd: int | None, limits: ExecutionLimits, deadline: float) -> Watch:
    """Drain the pipes until they close; kill the group on the deadline or an output overflow."""
    assert proc.stdout is not None and proc.stderr is not None
    seen = Watch()
    targets = {
        proc.stdout.fileno(): (seen.stdout, limits.output_bytes, True),
        proc.stderr.fileno(): (seen.stderr, limits.output_bytes, True),
    }
    if records_fd is not None:
        targets[records_fd] = (seen.records, _RECORD_CAP, False)
    killed_at: float | None = None
    with selectors.DefaultSelector() as sel:
        for fd in targets:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            now = time.monotonic()
            if killed_at is None and now >= deadline:
                seen.timed_out, killed_at = True, now
                _kill_group(proc.pid)
            if killed_at is not None and now - killed_at > _DRAIN_AFTER_KILL:
                break
            wait = deadline - now if killed_at is None else _DRAIN_AFTER_KILL
            for key, _ in sel.select(timeout=max(wait, 0.0)):
                buf, cap, capped = targets[key.fd]
                eof, overflowed = _read_into(key.fd, buf, cap)
                if eof:
                    sel.unregister(key.fd)
                if overflowed and capped and killed_at is None:
                    seen.overflow, killed_at = True, time.monotonic()
                    _kill_group(proc.pid)
    _reap(proc, seen, deadline)
    return seen


def _reap(proc: subprocess.Popen[bytes], seen: Watch, deadline: float) -> None:
    """Wait for the child (killing it at the deadline), kill what is left of its group, then collect it."""
    pause = 0.0005
    while True:
        # WNOWAIT: the child stays a zombie, so its pid (= the group id) cannot be reused before killpg.
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid:
            break
        if time.monotonic() >= deadline and not (seen.timed_out or seen.overflow):
            seen.timed_out = True
            _kill_group(proc.pid)
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    _kill_group(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = seen.returncode = os.waitstatus_to_exitcode(status)
    seen.cpu_seconds = usage.ru_utime + usage.ru_stime


def watch_command(
    argv: Sequence[str],
    limits: ExecutionLimits,
    *,
    env: dict[str, str],
    cwd: str,
    pass_fds: Sequence[int] = (),
    close_after_spawn: list[int] | None = None,
    records_r: int | None = None,
    namespaced: bool = False,
) -> tuple[Watch, float]:
    """Start `argv` in a new session and watch it to the end (deadline `limits.wall_seconds` from spawn).

    Args:
        argv: the command (a bwrap command line when `namespaced`).
        limits: wall time and output caps.
        env: its whole environment.
        cwd: its working directory on the host (bwrap sets its own inside).
        pass_fds: fds it inherits.
        close_after_spawn: fds closed (and removed from this list) once it started, also when starting failed:
            the parent must not keep the write end of the progress pipe, or the pipe never reaches end-of-file.
        records_r: the read end of the progress pipe, or None (Rust: no harness inside).
        namespaced: whether `argv` is bwrap (whose exit status for a program killed by signal N is 128 + N).

    Returns:
        What was seen, and the seconds from spawn to reaping.
    """
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
        )
    finally:
        _close_all(close_after_spawn)
    with proc:
        try:
            seen = _watch(proc, records_r, limits, start + limits.wall_seconds)
        except BaseException:
            _kill_group(proc.pid)  # so that Popen.__exit__'s wait() cannot block on a live child
            raise
    if seen.returncode is not None:
        seen.returncode = exit_code(seen.returncode, namespaced)
    seen.wall_seconds = time.monotonic() - start
    return seen, seen.wall_seconds


def _close_all(fds: list[int] | None) -> None:
    while fds:
        os.close(fds.pop())


def _payload_fd(payload: dict) -> int:
    """An anonymous in-memory file holding the marshalled payload (bwrap copies it into the tmpfs)."""
    fd = os.memfd_create("steerkit-payload", 0)
    os.write(fd, marshal.dumps(payload))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _python_binds(limits: ExecutionLimits) -> tuple[str, list[str]]:
    """The interpreter to run inside and the host paths it needs (its installation; a venv with site-packages)."""
    base = os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]
    binds = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)]
    if not limits.site_packages:
        return base, binds
    return sys.executable, [*binds, os.path.realpath(sys.prefix), *site.getsitepackages()]


def spawn_and_watch(payload: dict, limits: ExecutionLimits) -> tuple[Watch, str, float, SandboxLevel]:
    """Run the Python harness on `payload` under `limits` at the best level this machine allows."""
    level = level_for(limits)
    nonce = secrets.token_hex(16)
    records_r, records_w = os.pipe()
    owned = [records_w]
    payload = {**payload, "fd": records_w, "nonce": nonce}
    try:
        if level == "namespaces":
            seen, seconds = _run_namespaced(payload, limits, records_r, owned)
        else:
            with tempfile.TemporaryDirectory(prefix="steerkit-sandbox-", ignore_cleanup_errors=True) as workdir:
                Path(workdir, _PAYLOAD_NAME).write_bytes(marshal.dumps(payload))
                env = _environment(workdir, limits)
                seen, seconds = watch_command(
                    _command(limits), limits, env=env, cwd=workdir, pass_fds=owned, close_after_spawn=owned,
                    records_r=records_r,
                )  # fmt: skip
    finally:
        _close_all(owned)
        os.close(records_r)
    return seen, nonce, seconds, level


def _run_namespaced(payload: dict, limits: ExecutionLimits, records_r: int, owned: list[int]) -> tuple[Watch, float]:
    python, binds = _python_binds(limits)
    flags = ["-B", "-s", "-P"] + ([] if limits.site_packages else ["-S"])
    owned.append(_payload_fd(payload))
    with user_namespace() as ns:
        argv = bwrap_command(
            [python, *flags, _CHILD_INSIDE],
            userns_fd=ns,
            ro_binds=[*binds, (str(_CHILD), _CHILD_INSIDE)],
            tmpfs_bytes=max(limits.file_size_mb, 1) * 4 << 20,
            files=[(owned[-1], f"{WORKDIR}/{_PAYLOAD_NAME}")],
        )
        fds = [*owned] + ([] if ns is None else [ns])
        return watch_command(
            argv, limits, env=_environment(WORKDIR, limits), cwd="/", pass_fds=fds, close_after_spawn=owned,
            records_r=records_r, namespaced=True,
        )  # fmt: skip
