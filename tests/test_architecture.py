"""The house rules of the layout, checked on the source (ast, nothing imported or executed).

Imports run one way. A module may import modules of its own package and of lower layers, never a higher layer
or a sibling package of the same layer (that is how cycles start):

    0  errors
    1  cli, plots                              parsing and figures, no steerkit logic
    2  core: models, sources, attention_backend, positions, seeds
    3  interventions                          what an experiment does to the model
    4  core: generation, decoding, arms, ...  running the model under interventions
    4  execution                              the sandbox (needs only errors; metrics score through it)
    5  corpora, metrics, stats                data in, numbers out
    6  tracking                               the only package that imports mlflow
    7  search                                 the only package that imports optuna (its trials log via tracking)
    7  attention, sae, refusal, entropy       one package per experiment system; never tracking or search
    8  steer_eval                             the general evaluation, composing the systems; never tracking/search
    9  steerkit/__init__                      the public surface

Scripts in `experiments/` sit above all of it and never import each other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "steerkit"

LAYERS: dict[str, int] = {
    "steerkit.errors": 0,
    "steerkit.cli": 1,
    "steerkit.plots": 1,
    "steerkit.core.models": 2,
    "steerkit.core.sources": 2,
    "steerkit.core._tiny": 2,
    "steerkit.core.attention_backend": 2,
    "steerkit.core.positions": 2,
    "steerkit.core.seeds": 2,
    "steerkit.core": 2,
    "steerkit.interventions": 3,
    "steerkit.core.generation": 4,
    "steerkit.core.activations": 4,
    "steerkit.core.checks": 4,
    "steerkit.core.records": 4,
    "steerkit.core.arms": 4,
    "steerkit.core.arm_batches": 4,
    "steerkit.core.decoding": 4,
    "steerkit.core.batching": 4,
    "steerkit.core.sampling": 2,
    "steerkit.corpora": 5,
    "steerkit.metrics": 5,
    "steerkit.stats": 5,
    "steerkit.execution": 4,
    "steerkit.tracking": 6,
    "steerkit.search": 7,
    "steerkit.attention": 7,
    "steerkit.sae": 7,
    "steerkit.refusal": 7,
    "steerkit.entropy": 7,
    "steerkit.steer_eval": 8,
    "steerkit": 9,
}
SYSTEMS = ("steerkit.attention", "steerkit.sae", "steerkit.refusal", "steerkit.entropy", "steerkit.steer_eval")
ONLY_IN = {"mlflow": ("steerkit.tracking",), "optuna": ("steerkit.search",)}
MAX_SCRIPT_LINES = 150
MAX_MODULE_LINES = 300
WHOLE = "better whole"  # a module over the limit says why in its design note


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every steerkit module `path` imports (function-level and TYPE_CHECKING imports included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m == "steerkit" or m.startswith("steerkit.")}


def _layer(module: str) -> tuple[int, str]:
    """(layer, the key that placed it): the longest matching prefix of LAYERS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key], key
    raise AssertionError(f"{module} has no layer in tests/test_architecture.py LAYERS: add it")


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, set(mods)) - {name} for name, path in mods.items()}


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        _layer(module)


def test_no_upward_or_sideways_import() -> None:
    bad = []
    for module, deps in _graph().items():
        if module == "steerkit":
            continue
        own, (mine, _) = _package(module), _layer(module)
        for dep in deps:
            theirs, _ = _layer(dep)
            same_package = _package(dep) == own
            if dep == "steerkit" or (not same_package and theirs >= mine):
                bad.append(f"{module} (layer {mine}) imports {dep} (layer {theirs})")
            if module.startswith(SYSTEMS) and dep.startswith(("steerkit.tracking", "steerkit.search")):
                bad.append(f"{module} is an experiment system and imports {dep} (pass a callback instead)")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("lib", sorted(ONLY_IN))
def test_mlflow_and_optuna_only_in_their_package(lib: str) -> None:
    users = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == lib or n.startswith(f"{lib}.") for n in names) and not module.startswith(ONLY_IN[lib]):
                users.append(module)
    assert not users, f"{lib} imported outside {ONLY_IN[lib]}: {sorted(set(users))}"


def test_matplotlib_backend_chosen_once() -> None:
    files = [*PKG.rglob("*.py"), *(ROOT / "experiments").glob("*.py")]
    chosen = [str(p.relative_to(ROOT)) for p in files if re.search(r"matplotlib\.use\(", p.read_text())]
    assert chosen == ["steerkit/plots.py"]


def test_scripts_never_import_scripts_nor_touch_sys_path() -> None:
    scripts = {p.stem for p in (ROOT / "experiments").glob("*.py")}
    for path in sorted((ROOT / "experiments").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & scripts, f"{path.name} imports a script"
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert (node.module or "").split(".")[0] not in scripts, f"{path.name} imports a script"
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path.name}: relative import")
            if isinstance(node, ast.Attribute) and node.attr == "path":
                assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), f"{path.name}: sys.path"


def test_tests_import_scripts_by_path_not_sys_path() -> None:
    touching = [
        p.name for p in (ROOT / "tests").glob("*.py") if re.search(r"sys\.path\.(insert|append)", p.read_text())
    ]
    assert not touching, f"use tests.conftest.script(name) instead of sys.path in {sorted(touching)}"


