"""MLflow as its users expect: run names, the corpus as a dataset input, tables that load back, system metrics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import pytest

from steerkit import tracking
from steerkit.tracking.inputs import EXPERIMENT_KIND, mark_experiment_kind
from steerkit.tracking.names import run_name, trial_run_name
from tests.conftest import all_runs, script

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus" / "generation_prompts_n50.json"
FAST = ["--model", "tiny-llama", "--layer", "2", "--limit", "3", "--max-new-tokens", "4", "--batch-size", "3"]


@pytest.mark.parametrize(
    ("entry", "params", "name"),
    [
        ("generate_n50", {"scale": "3.0", "layer": "auto", "model": "smollm2-135m-instruct"}, "n50 scale=3.0"),
        ("generate_n50", {"scale": "3.0", "layer": "auto", "resolved_layer": 18}, "n50 scale=3.0 L18"),
        ("generate_n50", {"scale": "2.0", "layer": "2", "model": "tiny-llama"}, "n50 scale=2.0 L2 tiny-llama"),
        ("sweep_scales", {"grid": "'1.0,2.0'", "layer": "auto"}, "sweep grid=1.0,2.0"),  # shell-quoted by mlflow run
        ("refusal_sweep", {"config": "experiments/configs/smoke.yaml", "judge": "rule"}, "refusal smoke judge=rule"),
        (
            "compare_runs",
            {"entry_point": "generate_n50", "reference": "baseline"},
            "compare generate_n50 reference=baseline",
        ),
        ("unknown_point", {"x": "1", "model": "/models/My-Model"}, "unknown_point My-Model"),
        (
            "steer_eval",
            {"scorer": "length", "coef": "2.0", "grid": "", "layer": "2"},
            "steer-eval scorer=length coef=2.0 L2",
        ),
        (
            "steer_eval",
            {"scorer": "length", "coef": "1.0", "grid": "0.5,2", "layer": "2"},
            "steer-eval scorer=length grid=0.5,2 L2",
        ),
    ],
)
def test_run_name_says_what_the_run_is(entry, params, name):
    assert run_name(entry, params) == name


def test_trial_run_name():
    assert trial_run_name(4, {"coefficient": 50.0}) == "trial 4 coef=50"
    assert trial_run_name(0, {"scale": 2.5}) == "trial 0 scale=2.5"
    assert trial_run_name(7, {}) == "trial 7"


def test_generate_n50_run_is_named_reads_its_corpus_and_its_table_loads_back(tracking_dir, monkeypatch):
    # a short interval: a tiny-model run lasts about a second, and a sample is published only after a full interval
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    script("generate_n50").main(FAST + ["--corpus", str(CORPUS), "--scale", "2.0", "--allow-underpowered", "true"])
    (run,) = all_runs()
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "n50 scale=2.0 L2 tiny-llama"
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == "steerkit" and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (used,) = run.inputs.dataset_inputs
    assert [t.value for t in used.tags if t.key == "mlflow.data.context"] == ["eval"]
    raw = CORPUS.read_bytes()
    assert used.dataset.digest == hashlib.sha256(raw).hexdigest()[:32]
    assert used.dataset.name == "generation_prompts_n50" and str(CORPUS) in used.dataset.source
    # load_table searches the active experiment, which the run set (`steerkit`)
    table = mlflow.load_table("samples.json", run_ids=[run.info.run_id], extra_columns=["run_id"])
    assert len(table) == 3 and "run_id" in table.columns
    assert list(table.columns)[:3] == ["id", "steered_output", "baseline_output"]  # what the compare view opens on
    assert [r["id"] for r in tracking.load_run_table(run.info.run_id, "samples.json")] == list(table["id"])
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)


def test_experiment_follows_mlflow_experiment_name(tracking_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    assert tracking.default_experiment() == "mine"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    assert tracking.default_experiment() == "steerkit"


def test_corpus_input_skips_what_is_not_a_prompt_file(tracking_dir, tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "x", "meta": {"k": 1}}\n')
    (tmp_path / "bad.json").write_text("{not json")
    with mlflow.start_run() as run:
        assert tracking.log_corpus_input(tmp_path / "rows.jsonl")
        assert not tracking.log_corpus_input(tmp_path / "bad.json")
        assert not tracking.log_corpus_input(tmp_path)  # a directory (train_sae's corpus=corpus)
    (used,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert used.dataset.name == "rows"


def test_corpus_input_survives_a_concurrent_insert_of_the_same_dataset(tracking_dir, tmp_path, monkeypatch):
    """Workers of one study log one corpus at once; MLflow's store can then fail the loser's insert on its unique
    constraint (seen in CI against PostgreSQL). The input must still be logged, not fail the run."""
    from mlflow.exceptions import MlflowException

    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "x"}\n')
    real, calls = mlflow.log_input, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("duplicate key value violates unique constraint on datasets")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", racing)
    with mlflow.start_run() as run:
        assert tracking.log_corpus_input(tmp_path / "rows.jsonl")
    assert len(calls) == 2
    (used,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert used.dataset.name == "rows"


def test_experiment_kind_survives_workers_tagging_at_once(tracking_dir, monkeypatch):
    """Three workers opened one experiment at once; all saw it untagged, and the losers' inserts of the tag failed
    its unique constraint (CI, PostgreSQL), failing their runs. The tag set by the winner must be enough."""
    from mlflow.exceptions import MlflowException

    experiment_id = mlflow.create_experiment("racing")
    real = mlflow.MlflowClient.set_experiment_tag

    def lose_the_race(self, experiment, key, value):
        real(self, experiment, key, value)  # the other worker's insert commits first
        raise MlflowException(f"duplicate key value violates unique constraint experiment_tag_pk ({key})")

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", lose_the_race)
    mark_experiment_kind(experiment_id)
    assert mlflow.get_experiment(experiment_id).tags[EXPERIMENT_KIND] == "custom_model_development"

    other = mlflow.create_experiment("untagged")  # a failure that did not come from a race still raises

    def down(self, experiment, key, value):
        raise MlflowException("server down")

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", down)
    with pytest.raises(MlflowException, match="server down"):
        mark_experiment_kind(other)


def test_run_name_tag_is_mlflows_own() -> None:
    """steerkit's `TAG_RUN_NAME` (defined once, for packages that may not import mlflow) is MLflow's run-name tag."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    assert tracking.TAG_RUN_NAME == MLFLOW_RUN_NAME
    assert tracking.TAG_PARENT_RUN == MLFLOW_PARENT_RUN_ID
