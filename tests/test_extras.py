"""Optional dependencies (pyproject extras `mbpp`, `postgres`) are imported where used; without one, the error is
one line naming the extra to install, and the rest of steerkit still imports."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pytest

from steerkit.corpora.mbpp import Problem
from steerkit.errors import SteerkitError
from steerkit.search import storage_url

ROOT = Path(__file__).resolve().parents[1]
CODE = "def f(x):\n    if x:\n        return 1\n    return 2\n"


def test_mbpp_complexity_without_radon_names_the_extra(monkeypatch):
    problem = Problem(1, "Write f.", CODE, ("assert f(1) == 1",) * 3)
    assert Problem(1, "Write f.", CODE, ("assert f(1) == 1",) * 3).complexity == 2  # 1 + one `if`; a copy (cached)
    monkeypatch.setitem(sys.modules, "radon.complexity", None)  # `import radon.complexity` now raises ImportError
    with pytest.raises(SteerkitError) as exc:
        _ = problem.complexity
    assert str(exc.value) == "MBPP complexity (radon) needs radon, not installed: pip install 'steerkit[mbpp]'"


def test_postgres_storage_without_a_driver_names_the_extra(monkeypatch):
    assert storage_url("postgresql://u@db/optuna").startswith(("postgresql://", "postgresql+psycopg2://"))
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)  # neither psycopg (v3) nor psycopg2
    with pytest.raises(SteerkitError, match=r"needs psycopg2, not installed: pip install 'steerkit\[postgres\]'"):
        storage_url("postgresql://u:secret@db/optuna")
    with pytest.raises(SteerkitError) as exc:
        storage_url("postgresql://u:secret@db/optuna")
    assert "secret" not in str(exc.value)  # the password is redacted in the message
    assert storage_url("sqlite:///:memory:") == "sqlite:///:memory:"  # sqlite needs no extra


def test_mbpp_module_imports_without_radon(monkeypatch):
    """radon is imported where complexity is computed, not at the top of `steerkit.corpora.mbpp`."""
    for name in ("radon", "radon.complexity", "radon.visitors"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "steerkit.corpora.mbpp")  # restored after the test
    fresh = importlib.import_module("steerkit.corpora.mbpp")
    assert fresh.Problem(1, "Write f.", CODE, ("assert f(1) == 1",) * 3).entry_point == "f"


def test_extras_are_declared_and_installed_by_make():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["mbpp"] == ["radon>=6.0"] and extras["postgres"] == ["psycopg2-binary>=2.9"]
    assert not any(d.startswith(("radon", "psycopg2")) for d in project["dependencies"])
    assert '-e ".[dev,postgres,mbpp]"' in (ROOT / "Makefile").read_text()
