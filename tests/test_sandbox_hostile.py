"""Hostile Python programs: each tries one escape and asserts that it worked; contained means never a pass.

Every case runs at both levels: "namespaces" (bubblewrap; skipped with the reason where it cannot start) with
the audit hook on and off (the kernel layer alone must hold), and "audit_hook_only" (the fallback, hook on).
Checks of a refused effect look at the world from this process (the marker file is absent, the listener got
no connection, the secret is in no output), and hostile programs are bounded even if a defence failed.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from steerkit.execution import ExecutionLimits, ExecutionResult, run_tests, sandbox_level
from steerkit.execution.runner import audit_hook_disabled
from steerkit.execution.sandbox import _probe

NS = pytest.mark.skipif(sandbox_level() != "namespaces", reason=f"no namespace sandbox here: {_probe()}")
LEVELS = [
    pytest.param("required", True, id="namespaces+hook", marks=NS),
    pytest.param("required", False, id="namespaces-only", marks=NS),
    pytest.param("audit_hook_only", True, id="hook-only"),
]
REPO = Path(__file__).resolve().parents[1]


def attempt(code: str, test: str, isolation: str, hook: bool, **limits: object) -> ExecutionResult:
    """Run `code`, then `test` (which holds only if the escape worked)."""
    base: dict[str, object] = {"wall_seconds": 20.0, "cpu_seconds": 10, "isolation": isolation}
    chosen = ExecutionLimits(**{**base, **limits})  # type: ignore[arg-type]
    if hook:
        return run_tests(code, [test], limits=chosen)
    with audit_hook_disabled():
        return run_tests(code, [test], limits=chosen)


def contained(r: ExecutionResult, *secrets: str) -> None:
    assert r.status != "passed", r
    for secret in secrets:
        assert secret not in r.stdout and secret not in r.stderr


@pytest.fixture
def canaries() -> Iterator[dict[str, str]]:
    """A secret file in $HOME and one in the project directory, removed afterwards."""
    secret, name = "canary-" + uuid.uuid4().hex, f".steerkit-canary-{uuid.uuid4().hex}"
    paths = {"home": Path.home() / name, "project": REPO / name}
    for path in paths.values():
        path.write_text(secret)
    try:
        yield {"secret": secret, **{k: str(v) for k, v in paths.items()}}
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)


# Reads of ordinary files are a namespace-only defence: the audit hook (the fallback) allows them.
@pytest.mark.parametrize(("isolation", "hook"), LEVELS[:2])
@pytest.mark.parametrize("where", ["home", "project"])
def test_reading_a_canary_fails(canaries: dict[str, str], where: str, isolation: str, hook: bool) -> None:
    code = f"data = open({canaries[where]!r}).read()\nprint(data)"
    r = attempt(code, "assert data.startswith('canary-')", isolation, hook)
    contained(r, canaries["secret"])
    assert (r.status, r.error_kind) == ("error", "FileNotFoundError")  # not even there


@pytest.mark.parametrize(("isolation", "hook"), LEVELS[:2])
def test_etc_shadow_and_root_are_not_there(canaries: dict[str, str], isolation: str, hook: bool) -> None:
    r = attempt("data = open('/etc/shadow').read()", "assert 'root:' in data", isolation, hook)
    assert (r.status, r.error_kind) == ("error", "FileNotFoundError")
    test = "assert any(n.startswith('.steerkit-canary') for n in names)"
    r = attempt("import os\nnames = os.listdir('/root')\nprint(names)", test, isolation, hook)
    contained(r, Path(canaries["home"]).name)
    # /root is absent, or holds only the empty parents of a toolchain bound below it (pyenv, rustup)
    assert r.status == "failed" or (r.status, r.error_kind) == ("error", "FileNotFoundError")


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_writing_outside_the_working_directory_fails(tmp_path: Path, isolation: str, hook: bool) -> None:
    marker = tmp_path / "pwned"
    r = attempt(f"open({str(marker)!r}, 'w').write('x')", f"assert open({str(marker)!r}).read() == 'x'", isolation,
                hook)  # fmt: skip
    contained(r)
    assert not marker.exists()


@NS
def test_fork_bomb_is_stopped_by_the_kernel_with_the_hook_off() -> None:
    code = (
        "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(2)\n        os._exit(0)\n"
        "    n += 1\nprint(n)\n"
    )
    r = attempt(code, "assert n == 200", "required", False, max_processes=20)
    assert r.status == "failed", r
    assert int(r.stdout.split()[-1]) <= 20  # RLIMIT_NPROC for uid 65534 in its own user namespace


def test_fork_bomb_is_refused_by_the_hook_in_the_fallback() -> None:
    r = attempt("import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)", "assert pid > 0", "audit_hook_only", True)
    assert (r.status, r.error_kind, r.violations) == ("error", "SandboxViolation", ("os.fork",))


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_memory_bomb(isolation: str, hook: bool) -> None:
    r = attempt("x = bytearray(8 * 1024**3)", "assert len(x) > 0", isolation, hook, memory_mb=256)
    assert (r.status, r.error_kind) == ("error", "memory")


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_infinite_loop(isolation: str, hook: bool) -> None:
    r = attempt("while True:\n    pass", "assert False", isolation, hook, wall_seconds=3.0, cpu_seconds=1)
    assert (r.status, r.error_kind) in {("error", "cpu_time"), ("timeout", "wall_time")}


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_output_flood(isolation: str, hook: bool) -> None:
    r = attempt("while True:\n    print('x' * 1000)", "assert False", isolation, hook, output_bytes=5000)
    assert (r.status, r.error_kind) == ("error", "output_limit") and len(r.stdout) == 5000


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_socket_to_a_loopback_listener_never_connects(isolation: str, hook: bool) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')"
        r = attempt(code, "assert s.recv(1) is not None", isolation, hook)
        contained(r)
        with pytest.raises(TimeoutError):
            server.accept()
    if isolation == "required" and not hook:
        assert r.error_kind == "ConnectionRefusedError"  # its own network namespace: nothing listens there


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_spawning_a_shell_reaches_nothing_outside(tmp_path: Path, isolation: str, hook: bool) -> None:
    marker = tmp_path / "shell-was-here"
    code = f"import subprocess\np = subprocess.run(['/bin/sh', '-c', 'echo x > {marker}'])"
    r = attempt(code, f"assert p.returncode == 0 and open({str(marker)!r}).read()", isolation, hook)
    contained(r)
    assert not marker.exists()


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_signalling_or_tracing_the_parent_fails(isolation: str, hook: bool) -> None:
    me = os.getpid()
    code = (
        "import os, signal\nhit = []\nfor pid in {os.getppid(), " + str(me) + "}:\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        hit.append(pid)\n    except OSError:\n        pass\n"
    )
    r = attempt(code, "assert hit", isolation, hook)
    contained(r)
    if not hook:  # without the hook also try ptrace through ctypes
        code = "import ctypes, os\nrc = ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0)"  # PTRACE_ATTACH
        r = attempt(code, "assert rc == 0", isolation, hook)
        assert r.status == "failed", r


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_reading_another_process_environment_fails(monkeypatch: pytest.MonkeyPatch, isolation: str, hook: bool) -> None:
    secret = "env-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("STEERKIT_HOSTILE_SECRET", secret)
    code = f"data = open('/proc/{os.getpid()}/environ').read()\nprint(data)"
    r = attempt(code, f"assert {secret!r} in data", isolation, hook)
    contained(r, secret)


@pytest.mark.parametrize(("isolation", "hook"), LEVELS)
def test_exit_zero_before_the_tests_is_not_a_pass(isolation: str, hook: bool) -> None:
    r = attempt("import os\nos._exit(0)", "assert True", isolation, hook)
    assert (r.status, r.error_kind) == ("error", "exited_before_tests")


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@NS
def test_a_sleeping_child_dies_with_the_timed_out_program() -> None:
    marker = f"{30 + int(uuid.uuid4().int % 1000)}.{uuid.uuid4().int % 10**6:06d}"  # a unique `sleep` argument
    code = f"import subprocess, time\nsubprocess.Popen(['/bin/sleep', '{marker}'])\ntime.sleep(60)"
    r = attempt(code, "assert True", "required", False, wall_seconds=2.0)
    assert (r.status, r.error_kind) == ("timeout", "wall_time")
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []
