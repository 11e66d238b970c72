"""calibrate_dose on generate_n50's own edge rule (calibration split) -> generate_n50 scale=from:RUN (eval split)."""

from __future__ import annotations

import sys

import mlflow
import pytest

from steerkit import tracking
from steerkit.attention.edge_rules import reads_continuation
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.corpora.splits import ids_digest, select_split
from tests.conftest import CORPUS_N50, all_runs, script

calibrate_dose = script("calibrate_dose")
generate_n50 = script("generate_n50")

RULE = "generated_to_doctest"  # edits generated queries only: the last-prompt-token KL is 0 at every scale
GEN = ["--model", "tiny-llama", "--layer", "2", "--limit", "2", "--max-new-tokens", "5", "--batch-size", "2"]
GEN += ["--corpus", str(CORPUS_N50), "--allow-underpowered", "true"]


def _calibrate(tracking_dir, *extra: str) -> str:
    argv = ["--model", "tiny-llama", "--layer", "2", "--limit", "2", "--grid", "1.0,4.0", "--max-new-tokens", "5"]
    argv += ["--edge-rule", RULE, "--target-share", "0.99", "--storage", f"sqlite:///{tracking_dir}/optuna.db"]
    argv += ["--corpus", str(CORPUS_N50)]
    calibrate_dose.main([*argv, *extra])
    (run,) = [r for r in all_runs() if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "calibrate_dose"]
    assert run.info.status == "FINISHED"
    return str(run.info.run_id)


def _fails(monkeypatch, capsys, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["generate_n50", *argv])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(generate_n50.main)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and all_runs()[-1].info.status == "FAILED"
    return err[0]


def test_calibrated_scale_reaches_generate_n50_with_the_dose_applied(tracking_dir, monkeypatch, capsys):
    cal_id = _calibrate(tracking_dir)
    cal = mlflow.get_run(cal_id)
    calibration = select_split(load_prompt_corpus(CORPUS_N50).prompts, "calibration", 2)
    assert cal.data.params["resolved_split"] == "calibration" and cal.data.params["edge_rule"] == RULE
    assert cal.data.params["prompt_ids_digest"] == ids_digest([p.id for p in calibration])
    assert cal.data.metrics["identity_max_abs_logit_diff"] == 0.0 and cal.data.metrics["kl_at_scale_1"] == 0.0
    chosen = mlflow.artifacts.load_dict(f"runs:/{cal_id}/chosen_scale.json")
    trials = [r for r in all_runs() if r.data.tags.get("mlflow.parentRunId") == cal_id]
    by_scale = {t.data.metrics["dose"]: t.data.metrics for t in trials}
    assert by_scale[4.0]["steered_level"] > by_scale[1.0]["steered_level"] and chosen["scale"] == 4.0
    assert chosen["edge_rule"] == RULE and chosen["split"] == "calibration"

    generate_n50.main([*GEN, "--edge-rule", RULE, "--scale", f"from:{cal_id}"])
    run = all_runs()[-1]
    m, params = run.data.metrics, run.data.params
    assert run.info.status == "FINISHED" and params["scale_source"] == cal_id
    assert float(params["resolved_scale"]) == m["dose"] == 4.0 and params["split"] == "eval"
    table = mlflow.load_table("samples.json", run_ids=[run.info.run_id])
    assert set(table["id"]).isdisjoint(
        p.id for p in select_split(load_prompt_corpus(CORPUS_N50).prompts, "calibration")
    )
    assert params["prompt_ids_digest"] == ids_digest(list(table["id"]))
    # the old figure cannot see this rule's dose; the teacher-forced one does
    assert m["kl_last_token_max"] == 0.0 and m["kl_generated_mean"] > 0.0
    assert m["dose_share_steered"] > m["dose_share_baseline"] > 0.0
    dose = mlflow.load_table("dose.json", run_ids=[run.info.run_id])
    assert sorted(dose["id"]) == sorted(table["id"])

    line = _fails(monkeypatch, capsys, [*GEN, "--scale", f"from:{cal_id}"])  # default rule signature_to_doctest
    assert line == (
        f"error: scale='from:{cal_id}': calibrate_dose run {cal_id} has edge_rule='{RULE}', "
        "this run needs 'signature_to_doctest'"
    )
    line = _fails(monkeypatch, capsys, [*GEN, "--edge-rule", RULE, "--scale", f"from:{cal_id}", "--layer", "1"])
    assert line.startswith(f"error: scale='from:{cal_id}'") and "resolved_layer='2'" in line
    line = _fails(monkeypatch, capsys, [*GEN, "--edge-rule", RULE, "--scale", f"from:{cal_id}", "--split", "all"])
    assert line.startswith(f"error: scale='from:{cal_id}': calibrated on split 'calibration'")
    line = _fails(monkeypatch, capsys, [*GEN, "--scale", "from:0123456789abcdef0123456789abcdef"])
    assert (
        line
        == "error: scale='from:0123456789abcdef0123456789abcdef': unknown run id '0123456789abcdef0123456789abcdef'"
    )


def test_a_carry_over_with_another_continuation_is_refused_naming_the_setting(tracking_dir, monkeypatch, capsys):
    """calibrate_dose averaged the share over the queries of a greedy 5-token continuation; a generate_n50 run
    generating 6 tokens, or sampling, reads its dose over other tokens: refused, one line naming the setting."""
    cal_id = _calibrate(tracking_dir)
    assert mlflow.get_run(cal_id).data.params["continuation_tokens"] == "5"
    argv = [*GEN, "--edge-rule", RULE, "--scale", f"from:{cal_id}"]
    line = _fails(monkeypatch, capsys, [*argv, "--max-new-tokens", "6"])
    assert line == (
        f"error: scale='from:{cal_id}': calibrate_dose run {cal_id} measured the share over continuation_tokens='5', "
        "this run generates max_new_tokens=6 (calibrate with -P max_new_tokens=6, or pass it here)"
    )
    line = _fails(monkeypatch, capsys, [*argv, "--temperature", "0.7"])
    assert line.startswith(f"error: scale='from:{cal_id}': calibrate_dose run {cal_id} measured the share over greedy")
    assert "temperature=0.7" in line
    # the rule that reads the continuation through its signature range is checked too; a prompt-only rule is not
    assert reads_continuation("signature_to_doctest") and reads_continuation(RULE)
    assert not reads_continuation("reference")


def test_edge_rule_mode_refuses_a_bad_target_share(tracking_dir):
    with pytest.raises(Exception, match="target_share"):
        _calibrate(tracking_dir, "--target-share", "1.5")
