"""A worker SIGKILLed mid-trial leaves its trial RUNNING and its nested MLflow run open; on sqlite, with a heartbeat,
the next worker fails the stale trial, re-enqueues its point (Optuna's retry callback) and ends the dead trial's run
KILLED (`steerkit.search.RetryStaleTrial`), so no run stays RUNNING and every grid point completes once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna

from steerkit import tracking
from steerkit.search import (
    RUN_ID_ATTR,
    StudyConfig,
    finish_if_complete,
    open_grid_study,
    run_grid_worker,
    shared_storage,
)

ROOT = Path(__file__).resolve().parents[1]
GRID = [1.0, 2.0, 3.0]

DYING_WORKER = """
import os, signal, sys
from steerkit.search import StudyConfig, open_grid_study, run_grid_worker, shared_storage

url, parent = sys.argv[1], sys.argv[2]
config = StudyConfig(study_name="killed", storage=url, sampler="grid", search_space={"scale": [1.0, 2.0, 3.0]})
storage = shared_storage(url, heartbeat_s=1, grace_s=2)
study, _ = open_grid_study(config, lambda: parent, storage=storage)

def objective(trial):
    trial.suggest_float("scale", 1.0, 3.0)
    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-trial: its child run is open, its trial RUNNING

run_grid_worker(objective, study, storage)
"""


def test_killed_workers_trial_run_ends_killed_and_its_point_is_retried(tracking_dir):
    url = f"sqlite:///{tracking_dir}/optuna.db"
    config = StudyConfig(study_name="killed", storage=url, sampler="grid", search_space={"scale": GRID})
    with tracking.tracked_run("scaleout_test", {}, experiment="scaleout"):
        parent = tracking.create_run("scaleout", "study", {tracking.TAG_ENTRY_POINT: "search_study"})
        dying = subprocess.run([sys.executable, "-c", DYING_WORKER, url, parent], cwd=ROOT, timeout=300)
        assert dying.returncode == -signal.SIGKILL
        (lost,) = [
            t for t in optuna.load_study(study_name="killed", storage=url).get_trials() if t.state.name != "WAITING"
        ]
        assert lost.state.name == "RUNNING"  # precondition: left behind by the dead worker
        dead_run = lost.user_attrs[RUN_ID_ATTR]
        assert mlflow.get_run(dead_run).info.status == "RUNNING"
        alive = shared_storage(url, heartbeat_s=1, grace_s=2)
        study, created = open_grid_study(config, lambda: "unused", 5, alive)
        ran = run_grid_worker(lambda t: t.suggest_float("scale", 1.0, 3.0), study, alive, poll_s=0.2)
        assert not created and len(ran) == 3 and finish_if_complete(study)
    trials = study.get_trials()
    assert sorted(t.params["scale"] for t in trials if t.state.name == "COMPLETE") == GRID  # each point once
    (failed,) = [t for t in trials if t.state.name == "FAIL"]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert failed.number == lost.number and retry.params == {"scale": lost.params["scale"]}
    killed = mlflow.get_run(dead_run)
    assert killed.info.status == "KILLED" and killed.data.tags["steerkit.optuna_state"] == "FAIL"
    assert "worker gone" in killed.data.tags["steerkit.stale_trial"]
    children = {c.info.run_id: c.info.status for c in tracking.child_runs(parent)}
    assert children.pop(dead_run) == "KILLED" and sorted(children.values()) == ["FINISHED"] * 3
    assert retry.user_attrs[RUN_ID_ATTR] != dead_run and children[retry.user_attrs[RUN_ID_ATTR]] == "FINISHED"
