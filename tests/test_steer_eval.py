"""`steer_eval` end to end: a user's JSONL, direction file and `module:function` scorer, through the entry point and
the notebook API; the logged per-sample table is joined by id and its p-value is statsmodels' / scipy's own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

import steerkit
from steerkit import tracking
from steerkit.corpora.loader import text_id
from tests.conftest import all_runs, script

steer_eval = script("steer_eval")

SCORERS = """
def has_l(output: str, prompt: dict) -> bool:
    return "L" in output


def count_l(output: str, prompt: dict) -> float:
    return float(output.count("L"))


def not_a_bool(output: str, prompt: dict) -> bool:
    return "yes"
"""


@pytest.fixture
def user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """20 prompts (ids in shuffled order), a direction saved as .pt and .npy, a scorer module importable by name."""
    order = [int(i) for i in np.random.default_rng(0).permutation(20)]
    rows = [{"id": f"q{i:02d}", "prompt": f"Item {i}: the value of {i} times three is", "label": i % 2} for i in order]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    torch.save(vector, tmp_path / "v.pt")
    np.save(tmp_path / "v.npy", vector.numpy())
    (tmp_path / "se_user_scorers.py").write_text(SCORERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("se_user_scorers", None)
    return {"prompts": str(tmp_path / "prompts.jsonl"), "pt": str(tmp_path / "v.pt"), "npy": str(tmp_path / "v.npy")}


def _argv(files: dict[str, str], vector: str, scorer: str, *extra: str) -> list[str]:
    base = ["--model", "tiny-llama", "--corpus", files["prompts"], "--intervention", f"direction={files[vector]}"]
    return [*base, "--scorer", scorer, "--layer", "2", "--max-new-tokens", "12", "--fields", "label", *extra]


def _run(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["steer_eval", *argv])
    tracking.entry_point(steer_eval.main)


def _table(run_id: str):
    return mlflow.load_table("samples.json", run_ids=[run_id])


def test_binary_scorer_end_to_end_joined_by_id_and_mcnemar_is_statsmodels(tracking_dir, monkeypatch, user_files):
    _run(monkeypatch, _argv(user_files, "pt", "se_user_scorers:has_l", "--coef", "0.05"))
    run = all_runs()[-1]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["identity_max_abs_logit_diff"] == 0.0
    assert run.data.params["design_test"] == "mcnemar_exact" and run.data.params["design_n"] == "20"
    table = _table(run.info.run_id)
    prompts = {
        json.loads(line)["id"]: json.loads(line) for line in Path(user_files["prompts"]).read_text().splitlines()
    }
    assert sorted(table["id"]) == sorted(prompts)  # every prompt once
    for _, row in table.iterrows():  # each row holds its own prompt and label, whatever the batch order
        assert row["prompt"] == prompts[row["id"]]["prompt"] and row["label"] == prompts[row["id"]]["label"]
    baseline = tracking.load_jsonl_artifact(run.info.run_id, "samples/baseline.jsonl")
    by_id = {r["prompt_id"]: r["text"] for r in baseline}
    assert all(by_id[i] == out for i, out in zip(table["id"], table["baseline_output"]))
    assert list(table["steered_score"]) == ["L" in out for out in table["steered_output"]]
    base, steer = table["baseline_score"].astype(bool), table["steered_score"].astype(bool)
    cells = [[int((base & steer).sum()), int((base & ~steer).sum())], [int((~base & steer).sum()), 0]]
    cells[1][1] = int((~base & ~steer).sum())
    assert cells[0][1] + cells[1][0] > 0  # discordant pairs: the test is not trivially p = 1
    assert run.data.metrics["p_value"] == pytest.approx(mcnemar(cells, exact=True).pvalue, rel=1e-12)
    assert run.data.metrics["mcnemar_b"] + run.data.metrics["mcnemar_c"] == cells[0][1] + cells[1][0]


def test_continuous_scorer_from_npy_wilcoxon_is_scipys(tracking_dir, monkeypatch, user_files):
    _run(monkeypatch, _argv(user_files, "npy", "se_user_scorers:count_l", "--coef", "0.05"))
    run = all_runs()[-1]
    assert run.data.params["design_test"] == "wilcoxon_exact" and run.data.params["resolved_outcome"] == "continuous"
    assert run.data.metrics["identity_max_abs_logit_diff"] == 0.0
    table = _table(run.info.run_id)
    diffs = table["steered_score"].to_numpy(float) - table["baseline_score"].to_numpy(float)
    assert np.any(diffs != 0)
    assert run.data.metrics["p_value"] == pytest.approx(float(sps.wilcoxon(diffs).pvalue), rel=1e-12)
    assert run.data.metrics["effect"] == pytest.approx(float(np.median(diffs)))
    norm = float(np.linalg.norm(np.load(user_files["npy"]).astype(np.float64)))
    assert float(run.data.params["steering_norm_L2"]) == pytest.approx(norm, rel=1e-6)


def test_grid_is_a_study_with_one_nested_run_per_coefficient_and_bh_over_the_grid(
    tracking_dir, monkeypatch, user_files
):
    grid = ["0.0005", "0.05"]
    _run(monkeypatch, _argv(user_files, "npy", "se_user_scorers:has_l", "--grid", ",".join(grid),
                            "--storage", f"sqlite:///{tracking_dir}/optuna.db"))  # fmt: skip
    runs = all_runs()
    parent = next(r for r in runs if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "steer_eval")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.params["design_family_size"] == "2"
    assert sorted(float(t.data.params["coef"]) for t in trials) == [float(g) for g in grid]
    p_values = []
    for trial in sorted(trials, key=lambda t: float(t.data.params["coef"])):
        assert trial.info.status == "FINISHED" and trial.data.tags[tracking.TAG_ENTRY_POINT] == "steer_eval_trial"
        table = _table(trial.info.run_id)
        base, steer = table["baseline_score"].astype(bool), table["steered_score"].astype(bool)
        b, c = int((base & ~steer).sum()), int((~base & steer).sum())
        p_values.append(sps.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)
        assert trial.data.metrics["p_value"] == pytest.approx(p_values[-1], rel=1e-12)
    q_values = multipletests(p_values, method="fdr_bh")[1]
    got = [t.data.metrics["q_value"] for t in sorted(trials, key=lambda t: float(t.data.params["coef"]))]
    assert got == pytest.approx(list(q_values), rel=1e-12)
    path = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="steer_eval.json")
    summary = json.loads(Path(path).read_text())
    assert [s["q_value"] for s in summary] == pytest.approx(list(q_values), rel=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--scorer": "no_such_module_xyz:fn"}, "error: scorer 'no_such_module_xyz:fn': cannot import module"),
        ({"--scorer": "se_user_scorers:missing"}, "module 'se_user_scorers' has no function 'missing'"),
        (
            {"--scorer": "se_user_scorers:not_a_bool"},
            "se_user_scorers:not_a_bool' is binary but returned 'yes'",
        ),
        ({"--scorer": "regex:("}, "error: scorer regex:( is not a valid regular expression"),
        ({"--intervention": "direction=/nonexistent/v.pt"}, "error: direction file not found: /nonexistent/v.pt"),
        ({"--intervention": "vector=x.pt"}, "error: intervention must be KIND=SOURCE with KIND in direction"),
        ({"--coef": "nan"}, "error: coef must be finite, got 'nan'"),
        ({"--layer": "9"}, "error: layer 9 out of range for tiny-llama (0..3)"),
        ({"--outcome": "maybe"}, "error: outcome must be auto, binary or continuous, got 'maybe'"),
        ({"--fields": "reference"}, "no field 'reference'"),
        ({"--limit": "3"}, "error: design cannot reject: mcnemar_exact with n=3"),
    ],
)
def test_bad_input_is_one_line_and_the_run_fails(tracking_dir, monkeypatch, capsys, user_files, change, message):
    argv = _argv(user_files, "pt", "se_user_scorers:has_l", "--coef", "0.05")
    for flag, value in change.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    with pytest.raises(SystemExit) as exc:
        _run(monkeypatch, argv)
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in line and line.startswith("error: ")
    assert all_runs()[-1].info.status == "FAILED"


def test_wrong_size_direction_is_refused(tracking_dir, monkeypatch, capsys, user_files, tmp_path):
    np.save(tmp_path / "short.npy", np.ones(10, dtype=np.float32))
    argv = _argv(user_files, "pt", "se_user_scorers:has_l")
    argv[argv.index("--intervention") + 1] = f"direction={tmp_path / 'short.npy'}"
    with pytest.raises(SystemExit):
        _run(monkeypatch, argv)
    assert "has size 10 but tiny-llama has d_model 64" in capsys.readouterr().err
    assert all_runs()[-1].info.status == "FAILED"


def test_notebook_api_on_strings_with_a_plain_function(tiny):
    prompts = [f"Item {i}: the value of {i} times three is" for i in range(20)]

    def has_l(output: str, prompt: dict) -> bool:
        return "L" in output

    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    from steerkit.steer_eval import Steering

    steering = Steering("add", (2,), vectors={2: vector})
    result = steerkit.evaluate(tiny("llama"), prompts, steering, has_l, coef=0.05, max_new_tokens=12)
    assert result.identity == {"identity_max_abs_logit_diff": 0.0}
    assert sorted(r["id"] for r in result.table) == sorted(text_id(p) for p in prompts)
    frame = result.frame()
    b = int((frame["baseline_score"] & ~frame["steered_score"]).sum())
    c = int((~frame["baseline_score"] & frame["steered_score"]).sum())
    assert result.test.p_value == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0, rel=1e-12)
    assert result.test.effect == pytest.approx((c - b) / 20)
