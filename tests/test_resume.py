"""Resume: a generate_n50 run SIGKILLed mid-arm continues to the uninterrupted result without recomputing.

The kill is real (a subprocess, SIGKILL while its steered arm is being flushed batch by batch, found by polling the
artifact file); the resume goes through `mlflow run -P resume=RUN_ID` (the way a user runs it); the reference is
an uninterrupted run of the same command. Refusals and the `steerkit.tracking.resume` rules are checked directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest

from steerkit import tracking
from steerkit.errors import SteerkitError
from steerkit.tracking.resume import (
    RunFacts,
    check_resumable,
    first_difference,
    matches_step,
    project_params,
    same_param,
)
from tests.conftest import script

generate_n50 = script("generate_n50")

ROOT = Path(__file__).resolve().parents[1]


N = 12
FLAGS = {
    "model": "tiny-llama",
    "layer": "2",
    "limit": str(N),
    "batch_size": "2",
    "max_new_tokens": "48",
    "scale": "3.0",
    "reuse_baseline": "false",  # each run computes its own baseline: the reference is independent
    "corpus": str(ROOT / "corpus" / "generation_prompts_n50.json"),
}
ARGV = [x for k, v in FLAGS.items() for x in (f"--{k.replace('_', '-')}", v)]
VOLATILE = {"experiment_seconds", "baseline_records_resumed", "steered_records_resumed"}


def _env(uri: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "PATH": path}


def _lines(path: Path) -> list[str]:
    """The complete lines of a JSONL file (a tail without its newline is a write in progress)."""
    return path.read_text().split("\n")[:-1] if path.exists() else []


def _kill_mid_steered_arm(tmp_path: Path, uri: str) -> tuple[str, list[str]]:
    """Start generate_n50, SIGKILL it once its steered arm has flushed a batch but not all; (run id, lines)."""
    log = (tmp_path / "killed.log").open("w")
    cmd = [sys.executable, str(ROOT / "experiments" / "generate_n50.py"), *ARGV]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(uri), stdout=log, stderr=subprocess.STDOUT)
    deadline, seen = time.monotonic() + 240, 0
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            found = list(tmp_path.glob("mlruns/*/*/artifacts/samples/steered.jsonl"))
            seen = len(_lines(found[0])) if found else 0
            if 0 < seen < N:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert 0 < seen < N, f"missed the steered arm (saw {seen} of {N} lines); see {tmp_path / 'killed.log'}"
    (path,) = tmp_path.glob("mlruns/*/*/artifacts/samples/steered.jsonl")
    return path.parts[-4], _lines(path)


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tracking_uri, tmp_path):
    run_id, before = _kill_mid_steered_arm(tmp_path, tracking_uri)
    assert mlflow.get_run(run_id).info.status == "RUNNING"  # a SIGKILL leaves the run RUNNING; resume recovers it
    params = [x for k, v in FLAGS.items() for x in ("-P", f"{k}={v}")] + ["-P", f"resume={run_id}"]
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "generate_n50", "--env-manager", "local"]
    proc = subprocess.run(cmd + params, env=_env(tracking_uri), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    generate_n50.main(ARGV)  # the uninterrupted reference, same flags
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time ASC"])
    resumed, pointer, reference = runs
    assert resumed.info.run_id == run_id and resumed.info.status == "FINISHED"
    assert pointer.data.tags[tracking.TAG_RESUMED_INTO] == run_id and pointer.info.status == "FINISHED"
    assert resumed.data.tags[tracking.TAG_RESUME_COUNT] == "1"
    assert resumed.data.tags["steerkit.resume_1.status_before"] == "RUNNING"

    # nothing done before the kill was generated again: its lines are kept as they were, then the rest follow
    (path,) = tmp_path.glob(f"mlruns/*/{run_id}/artifacts/samples/steered.jsonl")
    after = _lines(path)
    assert after[: len(before)] == before and len(after) == N
    assert resumed.data.metrics["steered_records_resumed"] == len(before)
    # both arms are generated batch by batch in one pass (baseline, then steered, per batch)
    assert len(before) <= resumed.data.metrics["baseline_records_resumed"] <= len(before) + int(FLAGS["batch_size"])

    # the results equal the uninterrupted run's
    table = mlflow.load_table("samples.json", run_ids=[run_id])
    ref_table = mlflow.load_table("samples.json", run_ids=[reference.info.run_id])
    assert table.to_dict(orient="records") == ref_table.to_dict(orient="records") and len(table) == N

    def experiment_metrics(run: Any) -> dict[str, float]:  # MLflow's system/* samples depend on the machine's load
        return {k: v for k, v in run.data.metrics.items() if k not in VOLATILE and not k.startswith("system/")}

    assert experiment_metrics(resumed) == experiment_metrics(reference)
    base = tracking.load_jsonl_artifact(run_id, "samples/baseline.jsonl")
    assert base == tracking.load_jsonl_artifact(reference.info.run_id, "samples/baseline.jsonl")

    with pytest.raises(SteerkitError, match=f"run {run_id} is FINISHED"):
        generate_n50.main([*ARGV, "--resume", run_id])


def test_resume_refuses_other_params_and_other_entry_points(tracking_dir):
    with pytest.raises(SteerkitError, match="no-such-model"):
        generate_n50.main([*ARGV, "--model", "no-such-model"])
    (failed,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert failed.info.status == "FAILED"
    with pytest.raises(SteerkitError, match=f"run {failed.info.run_id} was logged with scale='3.0', not '2.0'"):
        generate_n50.main([*ARGV, "--model", "no-such-model", "--scale", "2.0", "--resume", failed.info.run_id])
    with pytest.raises(RuntimeError), tracking.tracked_run("other_entry", {}):
        raise RuntimeError("boom")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    (other,) = [r for r in runs if r.info.run_id != failed.info.run_id]
    with pytest.raises(SteerkitError, match="is a 'other_entry' run, not 'generate_n50'"):
        generate_n50.main([*ARGV, "--resume", other.info.run_id])
    with pytest.raises(SteerkitError, match="unknown run id 'nope'"):
        generate_n50.main([*ARGV, "--resume", "nope"])
    # a refused resume leaves the run as it was
    assert mlflow.get_run(failed.info.run_id).info.status == "FAILED"
    assert tracking.TAG_RESUME_COUNT not in mlflow.get_run(failed.info.run_id).data.tags


def test_sample_log_resume_drops_a_cut_tail_and_refuses_a_bad_line(tracking_dir):
    with tracking.tracked_run("log_test", {}):
        rid = tracking.active_run_id()
        tracking.log_text('{"prompt_id": "a"}\n{"prompt_id": "b"}\n{"prompt_', "samples/arm.jsonl")
        log = tracking.SampleLog.resume(rid, "arm")
        assert [r["prompt_id"] for r in log.records] == ["a", "b"]
        log.append({"prompt_id": "c"})
        log.flush()
        assert [r["prompt_id"] for r in tracking.load_jsonl_artifact(rid, "samples/arm.jsonl")] == ["a", "b", "c"]
        assert tracking.SampleLog.resume(rid, "missing").records == []
        tracking.log_text('{"prompt_id": "a"}\nnot json\n{"prompt_id": "b"}\n', "samples/bad.jsonl")
        with pytest.raises(SteerkitError, match="line 2 is not JSON"):
            tracking.SampleLog.resume(rid, "bad")


def test_resume_and_reuse_rules():
    assert same_param("'a b'", "a b") and same_param("x", "x") and not same_param(None, "x")
    assert first_difference({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}, ignore=("b",)) == "c"
    facts = RunFacts("r1", "KILLED", {"steerkit.entry_point": "e", "steerkit.git_commit": "c1"}, {"a": "1"})
    check_resumable(facts, "e", {"a": "1"}, "c1")
    with pytest.raises(SteerkitError, match="git commit 'c1', this code is 'c2'"):
        check_resumable(facts, "e", {"a": "1"}, "c2")
    done = RunFacts("r2", "FINISHED", {"steerkit.entry_point": "e", "steerkit.code_version": "v1"}, {"a": "'x y'"})
    assert matches_step(done, "e", {"a": "x y"}, "v1")
    assert not matches_step(done, "e", {"a": "x y"}, "v2") and not matches_step(done, "e", {"a": "z"}, "v1")
    assert not matches_step(RunFacts("r3", "FAILED", done.tags, done.params), "e", {"a": "x y"}, "v1")
    unknown = RunFacts("r4", "FINISHED", {**done.tags, "steerkit.code_version": "unknown"}, done.params)
    assert not matches_step(unknown, "e", {"a": "x y"}, "unknown")
    full = project_params(ROOT / "MLproject", "generate_n50", {"scale": 2.0})
    assert full["scale"] == "2.0" and full["resume"] == "none" and full["limit"] == "0"
    with pytest.raises(SteerkitError, match="no parameter 'bogus'"):
        project_params(ROOT / "MLproject", "generate_n50", {"bogus": 1})
