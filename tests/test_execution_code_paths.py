"""No code path runs generated code outside steerkit.execution: every process launch, `exec`/`eval` and `rustc`
in the repository's Python is either inside `steerkit/execution/` or on the short allow-list below, with its
reason. The scan reads the syntax tree (calls, imports, string constants), so hostile programs that tests pass
to the sandbox as strings are not counted, but a real `subprocess.run([...])` anywhere is.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("steerkit", "experiments", "tests", "bench")
SANDBOX = "steerkit/execution/"
LAUNCH_MODULES = {"subprocess", "_posixsubprocess", "pty", "multiprocessing"}
OS_LAUNCHERS = ("system", "popen", "fork", "forkpty", "exec", "spawn", "posix_spawn")
ALLOWED: dict[str, tuple[set[str], str]] = {
    "steerkit/tracking/runs.py": ({"import subprocess"}, "runs `git` for the commit id of a run (trusted tool)"),
    "steerkit/cli.py": ({"import subprocess"}, "the `steerkit` console script launches the `mlflow` CLI"),
    "tests/conftest.py": ({"import subprocess"}, "runs MLflow entry points (`mlflow run`): steerkit's own code"),
    "tests/test_scaleout.py": ({"import subprocess"}, "starts steerkit worker processes against PostgreSQL"),
    "tests/test_resume.py": ({"import subprocess"}, "kills a real entry-point run to test resuming"),
    "tests/test_scaleout_killed.py": ({"import subprocess"}, "a steerkit worker process that SIGKILLs itself"),
    "bench/bench_generation.py": ({"import subprocess"}, "times a fresh interpreter importing steerkit"),
}


def _uses(tree: ast.AST) -> set[str]:
    """The launch-like uses in one module, named like 'import subprocess', 'os.system', 'exec', "'rustc'"."""
    found: set[str] = set()
    lookups = {  # shutil.which("rustc") only looks a tool up
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "which"
        for arg in node.args
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {f"import {a.name}" for a in node.names if a.name.split(".")[0] in LAUNCH_MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LAUNCH_MODULES:
            found.add(f"import {node.module}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found |= {f"os.{a.name}" for a in node.names if a.name.startswith(OS_LAUNCHERS)}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr.startswith(OS_LAUNCHERS):
                found.add(f"os.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"exec", "eval"}:
            found.add(node.func.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in lookups:
            if node.value.split(" ")[0].rsplit("/", 1)[-1] in {"rustc", "cargo"}:
                found.add(f"{node.value.split(' ')[0]!r}")
    return found


def _scan() -> dict[str, set[str]]:
    uses: dict[str, set[str]] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(SANDBOX) or rel == "tests/test_execution_code_paths.py":
                continue
            found = _uses(ast.parse(path.read_text(encoding="utf-8"), filename=rel))
            if found:
                uses[rel] = found
    return uses


def test_process_launches_exec_and_rustc_only_inside_the_sandbox_package() -> None:
    unexpected = {rel: found - ALLOWED.get(rel, (set(), ""))[0] for rel, found in _scan().items()}
    assert {rel: sorted(found) for rel, found in unexpected.items() if found} == {}


def test_the_allow_list_is_still_needed() -> None:
    uses = _scan()
    stale = {rel: sorted(kinds - uses.get(rel, set())) for rel, (kinds, _) in ALLOWED.items()}
    assert {rel: kinds for rel, kinds in stale.items() if kinds} == {}


def test_the_scan_sees_what_it_should() -> None:
    src = (
        "import subprocess\nfrom os import system\nimport os\nos.execv('x', [])\nexec('1')\n"
        "cmd = ['rustc', '--test']\nshutil.which('rustc')\nprogram = \"import subprocess\"\n"
    )
    found = _uses(ast.parse(src))
    assert found == {"import subprocess", "os.system", "os.execv", "exec", "'rustc'"}
    assert _uses(ast.parse("shutil.which('rustc')")) == set()