def test_script_and_module_sizes() -> None:
    long_scripts = {
        p.name: n
        for p in (ROOT / "experiments").glob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_SCRIPT_LINES
    }
    assert not long_scripts, f"scripts over {MAX_SCRIPT_LINES} lines: {long_scripts}"
    long_modules = {
        name: n
        for name, p in _modules().items()
        if not name.startswith("steerkit.execution")  # the sandbox keeps its own layout (rewritten elsewhere)
        and (n := len((text := p.read_text()).splitlines())) > MAX_MODULE_LINES
        and WHOLE not in (ast.get_docstring(ast.parse(text)) or "")
    }
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines without a '{WHOLE}' design note: {long_modules}"


NAMESPACE_NAMES = ("args", "ns", "namespace")  # what a parameter holding a parsed argparse namespace is called


def _namespace_uses(tree: ast.AST) -> list[str]:
    """argparse imports, parameters annotated `Namespace`, and untyped/`Any` parameters named like a namespace
    whose attributes the function reads (`args.seed`): a namespace passed in under another annotation."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            found.append(f"line {node.lineno}: imports argparse")
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            found.append(f"line {node.lineno}: imports from argparse")
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        params = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        for param in params:
            note = ast.unparse(param.annotation) if param.annotation else ""
            if "Namespace" in note:
                found.append(f"{node.name}({param.arg}: {note})")
            elif param.arg in NAMESPACE_NAMES and note in ("", "Any", "typing.Any", "object"):
                read = {
                    f"{param.arg}.{n.attr}"
                    for n in ast.walk(node)
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == param.arg
                }
                if read:
                    found.append(f"{node.name}({param.arg}) reads {', '.join(sorted(read))}")
    return found


def test_library_functions_never_take_an_argparse_namespace() -> None:
    """Only steerkit.cli parses argv. Library functions take plain keywords or dataclasses; a script passes
    `**cli.kwargs_for(fn, args)`."""
    bad = [
        f"{module}: {use}"
        for module, path in _modules().items()
        if module != "steerkit.cli"
        for use in _namespace_uses(ast.parse(path.read_text()))
    ]
    assert not bad, "\n".join(bad)


def test_namespace_check_sees_each_form() -> None:
    """The check above would catch each way a namespace comes in (it must not pass vacuously)."""
    source = (
        "import argparse\n"
        "from argparse import Namespace\n"
        "def a(args: argparse.Namespace): return 1\n"
        "def b(args: Any): return args.seed\n"
        "def c(x, *, args): return args.model\n"
        "def ok(args: tuple, call: Any): return args[0], call.args\n"
    )
    uses = _namespace_uses(ast.parse(source))
    assert len(uses) == 5, uses
    assert not [u for u in uses if u.startswith("ok(")]


# One home for every shared concept (issue 13, "Rules of done"): where a concept's code may be written.
JSON_READERS = {
    "steerkit.corpora.loader": "corpus files (the one corpus loader)",
    "steerkit.tracking.samples": "per-sample JSON-lines logs a run wrote",
    "steerkit.tracking.queries": "JSON artifacts of logged runs",
    "steerkit.sae.loaders": "a SAELens cfg.json (a format boundary, not a corpus)",
    "steerkit.core.sources": "the model cache's own metadata file",
}


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef))]
    return {
        id(body[0].value)
        for node in nodes
        if (body := getattr(node, "body", []))
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    }


def _code_strings(tree: ast.AST) -> list[str]:
    """Every string constant in the code, docstrings left out (f-string pieces included)."""
    skip = _docstrings(tree)
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]


def _calls(tree: ast.AST, owner: str, names: tuple[str, ...]) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in names
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == owner
    ]


def _sources() -> dict[str, Path]:
    return {**_modules(), **{f"experiments.{p.stem}": p for p in (ROOT / "experiments").glob("*.py")}}


def test_json_is_decoded_only_where_named() -> None:
    """Corpus files are read by `corpora.loader` alone; the other JSON readers are listed with what they read."""
    readers = {
        module
        for module, path in _sources().items()
        if not module.startswith("steerkit.execution")
        and _calls(ast.parse(path.read_text()), "json", ("load", "loads"))
    }
    assert readers <= set(JSON_READERS), (
        f"JSON decoded outside {sorted(JSON_READERS)}: {sorted(readers - set(JSON_READERS))}"
    )


def test_seed_derivation_written_once() -> None:
    """`int.from_bytes(hashlib...)` (a seed from a hash) is `core.seeds.derive_seed`; everyone else calls it."""
    writers = []
    for module, path in _sources().items():
        for call in _calls(ast.parse(path.read_text()), "int", ("from_bytes",)):
            if any(isinstance(n, ast.Name) and n.id == "hashlib" for n in ast.walk(call)):
                writers.append(module)
    assert writers == ["steerkit.core.seeds"], writers


def test_tag_names_defined_once() -> None:
    """Every name in `tracking/tags.py` is written there only; code elsewhere uses the constant."""
    tags_tree = ast.parse((PKG / "tracking" / "tags.py").read_text())
    values = {
        node.value.value
        for node in tags_tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }
    assert "steerkit.entry_point" in values and "mlflow.runName" in values
    again = [
        f"{module}: {text!r}"
        for module, path in _sources().items()
        if module != "steerkit.tracking.tags"
        for text in _code_strings(ast.parse(path.read_text()))
        if text in values
    ]
    assert not again, "tag names written outside steerkit/tracking/tags.py:\n" + "\n".join(again)


def test_one_runs_uri_resolver() -> None:
    """`runs:/` URIs are parsed in `tracking.queries` alone (`local_artifact`); `sae.loaders` only refuses one."""
    users = {
        module
        for module, path in _modules().items()
        if any("runs:/" in text for text in _code_strings(ast.parse(path.read_text())))
    }
    assert users <= {"steerkit.tracking.queries", "steerkit.sae.loaders"}, sorted(users)
