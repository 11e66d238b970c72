"""Scale-out: 3 search_worker processes share one Optuna study in PostgreSQL and log to one `mlflow server`.

The PostgreSQL test needs a server: `.ci/run` starts a throwaway one and exports STEERKIT_TEST_POSTGRES_URL
(postgresql://user@host:port/db of a role that may create databases); without it the test is skipped. The claim
protocol itself is also checked in-process on sqlite, which needs nothing.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from steerkit import tracking
from steerkit.errors import SteerkitError
from steerkit.search import (
    PARENT_ATTR,
    StudyConfig,
    claim_waiting_trial,
    finish_if_complete,
    heartbeat,
    open_grid_study,
    run_grid_worker,
    shared_storage,
)

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("STEERKIT_TEST_POSTGRES_URL", "")
GRID = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]


def _grid_config(storage: str, name: str = "s", grid: list[float] = GRID) -> StudyConfig:
    return StudyConfig(study_name=name, storage=storage, sampler="grid", search_space={"scale": grid})


def test_enqueued_grid_is_claimed_once_and_never_grows(tracking_dir):
    """Two 'workers' (two Study handles) on one sqlite study: disjoint claims, a drained queue adds nothing."""
    storage = f"sqlite:///{tracking_dir}/optuna.db"
    made: list[str] = []
    with tracking.tracked_run("scaleout_test", {}, experiment="scaleout"):
        parent = tracking.create_run("scaleout", "study", {"steerkit.entry_point": "search_study"})
        sa, sb = shared_storage(storage), shared_storage(storage)
        a, created_a = open_grid_study(_grid_config(storage), lambda: made.append(parent) or parent, storage=sa)
        b, created_b = open_grid_study(_grid_config(storage), lambda: made.append("again") or "again", 5, sb)
        assert (created_a, created_b) == (True, False) and made == [parent]
        claimed = [claim_waiting_trial(a, sa), claim_waiting_trial(b, sb), claim_waiting_trial(a, sa)]
        assert len({t.number for t in claimed}) == 3
        for trial in claimed:
            a.tell(trial, trial.suggest_float("scale", 1.0, 5.0))
        assert not finish_if_complete(b)  # six points still waiting
        ran = run_grid_worker(lambda t: t.suggest_float("scale", 1.0, 5.0), b, sb)
        assert len(ran) == 6 and claim_waiting_trial(a, sa) is None and run_grid_worker(lambda t: 0.0, a, sa) == []
        assert finish_if_complete(a)
    trials = a.get_trials()
    assert sorted(t.params["scale"] for t in trials) == GRID and {t.state.name for t in trials} == {"COMPLETE"}
    children = tracking.child_runs(parent)
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)  # the worker's trials
    assert mlflow.get_run(parent).info.status == "FINISHED"
    with pytest.raises(SteerkitError, match="holds grid"):
        open_grid_study(_grid_config(storage, grid=[1.0, 2.0]), lambda: "x", wait_s=1)


def test_a_dead_workers_trial_is_failed_by_heartbeat_and_its_point_completed_once(tracking_dir):
    """A worker claims a trial, beats once and dies (no more heartbeats); after the grace period another worker
    fails it, Optuna's retry callback re-enqueues the point, and the grid still completes every point exactly once."""
    storage = f"sqlite:///{tracking_dir}/optuna.db"
    config = _grid_config(storage, grid=[1.0, 2.0, 3.0])
    with tracking.tracked_run("scaleout_test", {}, experiment="scaleout"):
        parent = tracking.create_run("scaleout", "study", {"steerkit.entry_point": "search_study"})
        dead, alive = shared_storage(storage, 1, 2), shared_storage(storage, 1, 2)
        a, _ = open_grid_study(config, lambda: parent, storage=dead)
        lost = claim_waiting_trial(a, dead)
        with heartbeat(dead, a, lost.number):  # one beat, then the "worker" is gone mid-trial
            pass
        b, _ = open_grid_study(config, lambda: "unused", 5, alive)
        ran = run_grid_worker(lambda t: t.suggest_float("scale", 1.0, 3.0), b, alive, poll_s=0.2)
    trials = b.get_trials()
    complete = [t.params["scale"] for t in trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == [1.0, 2.0, 3.0]  # every point once, the lost one included
    (failed,) = [t for t in trials if t.state.name == "FAIL"]
    assert failed.number == lost.number and len(ran) == 3
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.state.name == "COMPLETE" and retry.params == failed.system_attrs["fixed_params"]  # the lost point
    assert finish_if_complete(b)


def test_a_worker_killed_between_its_claim_and_its_first_beat_does_not_stall_the_study(tracking_dir):
    """The worker dies right after claiming (no `heartbeat` block ran). Optuna only fails RUNNING trials that
    have a heartbeat, so the claim itself must leave one: after the grace period the trial is failed like any
    stale one (before, it stayed RUNNING and every other worker waited for it forever: a CI hang)."""
    import optuna

    storage = f"sqlite:///{tracking_dir}/optuna.db"
    config = _grid_config(storage, grid=[1.0, 2.0])
    with tracking.tracked_run("scaleout_test", {}, experiment="scaleout"):
        parent = tracking.create_run("scaleout", "study", {"steerkit.entry_point": "search_study"})
        dead, alive = shared_storage(storage, 1, 2), shared_storage(storage, 1, 2)
        a, _ = open_grid_study(config, lambda: parent, storage=dead)
        lost = claim_waiting_trial(a, dead)  # ... and the worker is gone
        b, _ = open_grid_study(config, lambda: "unused", 5, alive)
        time.sleep(3.5)  # past the grace period (2 s; the database clock has 1 s resolution on sqlite)
        optuna.storages.fail_stale_trials(b)
        assert b.trials[lost.number].state.name == "FAIL"
        ran = run_grid_worker(lambda t: t.suggest_float("scale", 1.0, 2.0), b, alive, poll_s=0.2)
    complete = [t.params["scale"] for t in b.get_trials() if t.state.name == "COMPLETE"]
    assert sorted(complete) == [1.0, 2.0] and len(ran) == 2 and finish_if_complete(b)


# --- the real thing: PostgreSQL + mlflow server + 3 worker processes -------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _db_url(name: str) -> str:
    base = PG_URL.rsplit("/", 1)[0].replace("postgresql+psycopg2://", "postgresql://")
    return f"{base}/{name}"


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh databases (MLflow's, Optuna's) on the test server, dropped afterwards."""
    import psycopg2

    names = [f"steerkit_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna")]
    conn = psycopg2.connect(PG_URL.replace("postgresql+psycopg2://", "postgresql://"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f"CREATE DATABASE {name}")
        yield _db_url(names[0]), _db_url(names[1])
    finally:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


@pytest.fixture
def mlflow_server(databases, tmp_path) -> Iterator[str]:
    """`mlflow server` on a free port, PostgreSQL-backed, serving artifacts from tmp_path; its URL."""
    port = _free_port()
    backend = databases[0].replace("postgresql://", "postgresql+psycopg2://")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--workers", "1"]
    cmd += ["--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start; see {tmp_path / 'server.log'}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="STEERKIT_TEST_POSTGRES_URL is not set (.ci/run sets it)")
def test_three_workers_share_one_study(databases, mlflow_server, tmp_path):
    storage = databases[1]
    grid = ",".join(str(x) for x in GRID)
    argv = ["--study-name", "scaleout", "--storage", storage, "--objective", "kl", "--grid", grid]
    argv += ["--model", "tiny-llama", "--layer", "2", "--limit", "2", "--batch-size", "2", "--experiment", "scaleout"]
    argv += ["--corpus", str(ROOT / "corpus" / "generation_prompts_n50.json")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, str(ROOT / "experiments" / "search_worker.py"), *argv]
    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(3)]
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT) for f in logs]
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0, 0], [(tmp_path / f"worker{i}.log").read_text()[-2000:] for i in range(3)]

    import optuna

    study = optuna.load_study(study_name="scaleout", storage=storage.replace("postgresql://", "postgresql+psycopg2://"))
    trials = study.get_trials()
    assert collections.Counter(t.params["scale"] for t in trials) == collections.Counter(GRID)  # each point once
    assert {t.state.name for t in trials} == {"COMPLETE"}  # nothing WAITING, RUNNING or FAILED: no trial lost

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(study.user_attrs[PARENT_ATTR])
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials_complete"] == len(GRID)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == len(GRID) and {c.info.status for c in children} == {"FINISHED"}
    by_number = {t.number: t for t in trials}
    for child in children:
        trial = by_number[int(child.data.tags["steerkit.optuna_trial"])]
        assert float(child.data.params["scale"]) == trial.params["scale"]
        assert child.data.metrics["kl"] == pytest.approx(trial.value)
    identity = next(t for t in trials if t.params["scale"] == 1.0)
    assert identity.value == 0.0  # the identity control: same code path, exactly no change

    worker_filter = "tags.`steerkit.entry_point` = 'search_worker'"
    runs = client.search_runs([parent.info.experiment_id], filter_string=worker_filter)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["steerkit.search_parent_run"] for r in runs} == {parent.info.run_id}
    assert sorted(r.data.tags["steerkit.study_creator"] for r in runs) == ["False", "False", "True"]
    assert sum(r.data.metrics["n_trials_run"] for r in runs) == len(GRID)
    workers_used = {c.data.tags["steerkit.worker"] for c in children}
    print(f"trials per worker: {collections.Counter(c.data.tags['steerkit.worker'] for c in children)}")
    assert 1 <= len(workers_used) <= 3


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="STEERKIT_TEST_POSTGRES_URL is not set (.ci/run sets it)")
def test_killed_worker_mid_trial_is_retried_and_every_point_completes_once(databases, mlflow_server, tmp_path):
    """SIGKILL a search_worker while its trial is RUNNING: two workers started later fail it after the grace period
    (heartbeat), run the re-enqueued point, and the study ends with each grid point COMPLETE exactly once."""
    import optuna

    storage = databases[1]
    grid = [1.0, 2.0, 3.0]
    argv = ["--study-name", "killed", "--storage", storage, "--objective", "kl", "--grid", "1.0,2.0,3.0"]
    argv += ["--model", "tiny-llama", "--layer", "2", "--limit", "50", "--batch-size", "1", "--experiment", "killed"]
    argv += ["--heartbeat-s", "1", "--grace-s", "3", "--corpus", str(ROOT / "corpus" / "generation_prompts_n50.json")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, str(ROOT / "experiments" / "search_worker.py"), *argv]
    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(3)]
    victim = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    url = storage.replace("postgresql://", "postgresql+psycopg2://")
    deadline, running = time.monotonic() + 300, []
    while not running and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
        try:
            study = optuna.load_study(study_name="killed", storage=url)
        except KeyError:  # not created yet
            continue
        running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    victim.kill()
    victim.wait()
    assert running, (tmp_path / "worker0.log").read_text()[-2000:]
    lost = running[0].number
    assert optuna.load_study(study_name="killed", storage=url).trials[lost].state.name == "RUNNING"  # killed mid-trial
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT) for f in logs[1:]]
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], [(tmp_path / f"worker{i}.log").read_text()[-2000:] for i in (1, 2)]
    trials = optuna.load_study(study_name="killed", storage=url).get_trials()
    complete = [t.params["scale"] for t in trials if t.state.name == "COMPLETE"]
    assert collections.Counter(complete) == collections.Counter(grid)  # every point once, the lost one included
    assert [t.number for t in trials if t.state.name == "FAIL"] == [lost]
    assert {t.state.name for t in trials} == {"COMPLETE", "FAIL"}  # nothing left RUNNING or WAITING
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    study = optuna.load_study(study_name="killed", storage=url)
    assert client.get_run(study.user_attrs[PARENT_ATTR]).info.status == "FINISHED"
