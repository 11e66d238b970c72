"""generate_n50 end to end on a tiny model: logged run, baseline reuse, bad input, and `mlflow run`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest

from steerkit import tracking
from steerkit.attention import n50_arms
from steerkit.metrics.rust_validity import REASONS
from tests.conftest import all_runs, mlflow_run, script

ROOT = Path(__file__).resolve().parents[1]

generate_n50 = script("generate_n50")

FAST = ["--model", "tiny-llama", "--layer", "2", "--limit", "3", "--max-new-tokens", "6", "--batch-size", "2"]
UNDERPOWERED = ["--allow-underpowered", "true"]  # exact McNemar on 3 or 6 pairs cannot reject (smallest p 0.25)


VALIDITY_COLUMNS = ("valid_test", "test_compiles", "test_fails_on_mutant", "valid_reason")


def _corpus_arg() -> list[str]:
    return ["--corpus", str(ROOT / "corpus" / "generation_prompts_n50.json")]


def test_run_logs_table_metrics_and_seed_format(tracking_dir):
    generate_n50.main(FAST + UNDERPOWERED + _corpus_arg() + ["--scale", "2.0"])
    (run,) = all_runs()
    assert run.info.status == "FINISHED"
    m, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert m["identity_max_abs_logit_diff"] == 0.0
    assert m["total"] == 3 and m["dose"] == 2.0
    assert 0.0 <= m["mcnemar_p"] <= 1.0 and m["kl_last_token_mean"] >= 0.0
    table = mlflow.load_table("samples.json", run_ids=[run.info.run_id])
    assert len(table) == 3
    assert {"id", "category", "baseline_output", "steered_output", "steered_new_test"} <= set(table.columns)
    validity_columns = {f"{arm}_{c}" for arm in ("baseline", "steered") for c in VALIDITY_COLUMNS}
    assert validity_columns <= set(table.columns)
    assert set(table["baseline_valid_reason"]) <= set(REASONS)
    # the primary outcome, executed; the seed's substring outcomes kept as secondary under their old names
    assert params["primary_outcome"] == "valid_test" and params["secondary_outcomes"] == "has_test,new_test"
    assert params["design_primary_outcome"] == "valid_test" and params["design_test"] == "mcnemar_exact"
    assert (params["design_n"], params["design_family_size"], params["design_can_reject"]) == ("3", "1", "False")
    assert tags["steerkit.underpowered"] == "true"
    assert params["sandbox_level"] == tags["steerkit.sandbox_level"] in ("namespaces", "audit_hook_only")
    assert (m["n_scored"], m["n_without_reference"]) == (3, 0)
    assert m["baseline_valid_test"] == sum(table["baseline_valid_test"]) and 0.0 <= m["valid_test_mcnemar_p"] <= 1.0
    for key in ("valid_test_risk_difference", "baseline_test_compiles_rate", "steered_test_fails_on_mutant_rate"):
        assert key in m
    assert {"baseline_new_tests", "new_tests_mcnemar_p", "baseline_preserved", "mcnemar_p"} <= set(m)
    if m["baseline_valid_test_rate"] < 0.05:  # a tiny random model writes no valid test: the floor is flagged
        assert tags["steerkit.ceiling"] == f"floor: baseline_valid_test_rate={m['baseline_valid_test_rate']:.2f} < 0.05"
    result = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/n50_scale_2.0.json")
    assert result["experiment"] == "steering_generation_n50" and len(result["samples"]) == 3
    assert {"baseline_preserved", "steered_preserved", "total", "improvement", "fisher_exact_p"} <= set(
        result["summary"]
    )
    steered = tracking.load_jsonl_artifact(run.info.run_id, "samples/steered.jsonl")
    assert sorted(r["prompt_id"] for r in steered) == sorted(table["id"])  # written in completion order


def test_scale_one_arm_equals_baseline_and_baseline_is_reused(tracking_dir):
    generate_n50.main(FAST + UNDERPOWERED + _corpus_arg() + ["--scale", "1.0"])
    generate_n50.main(FAST + UNDERPOWERED + _corpus_arg() + ["--scale", "3.0"])
    first, second = all_runs()
    assert first.data.metrics["n_identical_outputs"] == 3  # scale 1.0 is the identity, same code path
    assert second.data.tags["steerkit.baseline_source_run"] == first.info.run_id
    assert second.data.tags["steerkit.baseline_key"] == first.data.tags["steerkit.baseline_key"]
    a = tracking.load_jsonl_artifact(first.info.run_id, "samples/baseline.jsonl")
    b = tracking.load_jsonl_artifact(second.info.run_id, "samples/baseline.jsonl")
    assert a == b
    assert second.data.metrics["identity_max_abs_logit_diff"] == 0.0  # computed with the reused baseline's cut


def test_a_baseline_made_with_another_cut_is_not_reused(tracking_dir, monkeypatch):
    """The prefill cut is part of the baseline key: the same run with another declared cut generates its own."""
    generate_n50.main(FAST + UNDERPOWERED + _corpus_arg() + ["--scale", "2.0"])
    real = n50_arms.shared_prefix
    monkeypatch.setattr(n50_arms, "shared_prefix", lambda *a, **k: {p: v - 1 for p, v in real(*a, **k).items()})
    generate_n50.main(FAST + UNDERPOWERED + _corpus_arg() + ["--scale", "2.0"])
    first, second = all_runs()
    assert second.data.tags["steerkit.baseline_key"] != first.data.tags["steerkit.baseline_key"]
    assert second.data.tags["steerkit.baseline_source_run"] == second.info.run_id


def test_reused_baseline_is_joined_by_prompt_id(tracking_dir):
    """Regression: a reused baseline (written in length-sorted batch order) was zipped by position with the
    steered arm (corpus order), so every paired statistic of a later scale compared different prompts."""
    fast = [*FAST[:4], "--limit", "6", "--max-new-tokens", "6", "--batch-size", "2", *UNDERPOWERED]
    generate_n50.main(fast + _corpus_arg() + ["--scale", "2.0"])
    generate_n50.main(fast + _corpus_arg() + ["--scale", "1.0"])
    first, second = all_runs()
    assert second.data.tags["steerkit.baseline_source_run"] == first.info.run_id
    written = tracking.load_jsonl_artifact(first.info.run_id, "samples/baseline.jsonl")
    table = mlflow.load_table("samples.json", run_ids=[second.info.run_id])
    assert [r["prompt_id"] for r in written] != list(table["id"])  # batch order differs from corpus order
    assert second.data.metrics["n_identical_outputs"] == 6  # scale 1.0 is the identity
    first_text = {r["prompt_id"]: r["text"] for r in written}
    for row in table.to_dict("records"):
        assert row["baseline_output"] == first_text[row["id"]]
        assert row["steered_output"] == row["baseline_output"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--model", "no-such-model"], "no-such-model"),
        (["--layer", "99"], "99"),
        (["--scale", "nan"], "nan"),
        (["--edge-rule", "reference"], "causally masked"),
        (["--edge-rule", "bogus"], "bogus"),
        (["--max-new-tokens", "12.5"], "12.5"),
    ],
)
def test_bad_input_one_line_exit_2_run_failed(tracking_dir, monkeypatch, capsys, extra, needle):
    monkeypatch.setattr(sys, "argv", ["generate_n50", *FAST, *UNDERPOWERED, *_corpus_arg(), *extra])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(generate_n50.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # MLflow's own INFO lines may come first
    assert err[-1].startswith("error:") and needle in err[-1]
    assert sum(line.startswith("error:") for line in err) == 1 and not any("Traceback" in line for line in err)
    (run,) = all_runs()
    assert run.info.status == "FAILED"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "malformed corpus"),
        (json.dumps({"prompts": [{"id": "a", "category": "x"}]}), "'prompt'"),
        (
            json.dumps({"prompts": [{"id": "no_fn", "category": "x", "prompt": "/// #[test]\n/// }\nlet x = 1;"}]}),
            "no_fn",
        ),
    ],
)
def test_bad_corpus_fails_the_run(tracking_dir, monkeypatch, capsys, content, needle):
    bad = tracking_dir / "corpus.json"
    bad.write_text(content)
    argv = [*FAST, *UNDERPOWERED, "--corpus", str(bad), "--split", "all"]  # a one-item corpus: no split
    monkeypatch.setattr(sys, "argv", ["generate_n50", *argv])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(generate_n50.main)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert all_runs()[0].info.status == "FAILED"


def _fails_with_one_line(monkeypatch, capsys, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["generate_n50", *argv])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(generate_n50.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum(line.startswith("error:") for line in err) == 1 and not any("Traceback" in line for line in err)
    (run,) = all_runs()
    assert run.info.status == "FAILED"
    return err[-1]


def test_a_design_that_cannot_reject_fails_before_generating(tracking_dir, monkeypatch, capsys):
    """McNemar on 3 pairs can never reach p <= 0.05: refused unless allow_underpowered=true."""
    line = _fails_with_one_line(monkeypatch, capsys, [*FAST, *_corpus_arg()])
    assert line.startswith("error: design cannot reject: mcnemar_exact with n=3") and "allow_underpowered" in line
    (run,) = all_runs()
    assert run.data.params["design_can_reject"] == "False" and "steerkit.underpowered" not in run.data.tags
    assert "model_sha256" not in run.data.params and "total" not in run.data.metrics  # nothing was generated


def test_a_non_zero_identity_fails_the_run(tracking_dir, monkeypatch, capsys):
    """A planted non-identity (the baseline's "scale 1.0" edit is really 1.0001) is caught by the identity figure
    computed from the shared prefill (unhooked suffix vs the baseline arm's first step), and fails the run."""
    real = generate_n50.attention_scale
    monkeypatch.setattr(generate_n50, "attention_scale", lambda r, layer, s: real(r, layer, 1.0001 if s == 1.0 else s))
    line = _fails_with_one_line(monkeypatch, capsys, [*FAST, *UNDERPOWERED, *_corpus_arg()])
    assert line.startswith("error: identity control failed: identity_max_abs_logit_diff = ")
    (run,) = all_runs()
    assert run.data.metrics["identity_max_abs_logit_diff"] > 0 and "total" not in run.data.metrics


def test_a_corpus_without_references_falls_back_to_new_test(tracking_dir):
    raw = json.loads((ROOT / "corpus" / "generation_prompts_n50.json").read_text())
    items = [{k: v for k, v in p.items() if k not in ("reference", "mutant")} for p in raw["prompts"][:3]]
    bare = tracking_dir / "bare.json"
    bare.write_text(json.dumps({"name": "bare", "prompts": items}))
    generate_n50.main([*FAST, *UNDERPOWERED, "--corpus", str(bare), "--split", "all"])  # all 3: one is calibration
    (run,) = all_runs()
    params, tags, m = run.data.params, run.data.tags, run.data.metrics
    assert params["primary_outcome"] == params["design_primary_outcome"] == "new_test"
    assert params["secondary_outcomes"] == "has_test"
    assert params["primary_outcome_fallback"] == tags["steerkit.primary_outcome_fallback"]
    assert (m["n_scored"], m["n_without_reference"]) == (0, 3) and "valid_test_mcnemar_p" not in m
    table = mlflow.load_table("samples.json", run_ids=[run.info.run_id])
    assert table["baseline_valid_test"].isna().all()


def test_mlflow_run_entry_point(tracking_dir):
    params = {"model": "tiny-gpt2", "layer": "1", "limit": "2", "max_new_tokens": "4", "allow_underpowered": "true"}
    proc = mlflow_run("generate_n50", params | {"corpus": str(ROOT / "corpus" / "generation_prompts_n50.json")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = all_runs()
    assert run.info.status == "FINISHED" and run.data.params["model"] == "tiny-gpt2"
    assert run.data.metrics["total"] == 2


def test_mlflow_run_bad_input_marks_failed(tracking_dir):
    proc = mlflow_run("generate_n50", {"model": "no-such-model"})
    assert proc.returncode != 0
    assert "error: unknown model spec 'no-such-model'" in proc.stderr
    (run,) = all_runs()
    assert run.info.status == "FAILED"
