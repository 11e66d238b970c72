"""`threads`: one parameter for every entry point that loads a model (`steerkit.core.threads`)."""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from steerkit import tracking
from steerkit.core.models import load_model
from steerkit.core.threads import resolve_threads
from steerkit.errors import SteerkitError
from tests.conftest import all_runs, script

ROOT = Path(__file__).resolve().parents[1]
ATTENTION_CORPUS = str(ROOT / "corpus" / "attention_pairs.json")
patch_activations = script("patch_activations")


@pytest.fixture
def one_thread_after() -> Iterator[None]:
    """Put torch back on the suite's one thread whatever the test set."""
    yield
    torch.set_num_threads(1)


def test_auto_is_torch_setting_capped_at_the_usable_cpus(one_thread_after) -> None:
    torch.set_num_threads(64)
    assert resolve_threads("auto") == min(64, len(os.sched_getaffinity(0)))  # capped at the affinity mask
    torch.set_num_threads(1)
    assert resolve_threads("auto") == 1
    assert resolve_threads("3") == 3 and resolve_threads(2) == 2


@pytest.mark.parametrize("bad", [0, -1, "0", "-1", "x", "", "2.5", True])
def test_bad_threads_value_is_a_one_line_error_naming_it(bad) -> None:
    with pytest.raises(SteerkitError, match=re.escape(repr(bad))) as err:
        resolve_threads(bad)
    assert "\n" not in str(err.value)


def test_load_model_applies_threads_and_describe_reports_them(one_thread_after) -> None:
    loaded = load_model("tiny-llama", threads=2)
    assert torch.get_num_threads() == 2
    assert loaded.describe()["threads"] == 2
    with pytest.raises(SteerkitError, match="'x'"):
        load_model("tiny-llama", threads="x")


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_bad_threads_fails_the_run_naming_it(tracking_dir, monkeypatch, capsys, bad) -> None:
    argv = ["x", "--model", "tiny-llama", "--limit", "1", "--layers", "0", "--corpus", ATTENTION_CORPUS]
    monkeypatch.setattr(sys, "argv", [*argv, "--threads", bad])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(patch_activations.main)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: threads") and repr(bad) in last
    assert all_runs()[0].info.status == "FAILED"


def test_resolved_threads_and_dtype_are_logged(tracking_dir, one_thread_after, monkeypatch) -> None:
    monkeypatch.setattr("steerkit.core.models.native_bf16", lambda device: False)  # `auto` resolves to float32
    argv = ["--model", "tiny-llama", "--limit", "1", "--layers", "0", "--corpus", ATTENTION_CORPUS]
    patch_activations.main([*argv, "--threads", "2", "--dtype", "auto"])
    (run,) = all_runs()
    assert run.data.params["threads"] == "2" and run.data.params["model_threads"] == "2"
    assert run.data.params["dtype"] == "auto" and run.data.params["model_dtype"] == "float32"


def _loads_a_model(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(tree) if isinstance(n, ast.Call)
             for n in [n.func] if isinstance(n, ast.Attribute | ast.Name)}  # fmt: skip
    return "load_model" in names


def test_every_entry_point_that_loads_a_model_takes_threads() -> None:
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    loading = []
    for name, ep in project["entry_points"].items():
        path = ROOT / re.search(r"python (\S+\.py)", ep["command"]).group(1)
        if _loads_a_model(path):
            loading.append(name)
            assert "threads" in ep["parameters"] and "--threads {threads}" in ep["command"], name
    assert {"generate_n50", "knockout", "steer_eval", "find_features", "entropy_seeds"} <= set(loading)


def test_no_script_sets_torch_threads_itself() -> None:
    for path in sorted((ROOT / "experiments").glob("*.py")):
        tree = ast.parse(path.read_text())
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not calls & {"set_num_threads", "set_num_interop_threads"}, f"{path.name} sets torch threads"
        assert '"--threads"' not in path.read_text(), f"{path.name} declares its own --threads (use cli)"
