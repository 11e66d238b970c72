"""sweep_scales / search_worker: tune on the calibration split, the identity control enforced, the design gated."""

from __future__ import annotations

import sys

import mlflow
import pytest

from steerkit import tracking
from steerkit.attention import n50
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.corpora.splits import ids_digest, select_split
from tests.conftest import CORPUS_N50, all_runs, script

sweep_scales = script("sweep_scales")
search_worker = script("search_worker")

SWEEP = ["--model", "tiny-llama", "--layer", "2", "--grid", "1.0,3.0", "--limit", "2", "--max-new-tokens", "4"]
SWEEP += ["--corpus", str(CORPUS_N50)]
WORKER = ["--model", "tiny-llama", "--layer", "2", "--grid", "1.0,3.0", "--limit", "2", "--batch-size", "2"]
WORKER += ["--corpus", str(CORPUS_N50), "--wait-s", "5"]


def _fails(monkeypatch, capsys, module, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["x", *argv])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(module.main)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    return err[0]


def _broken_identity(*args, **kwargs):
    return {"identity_max_abs_logit_diff": 0.5, "kl_last_token_mean": 0.0, "kl_last_token_max": 0.0}


def test_sweep_tunes_on_the_calibration_split_and_logs_the_applied_dose(tracking_dir):
    sweep_scales.main([*SWEEP, "--storage", f"sqlite:///{tracking_dir}/o.db", "--allow-underpowered", "true"])
    runs = all_runs()
    (parent,) = [r for r in runs if r.data.tags[tracking.TAG_ENTRY_POINT] == "sweep_scales"]
    calibration = select_split(load_prompt_corpus(CORPUS_N50).prompts, "calibration", 2)
    assert parent.data.params["split"] == "calibration"
    assert parent.data.params["prompt_ids_digest"] == ids_digest([p.id for p in calibration])
    assert parent.data.params["design_test"] == "mcnemar_exact" and parent.data.params["design_family_size"] == "1"
    assert parent.data.tags["steerkit.underpowered"] == "true"
    trials = [r for r in runs if r.data.tags[tracking.TAG_ENTRY_POINT] == sweep_scales.TRIAL_ENTRY_POINT]
    for trial in trials:
        table = mlflow.load_table("samples.json", run_ids=[trial.info.run_id])
        assert sorted(table["id"]) == sorted(p.id for p in calibration)
    by_scale = {t.data.metrics["dose"]: t.data.metrics for t in trials}
    assert by_scale[1.0]["kl_generated_mean"] == 0.0 and by_scale[3.0]["kl_generated_mean"] > 0.0
    assert by_scale[3.0]["dose_share_steered"] > by_scale[3.0]["dose_share_baseline"]


def test_sweep_refuses_a_design_that_cannot_reject(tracking_dir, monkeypatch, capsys):
    line = _fails(monkeypatch, capsys, sweep_scales, [*SWEEP, "--storage", f"sqlite:///{tracking_dir}/o.db"])
    assert line.startswith("error: design cannot reject: mcnemar_exact with n=2")
    (run,) = all_runs()
    assert run.info.status == "FAILED" and run.data.params["design_can_reject"] == "False"


def test_sweep_fails_on_a_non_zero_identity_figure(tracking_dir, monkeypatch, capsys):
    """A planted non-identity (every "scale 1.0" edit is really 1.0001): the figure from the one-pass arms'
    shared prefill (unhooked vs the baseline's first step) is non-zero and fails the run."""
    real = n50.attention_scale
    monkeypatch.setattr(n50, "attention_scale", lambda r, layer, s: real(r, layer, 1.0001 if s == 1.0 else s))
    argv = [*SWEEP, "--storage", f"sqlite:///{tracking_dir}/o.db", "--allow-underpowered", "true"]
    line = _fails(monkeypatch, capsys, sweep_scales, argv)
    assert line.startswith("error: identity control failed: identity_max_abs_logit_diff = ")
    parent = [r for r in all_runs() if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "sweep_scales"][0]
    assert parent.info.status == "FAILED"


def test_search_worker_fails_on_a_non_zero_identity_figure(tracking_dir, monkeypatch, capsys):
    monkeypatch.setattr(n50, "identity_and_kl", _broken_identity)
    argv = [*WORKER, "--storage", f"sqlite:///{tracking_dir}/o.db", "--study-name", "ident"]
    line = _fails(monkeypatch, capsys, search_worker, argv)
    assert line == "error: identity control failed: identity_max_abs_logit_diff = 0.5 (must be exactly 0)"
    worker = [r for r in all_runs() if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "search_worker"][0]
    assert worker.info.status == "FAILED"


def test_search_worker_gates_the_new_test_design(tracking_dir, monkeypatch, capsys):
    argv = [*WORKER, "--storage", f"sqlite:///{tracking_dir}/o.db", "--objective", "new_test_gain"]
    line = _fails(monkeypatch, capsys, search_worker, [*argv, "--max-new-tokens", "3"])
    assert line.startswith("error: design cannot reject: mcnemar_exact with n=2")


def test_search_worker_kl_objective_moves_for_an_edge_rule_that_only_edits_generated_queries(tracking_dir):
    """generated_to_doctest edits only queries after the prompt: the old objective (KL at the last prompt token)
    was exactly 0 at every scale. The objective is now the KL over the teacher-forced baseline continuation:
    0 at the identity scale, > 0 at scale 3, while the last-prompt-token KL stays 0 (logged beside it)."""
    argv = [*WORKER, "--storage", f"sqlite:///{tracking_dir}/o.db", "--study-name", "kl-gen", "--objective", "kl"]
    search_worker.main([*argv, "--edge-rule", "generated_to_doctest", "--max-new-tokens", "4"])
    runs = all_runs()
    trials = [r for r in runs if "dose" in r.data.metrics]
    by_scale = {t.data.metrics["dose"]: t.data.metrics for t in trials}
    assert set(by_scale) == {1.0, 3.0}
    assert by_scale[1.0]["kl"] == 0.0 and by_scale[3.0]["kl"] > 0.0
    assert by_scale[3.0]["kl"] == by_scale[3.0]["kl_generated_mean"]
    assert by_scale[3.0]["kl_last_token_mean"] == 0.0 == by_scale[1.0]["kl_last_token_mean"]
    # a KL trial is not a sweep_scales trial (compare_runs would read it for an outcome it does not have)
    assert {t.data.tags[tracking.TAG_ENTRY_POINT] for t in trials} == {search_worker.KL_TRIAL_ENTRY_POINT}
    assert {t.data.params["n_prompts"] for t in trials} == {"2"}
    (worker,) = [r for r in runs if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "search_worker"]
    baseline = tracking.load_jsonl_artifact(worker.info.run_id, "samples/baseline.jsonl")
    calibration = select_split(load_prompt_corpus(CORPUS_N50).prompts, "calibration", 2)
    assert sorted(r["prompt_id"] for r in baseline) == sorted(p.id for p in calibration)
