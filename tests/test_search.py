"""steerkit.search: grid points run once, resume without re-evaluation, nested MLflow runs, seeded TPE."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from steerkit import tracking
from steerkit.errors import SteerkitError
from steerkit.search import StudyConfig, redact_storage, run_study
from tests.conftest import script

sweep_scales = script("sweep_scales")

ROOT = Path(__file__).resolve().parents[1]


class Counting:
    """A tiny objective that records every point it evaluates."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def __call__(self, trial):
        x = trial.suggest_float("x", -2.0, 2.0)
        k = trial.suggest_int("k", 0, 1)
        self.calls.append((x, k))
        trial.set_user_attr("note", "hello")
        trial.set_user_attr("x_squared", x * x)
        return -((x - 1.0) ** 2) + k


def _grid(tmp_path, name="g", n_trials=None) -> StudyConfig:
    space = {"x": [-1.0, 0.0, 1.0], "k": [0, 1]}
    storage = f"sqlite:///{tmp_path}/optuna.db"
    return StudyConfig(study_name=name, storage=storage, sampler="grid", search_space=space, n_trials=n_trials)


def test_grid_points_run_exactly_once_and_resume_skips_them(tmp_path):
    objective = Counting()
    study = run_study(objective, _grid(tmp_path, n_trials=4), track=False)
    assert len(objective.calls) == 4 and len(set(objective.calls)) == 4
    run_study(objective, _grid(tmp_path), track=False)  # resume: only the two points left
    assert len(objective.calls) == 6 and len(set(objective.calls)) == 6
    study = run_study(objective, _grid(tmp_path), track=False)  # finished grid: nothing re-evaluated
    assert len(objective.calls) == 6 and len(study.trials) == 6
    assert study.best_params == {"x": 1.0, "k": 1}


def test_tpe_with_fixed_seed_is_reproducible(tmp_path):
    def params(name):
        config = StudyConfig(study_name=name, storage=f"sqlite:///{tmp_path}/tpe.db", seed=7, n_trials=12)
        return [t.params for t in run_study(Counting(), config, track=False).trials]

    assert params("a") == params("b")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"study_name": " "}, "study_name"),
        ({"study_name": "s", "storage": "optuna.db"}, "optuna.db"),
        ({"study_name": "s", "directions": ("up",)}, "up"),
        ({"study_name": "s", "sampler": "grid"}, "search space"),
        ({"study_name": "s", "sampler": "tpe"}, "n_trials"),
        ({"study_name": "s", "sampler": "random", "n_trials": 2}, "random"),
    ],
)
def test_study_config_validation_names_the_value(kwargs, needle):
    with pytest.raises(SteerkitError, match=needle):
        StudyConfig(**kwargs)


def test_trials_are_nested_child_runs_with_params_metrics_and_plots(tracking_dir):
    with tracking.tracked_run("search_test", {"what": "grid"}, experiment="search"):
        parent_id = tracking.active_run_id()
        run_study(Counting(), _grid(tracking_dir, name="nested"))
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    parent = mlflow.get_run(parent_id)
    assert len(runs) == 7 and len(children) == 6
    assert {r.info.experiment_id for r in runs} == {parent.info.experiment_id}
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["steerkit.optuna_state"] == "COMPLETE"
        x, k = float(child.data.params["x"]), int(child.data.params["k"])
        assert child.data.metrics["value"] == pytest.approx(-((x - 1.0) ** 2) + k)
        assert child.data.metrics["x_squared"] == pytest.approx(x * x)
        assert child.data.tags["steerkit.user_attr.note"] == "hello"
        number = child.data.tags["steerkit.optuna_trial"]
        assert child.info.run_name == f"trial {number} x={x:g} k={k}"
    assert parent.data.metrics["n_trials_total"] == 6
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id, "optuna")}
    assert "optuna/optimization_history.png" in artifacts and "optuna/slice.png" in artifacts


def test_sweep_scales_entry_point_tiny(tracking_dir):
    argv = ["--model", "tiny-llama", "--layer", "2", "--grid", "1.0,2.0", "--limit", "2", "--max-new-tokens", "4"]
    argv += ["--corpus", str(ROOT / "corpus" / "generation_prompts_n50.json"), "--allow-underpowered", "true"]
    sweep_scales.main(argv)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    (parent,) = [r for r in runs if r.data.tags[tracking.TAG_ENTRY_POINT] == "sweep_scales"]
    trials = [r for r in runs if r.data.tags[tracking.TAG_ENTRY_POINT] == sweep_scales.TRIAL_ENTRY_POINT]
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    identity = next(t for t in trials if t.data.metrics["dose"] == 1.0)
    assert identity.data.metrics["new_test_rate_gain"] == 0.0 and identity.data.metrics["n_identical_outputs"] == 2
    table = mlflow.load_table("samples.json", run_ids=[identity.info.run_id])
    assert len(table) == 2
    sweep_scales.main(argv)  # same settings: the stored study is resumed and no grid point runs again
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert sum(r.data.tags[tracking.TAG_ENTRY_POINT] == sweep_scales.TRIAL_ENTRY_POINT for r in runs) == 2


def test_storage_password_is_redacted_for_logging():
    assert redact_storage("postgresql://me:s3cret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert redact_storage("sqlite:///optuna.db") == "sqlite:///optuna.db"
