"""The kernel layer: every program runs inside bubblewrap (`bwrap`) namespaces when this machine allows it.

Design note: bubblewrap (a small, audited setuid-free tool used by Flatpak) builds the sandbox; nothing here
re-implements namespaces. Each program gets its own user, mount, pid, ipc, uts and network namespaces; its
file system is a fresh root with read-only binds of `/usr` (libc, the linker) and of the one toolchain it
needs (the Python installation, or the Rust sysroot for a compile), a private working directory at
`/sandbox`, a minimal `/dev` and a `/proc` of its own pid namespace. Nothing else of the host exists inside:
not `$HOME`, not the project, not `/etc`, not other processes. It runs as uid/gid 65534 with no capabilities
and `no_new_privs`; when the parent dies, the sandbox dies (`--die-with-parent`), and when the program's first
process ends the kernel kills everything left in its pid namespace.

Why a user namespace of our own when running as root: bwrap started by root maps the sandbox user to host uid
0, and the kernel never enforces RLIMIT_NPROC for host root, so a fork bomb would run free. Instead root
creates a user namespace mapping 0->0 and 65534->65534 (the `unshare` tool holds it while the maps are
written), bwrap joins it (`--userns`) and does its mounts as namespace root, and `setpriv` (util-linux) drops
to 65534, a real unprivileged host uid whose RLIMIT_NPROC binds and is counted per user namespace. One
namespace per program, so concurrent programs never share a process budget. Run as a normal user, bwrap's own
`--unshare-user --uid 65534` already maps to that (non-root) user.

Where bwrap is missing or cannot start (no user namespaces, not Linux), programs fall back to the plain
subprocess design with the audit hook; `sandbox_level()` says which, results carry it, a one-line warning is
logged once, and `ExecutionLimits(isolation="required")` turns the fallback into a SteerkitError.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import PurePosixPath

from steerkit.errors import SteerkitError
from steerkit.execution.limits import ExecutionLimits, SandboxLevel

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
WORKDIR = "/sandbox"  # the program's working directory (and HOME, TMPDIR) inside the sandbox
SANDBOX_ID = 65534  # uid and gid inside ("nobody")
_TOOLS = ("bwrap", "setpriv", "unshare", "prlimit", "cat")
_log = logging.getLogger("steerkit.execution")


@functools.cache
def _tools() -> dict[str, str]:
    """Absolute paths of the external tools found on the safe PATH (missing ones are absent)."""
    found = {name: shutil.which(name, path=SAFE_PATH) for name in _TOOLS}
    return {name: path for name, path in found.items() if path is not None}


def tool(name: str) -> str:
    """Absolute path of one of the sandbox's external tools; SteerkitError when it is missing."""
    path = _tools().get(name)
    if path is None:
        raise SteerkitError(f"steerkit.execution needs `{name}` on {SAFE_PATH}, not found")
    return path


