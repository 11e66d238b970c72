"""Tests for steerkit.execution's Rust path: libtest parsing, statuses, and hostile sources (all contained).

Hostile sources assert, in a `#[test]`, that their escape worked, so containment reads as "not passed"; the
world is checked from this process (marker files absent, no connection accepted, no process left). Namespace
cases skip with the reason where bubblewrap cannot start; the fallback is tested with isolation
"audit_hook_only".
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from steerkit.errors import SteerkitError
from steerkit.execution import ExecutionLimits, RustJob, RustResult, compile_and_test_rust, run_rust_many
from steerkit.execution import sandbox_level as current_level
from steerkit.execution.sandbox import _probe

pytestmark = pytest.mark.skipif(shutil.which("rustc") is None, reason="no rustc on PATH")
NS = pytest.mark.skipif(current_level() != "namespaces", reason=f"no namespace sandbox here: {_probe()}")
REQUIRED = ExecutionLimits(wall_seconds=20.0, cpu_seconds=10, isolation="required")
REPO = Path(__file__).resolve().parents[1]
ADD = "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"


def rust_tests(*bodies: str, prelude: str = "") -> str:
    """A source with one `#[test] fn tN()` per body."""
    fns = "\n".join(f"    #[test]\n    fn t{i}() {{\n        {body}\n    }}" for i, body in enumerate(bodies))
    return f"{ADD}{prelude}\n#[cfg(test)]\nmod tests {{\n    use super::*;\n{fns}\n}}\n"


def contained(r: RustResult, *secrets: str) -> None:
    assert not r.passed and r.status != "passed", r
    for secret in secrets:
        assert secret not in r.stdout + r.stderr + r.compile_stderr


def test_passing_and_failing_tests_are_parsed_per_name() -> None:
    src = rust_tests("assert_eq!(add(1, 2), 3);", "assert_eq!(add(1, 2), 4);")
    src = src.replace("    #[test]\n    fn t1", "    #[test]\n    #[ignore]\n    fn t2() {}\n    #[test]\n    fn t1")
    r = compile_and_test_rust(src, limits=REQUIRED if current_level() == "namespaces" else None)
    assert r.status == "failed" and not r.passed
    assert r.tests == {"tests::t0": "ok", "tests::t1": "failed", "tests::t2": "ignored"}
    assert r.sandbox_level == current_level() and r.seconds > 0 and "panicked" in r.stdout
    r = compile_and_test_rust(rust_tests("assert_eq!(add(1, 2), 3);"))
    assert (r.status, r.passed, r.tests) == ("passed", True, {"tests::t0": "ok"})


def test_should_panic_tests_are_parsed() -> None:
    src = rust_tests('panic!("boom");', "assert!(true);").replace(
        "    #[test]\n    fn t0", "    #[test]\n    #[should_panic]\n    fn t0"
    )
    r = compile_and_test_rust(src)
    assert (r.status, r.tests) == ("passed", {"tests::t0": "ok", "tests::t1": "ok"}), r.stdout


def test_compile_error_and_zero_tests_are_not_passes() -> None:
    r = compile_and_test_rust('fn main() { let x: i32 = "a"; }')
    assert (r.status, r.tests) == ("compile_error", {}) and "E0308" in r.compile_stderr
    r = compile_and_test_rust(ADD)  # compiles, runs, no tests
    assert r.status == "failed" and not r.passed and r.tests == {}


def test_exit_zero_inside_a_test_is_an_error() -> None:
    r = compile_and_test_rust(rust_tests("std::process::exit(0);", "assert_eq!(add(1, 2), 3);"))
    assert r.status == "error" and not r.passed


def test_fallback_level_runs_and_says_so() -> None:
    r = compile_and_test_rust(
        rust_tests("assert_eq!(add(2, 2), 4);"), limits=ExecutionLimits(isolation="audit_hook_only")
    )
    assert (r.status, r.sandbox_level) == ("passed", "audit_hook_only")


def test_run_rust_many_keeps_order_and_ids() -> None:
    jobs = [RustJob(id="good", source=rust_tests("assert!(true);")), RustJob(id="bad", source="fn (")]
    results = run_rust_many(jobs, workers=2)
    assert [(r.id, r.status) for r in results] == [("good", "passed"), ("bad", "compile_error")]
    assert run_rust_many([]) == []


def test_bad_calls_are_one_line_errors() -> None:
    with pytest.raises(SteerkitError, match="edition"):
        compile_and_test_rust(ADD, edition="2020")
    with pytest.raises(SteerkitError, match="workers"):
        run_rust_many([], workers=0)
    with pytest.raises(SteerkitError, match="RustJob"):
        run_rust_many([("a", "b")])  # type: ignore[list-item]
    with pytest.raises(SteerkitError, match="status"):
        RustResult("x", "ok", {}, "", "", "", "namespaces", 0.0)  # type: ignore[arg-type]


# --- hostile sources (namespaces) ------------------------------------------------------------------------------


@pytest.fixture
def canary() -> Iterator[dict[str, str]]:
    secret, name = "canary-" + uuid.uuid4().hex, f".steerkit-canary-{uuid.uuid4().hex}"
    paths = {"home": Path.home() / name, "project": REPO / name}
    for path in paths.values():
        path.write_text(secret)
    try:
        yield {"secret": secret, "name": name, **{k: str(v) for k, v in paths.items()}}
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)


@NS
def test_include_str_and_include_bytes_of_host_files_do_not_compile(canary: dict[str, str]) -> None:
    for macro, path in [
        ("include_str", "/etc/passwd"),
        ("include_bytes", canary["home"]),
        ("include_str", canary["project"]),
    ]:
        src = rust_tests("assert!(S.len() > 0);", prelude=f"pub const S: &[u8] = {macro}!({path!r}).as_ref();")
        r = compile_and_test_rust(src.replace("'", '"'), limits=REQUIRED)
        assert r.status == "compile_error" and "couldn't read" in r.compile_stderr, r
        contained(r, canary["secret"], "root:x:0:0")


@NS
def test_runtime_reads_of_canaries_shadow_and_root_fail(canary: dict[str, str]) -> None:
    bodies = [f'assert!(std::fs::read_to_string("{canary[k]}").is_ok());' for k in ("home", "project")]
    bodies += ['assert!(std::fs::read_to_string("/etc/shadow").is_ok());']
    bodies += [f'assert!(std::fs::read_dir("/root").unwrap().any(|e| e.unwrap().file_name() == "{canary["name"]}"));']
    r = compile_and_test_rust(rust_tests(*bodies), limits=REQUIRED)
    contained(r, canary["secret"])
    assert r.tests == {f"tests::t{i}": "failed" for i in range(4)}


@NS
def test_writing_outside_and_spawning_a_shell_reach_nothing(tmp_path: Path) -> None:
    bodies = [
        f'std::fs::write("{tmp_path}/a", "x").unwrap();',
        f'let s = std::process::Command::new("/bin/sh").arg("-c").arg("echo x > {tmp_path}/b").status().unwrap();'
        "\n        assert!(s.success());",
    ]
    r = compile_and_test_rust(rust_tests(*bodies), limits=REQUIRED)
    assert r.tests == {"tests::t0": "failed", "tests::t1": "failed"}, r
    assert list(tmp_path.iterdir()) == []


@NS
def test_fork_bomb_stops_at_the_task_limit() -> None:
    body = (
        "let mut kids = Vec::new();\n        for _ in 0..200 {\n"
        '            match std::process::Command::new("/bin/sleep").arg("2").spawn() {\n'
        "                Ok(c) => kids.push(c),\n                Err(_) => break,\n            }\n        }\n"
        "        assert_eq!(kids.len(), 200);"
    )
    r = compile_and_test_rust(rust_tests(body), limits=ExecutionLimits(wall_seconds=20.0, max_processes=20))
    assert r.tests == {"tests::t0": "failed"}, r


@NS
@pytest.mark.parametrize(
    ("body", "limits", "statuses"),
    [
        ("let v = vec![1u8; 8 << 30];\n        assert!(v[0] == 1);", {"memory_mb": 256}, {"killed", "failed"}),
        ("loop { std::hint::black_box(0); }", {"wall_seconds": 3.0, "cpu_seconds": 1}, {"killed", "timeout"}),
        (
            "use std::io::Write;\n        let mut o = std::io::stdout();\n"
            "        loop { o.write_all(&[b'x'; 1000]).unwrap(); }",
            {"output_bytes": 5000},
            {"killed"},
        ),
    ],
    ids=["memory", "loop", "flood"],
)
def test_resource_bombs(body: str, limits: dict[str, float], statuses: set[str]) -> None:
    r = compile_and_test_rust(rust_tests(body), limits=ExecutionLimits(**{"isolation": "required", **limits}))
    assert r.status in statuses, r


@NS
def test_loopback_socket_signals_and_proc_environ_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "env-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("STEERKIT_HOSTILE_SECRET", secret)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port, me = server.getsockname()[1], os.getpid()
        bodies = [
            f'assert!(std::net::TcpStream::connect("127.0.0.1:{port}").is_ok());',
            f'assert!(std::fs::read_to_string("/proc/{me}/environ").is_ok());',
            "let pp = std::os::unix::process::parent_id().to_string();\n"
            f'        let s = std::process::Command::new("/bin/kill").args(["-9", &pp, "{me}"]).status().unwrap();\n'
            "        assert!(s.success());",
        ]
        r = compile_and_test_rust(rust_tests(*bodies), limits=REQUIRED)
        with pytest.raises(TimeoutError):
            server.accept()
    contained(r, secret)
    assert r.tests == {f"tests::t{i}": "failed" for i in range(3)}, r


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@NS
def test_a_timed_out_test_binary_dies_with_its_child() -> None:
    marker = f"{40 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6:06d}"
    body = (
        f'std::process::Command::new("/bin/sleep").arg("{marker}").spawn().unwrap();\n'
        "        std::thread::sleep(std::time::Duration::from_secs(60));"
    )
    r = compile_and_test_rust(rust_tests(body), limits=ExecutionLimits(wall_seconds=2.0, isolation="required"))
    assert r.status == "timeout"
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []
