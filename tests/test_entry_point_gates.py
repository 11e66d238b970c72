"""The gates every hypothesis-testing entry point passes before it spends compute: a design that cannot reject is
refused unless `allow_underpowered=true` (which tags the run), and a non-zero identity figure fails the run.
Each ends FAILED with a one-line error and exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from steerkit import tracking
from tests.conftest import all_runs, script

ROOT = Path(__file__).resolve().parents[1]

entropy_seeds = script("entropy_seeds")
knockout_generate = script("knockout_generate")

DOCTEST = ["--model", "tiny-llama", "--limit", "3", "--layers", "0,1", "--max-new-tokens", "4"]
DOCTEST += ["--corpus", str(ROOT / "corpus" / "doctest_prompts.json")]
ENTROPY = ["--model", "tiny-llama", "--corpus", str(ROOT / "corpus" / "entropy_prompts.json")]


def _fails(monkeypatch, capsys, module, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["x", *argv])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(module.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    assert all_runs()[-1].info.status == "FAILED"
    return err[-1]


@pytest.mark.parametrize(
    ("module", "argv", "floor"),
    [
        (knockout_generate, DOCTEST, "mcnemar_exact with n=3"),  # family 4 contrasts x 5 scores
        (entropy_seeds, ENTROPY, "wilcoxon_exact with n=4"),  # the defaults: 4 prompts can never reject
    ],
)
def test_default_refuses_a_design_that_cannot_reject(tracking_dir, monkeypatch, capsys, module, argv, floor):
    line = _fails(monkeypatch, capsys, module, argv)
    assert "design cannot reject" in line and floor in line and "allow_underpowered=true" in line
    run = all_runs()[-1]
    assert run.data.params["design_can_reject"] == "False" and "steerkit.underpowered" not in run.data.tags
    assert not {"resolved_layers", "n_cells"} & set(run.data.params)  # refused before anything ran


def test_a_nonzero_identity_figure_fails_the_run(tracking_dir, monkeypatch, capsys):
    monkeypatch.setattr(knockout_generate, "max_abs_diff", lambda plain, ident: 1e-7)  # identity arm "differs"
    line = _fails(monkeypatch, capsys, knockout_generate, [*DOCTEST, "--allow-underpowered", "true"])
    assert line == "error: identity control failed: identity_max_abs_logit_diff = 1e-07 (must be exactly 0)"
    run = all_runs()[-1]
    assert run.data.tags["steerkit.underpowered"] == "true"
    assert run.data.metrics["identity_max_abs_logit_diff"] == pytest.approx(1e-7)  # logged, then enforced
    assert "n_rejected" not in run.data.metrics  # stopped before generating