@contextmanager
def user_namespace() -> Iterator[int | None]:
    """A fresh user namespace for one sandbox as an open fd (root), or None (non-root: bwrap makes its own).

    The namespace maps 0->0 (bwrap's mounts need namespace root) and 65534->65534 (the program). Only root may
    write such maps; `unshare --user cat` holds the namespace until the maps are written and the fd is open,
    and the open fd keeps it alive after the helper exits.
    """
    if os.geteuid() != 0:
        yield None
        return
    own = os.stat("/proc/self/ns/user").st_ino
    helper = subprocess.Popen(
        [tool("unshare"), "--user", "--", tool("cat")],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": SAFE_PATH},
    )
    fd = -1
    try:
        ns = f"/proc/{helper.pid}/ns/user"
        deadline = time.monotonic() + 10.0
        while os.stat(ns).st_ino == own:  # until the helper has called unshare(CLONE_NEWUSER)
            if helper.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"unshare --user did not create a user namespace (exit {helper.returncode})")
            time.sleep(0.0002)
        mapping = f"0 0 1\n{SANDBOX_ID} {SANDBOX_ID} 1\n".encode()
        for name in ("uid_map", "gid_map"):
            # One write per file: the kernel accepts a map once, whole.
            with open(f"/proc/{helper.pid}/{name}", "wb", buffering=0) as f:
                f.write(mapping)
        fd = os.open(ns, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        assert helper.stdin is not None
        helper.stdin.close()
        helper.kill()
        helper.wait()
    try:
        yield fd
    finally:
        os.close(fd)


def _root_skeleton() -> list[str]:
    """bwrap arguments for the read-only system part: /usr, its merged-usr links, /proc and /dev."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args + ["--proc", "/proc", "--dev", "/dev"]


def _ro_bind(path: str, dest: str) -> list[str]:
    """Bind `path` read-only at `dest`, whose parents are made world-listable.

    bwrap copies the modes of the host's parents when it creates mount points, so a toolchain under /root
    (0700) would be unreachable for uid 65534: each parent is created 0755 first. The parents are empty
    directories on the sandbox's own root, so nothing of the host directory shows.
    """
    args: list[str] = []
    for parent in reversed(PurePosixPath(dest).parents):
        if str(parent) != "/":
            args += ["--perms", "0755", "--dir", str(parent)]
    return args + ["--ro-bind", path, dest]


def bwrap_command(
    inner: Sequence[str],
    *,
    userns_fd: int | None,
    ro_binds: Sequence[str | tuple[str, str]] = (),
    workdir: str | None = None,
    tmpfs_bytes: int = 64 << 20,
    files: Sequence[tuple[int, str]] = (),
) -> list[str]:
    """The full argv that runs `inner` in a new sandbox.

    Args:
        inner: the program and its arguments, as seen inside (absolute paths).
        userns_fd: from `user_namespace()`; None lets bwrap create the user namespace (non-root).
        ro_binds: host directories or files the program needs, bound read-only at the same path (absolute
            RPATHs and sysroots need that), or (host path, path inside) pairs; /usr is always bound.
        workdir: a host directory bound read-write at /sandbox (Rust: the compile's output feeds the test
            run); None gives a private tmpfs of `tmpfs_bytes` instead.
        tmpfs_bytes: size cap of the tmpfs working directory.
        files: (fd, path inside) pairs: bwrap copies each fd's content into a file (the Python payload).
    """
    args = [tool("bwrap")]
    if userns_fd is not None:
        # Namespace root for the set-up; setpriv below drops to 65534 and the two caps it needs are all kept.
        args += ["--userns", str(userns_fd), "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user", "--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID)]
    args += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    args += ["--die-with-parent", "--new-session", "--hostname", "sandbox", *_root_skeleton()]
    for item in dict.fromkeys(ro_binds):
        src, dest = (item, item) if isinstance(item, str) else item
        if dest != "/usr" and not dest.startswith("/usr/"):
            args += _ro_bind(src, dest)
    if workdir is None:
        args += ["--perms", "0777", "--size", str(tmpfs_bytes), "--tmpfs", WORKDIR]
    else:
        args += ["--bind", workdir, WORKDIR]
    for fd, dest in files:
        args += ["--perms", "0644", "--file", str(fd), dest]
    args += ["--chdir", WORKDIR, "--"]  # bwrap also sets PWD=/sandbox (harmless, not a secret)
    if userns_fd is not None:
        ids = str(SANDBOX_ID)
        args += [tool("setpriv"), "--reuid", ids, "--regid", ids, "--clear-groups", "--inh-caps=-all"]
        args += ["--no-new-privs", "--"]
    return args + list(inner)


def exit_code(code: int, namespaced: bool) -> int:
    """Exit status in `subprocess` convention: bwrap reports a program killed by signal N as 128 + N."""
    if namespaced and 128 < code < 128 + 65:
        return -(code - 128)
    return code


@functools.cache
def _probe() -> str | None:
    """None when a bubblewrap sandbox starts here, else the one-line reason it does not (probed once)."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux, this is {sys.platform}"
    missing = [name for name in _TOOLS if name not in _tools()]
    if missing:
        return f"missing {', '.join(missing)} (Debian packages bubblewrap, util-linux)"
    try:
        with user_namespace() as fd:
            argv = bwrap_command(["/usr/bin/true"], userns_fd=fd)
            done = subprocess.run(
                argv,
                pass_fds=() if fd is None else (fd,),
                env={"PATH": SAFE_PATH},
                capture_output=True,
                timeout=30,
                check=False,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a user namespace: {exc}"
    if done.returncode != 0:
        text = done.stderr.decode("utf-8", "replace").strip().replace("\n", " ")
        return f"bwrap failed (exit {done.returncode}): {text[:200]}"
    return None


def sandbox_level() -> SandboxLevel:
    """The isolation programs get on this machine: "namespaces" (bubblewrap) or "audit_hook_only"."""
    return "namespaces" if _probe() is None else "audit_hook_only"


@functools.cache
def _warn_fallback(reason: str) -> None:
    _log.warning("steerkit.execution: no namespace sandbox (%s); falling back to rlimits + audit hook", reason)


def level_for(limits: ExecutionLimits) -> SandboxLevel:
    """The level one run gets under `limits`; SteerkitError when isolation is required and unavailable."""
    if limits.isolation == "audit_hook_only":
        return "audit_hook_only"
    reason = _probe()
    if reason is None:
        return "namespaces"
    if limits.isolation == "required":
        raise SteerkitError(f"isolation='required' but the namespace sandbox cannot start here: {reason}")
    _warn_fallback(reason)
    return "audit_hook_only"
