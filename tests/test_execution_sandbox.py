"""The kernel layer itself: what a program sees inside bubblewrap, level reporting, the fallback and its warning."""

from __future__ import annotations

import ast
import logging
import os
import uuid

import pytest

from steerkit.errors import SteerkitError
from steerkit.execution import ExecutionLimits, compile_and_test_rust, run_program, run_tests, sandbox, sandbox_level
from steerkit.execution.sandbox import _probe, bwrap_command

NS = pytest.mark.skipif(sandbox_level() != "namespaces", reason=f"no namespace sandbox here: {_probe()}")


def test_level_is_reported_on_every_result() -> None:
    assert sandbox_level() in {"namespaces", "audit_hook_only"}
    assert run_tests("x = 1", ["assert x == 1"]).sandbox_level == sandbox_level()
    forced = run_tests("x = 1", ["assert x == 1"], limits=ExecutionLimits(isolation="audit_hook_only"))
    assert (forced.status, forced.sandbox_level) == ("passed", "audit_hook_only")
    assert forced.to_dict()["sandbox_level"] == "audit_hook_only"


def test_fallback_warns_once_and_required_refuses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reason = f"pretend bwrap is missing {uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(sandbox, "_probe", lambda: reason)
    with caplog.at_level(logging.WARNING, logger="steerkit.execution"):
        results = [run_tests("x = 1", ["assert x == 1"]) for _ in range(2)]
    assert [(r.status, r.sandbox_level) for r in results] == [("passed", "audit_hook_only")] * 2
    assert [rec.getMessage().count(reason) for rec in caplog.records] == [1]  # one line, once
    assert sandbox_level() == "audit_hook_only"
    required = ExecutionLimits(isolation="required")
    with pytest.raises(SteerkitError, match="isolation='required'.*pretend bwrap"):
        run_tests("x = 1", ["assert x == 1"], limits=required)
    with pytest.raises(SteerkitError, match="isolation='required'"):
        compile_and_test_rust("#[test]\nfn t() {}\n", limits=required)


def test_isolation_is_validated() -> None:
    with pytest.raises(SteerkitError, match="isolation"):
        ExecutionLimits(isolation="maybe")  # type: ignore[arg-type]


def test_the_command_line_asks_for_every_namespace() -> None:
    argv = bwrap_command(["/usr/bin/true"], userns_fd=7, ro_binds=["/opt/toolchain"])
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent"):
        assert flag in argv
    assert argv[argv.index("--userns") + 1] == "7" and "--no-new-privs" in argv
    assert argv[argv.index("--reuid") + 1] == "65534" and argv[-1] == "/usr/bin/true"
    assert ["--ro-bind", "/opt/toolchain", "/opt/toolchain"] == argv[argv.index("/opt/toolchain") - 1 :][:3]
    assert "/root" not in argv and os.path.expanduser("~") not in argv[:-1]


@NS
def test_inside_the_program_is_nobody_without_privileges_in_new_namespaces() -> None:
    code = (
        "import os\nstatus = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines())\n"
        "ns = {n: os.readlink('/proc/self/ns/' + n) for n in ('user', 'mnt', 'pid', 'ipc', 'uts', 'net')}\n"
        "print(repr([os.getuid(), os.getgid(), os.getgroups(), status['CapEff'], status['NoNewPrivs'], ns,\n"
        "            sorted(os.listdir('/')), os.listdir('.'), os.getcwd(), len(os.listdir('/proc/self/task'))]))\n"
    )
    r = run_program(code, limits=ExecutionLimits(isolation="required"))
    assert r.status == "passed", r.stderr
    uid, gid, groups, cap_eff, nnp, ns, top, cwd_files, cwd, _ = ast.literal_eval(r.stdout)
    assert (uid, gid, groups, int(cap_eff, 16), nnp) == (65534, 65534, [], 0, "1")
    ours = {n: os.readlink(f"/proc/self/ns/{n}") for n in ns}
    assert all(ns[n] != ours[n] for n in ns), (ns, ours)
    assert not {"etc", "home", "work", "tmp", "var"} & set(top)
    assert (cwd_files, cwd) == ([], "/sandbox")
