"""Project files agree: pyproject, python_env.yaml, conda.yaml, MLproject and the experiment scripts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def _pyproject_deps() -> set[str]:
    """What an `mlflow run` environment installs: pyproject's dependencies with torch at the Makefile's tested CPU
    pin (inside pyproject's range), plus the extras the entry points need (postgres, mbpp)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pin = re.search(r"pip install --quiet (torch==\S+)", (ROOT / "Makefile").read_text()).group(1)
    (torch_range,) = [d for d in project["dependencies"] if d.startswith("torch")]
    low, high = re.fullmatch(r"torch>=([\d.]+),<([\d.]+)", torch_range).groups()
    version = tuple(map(int, pin.removeprefix("torch==").split(".")))
    assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split("."))), (pin, torch_range)
    deps = {_norm(d) for d in project["dependencies"] if d != torch_range}
    return deps | {pin} | {_norm(d) for extra in ("postgres", "mbpp") for d in project["optional-dependencies"][extra]}


def test_python_env_matches_pyproject():
    env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    deps = {_norm(d) for d in env["dependencies"] if d != "-e ."}
    assert deps == _pyproject_deps()


def test_conda_env_matches_pyproject():
    env = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_norm(d) for d in pip if d != "-e ."} == _pyproject_deps()


def test_mlproject_entry_points_pass_every_parameter_to_existing_scripts():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    for name, ep in project["entry_points"].items():
        script = re.search(r"python (\S+\.py)", ep["command"]).group(1)
        assert (ROOT / script).is_file(), name
        used = set(re.findall(r"\{(\w+)\}", ep["command"]))
        assert used == set(ep["parameters"]), name


def test_every_experiment_script_is_an_entry_point():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    scripts = {re.search(r"python (\S+\.py)", ep["command"]).group(1) for ep in project["entry_points"].values()}
    on_disk = {f"experiments/{p.name}" for p in (ROOT / "experiments").glob("*.py") if not p.name.startswith("_")}
    assert on_disk <= scripts, sorted(on_disk - scripts)
