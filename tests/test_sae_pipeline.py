"""The SAE steering pipeline end to end on tiny-llama: baseline -> find_features -> select_coefficients ->
evaluate_steering, each a FINISHED run with its artifacts; the coefficient-0 identity; bad input -> FAILED.

A random tiny model writes bytes, never Python, so every task would fail and no feature could separate
outcomes. The chain test therefore replaces code *extraction* (only) by a stand-in that turns a completion
into the reference solution or a syntax error depending on a hash of the completion text: generation,
steering hooks, the sandboxed execution of real programs, tracking and statistics all run for real, outcomes
are mixed, steering that changes a completion can flip its outcome, and an unchanged completion cannot.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pytest
import torch

from steerkit import tracking
from steerkit.core.activations import last_token_residuals
from steerkit.core.generation import generate
from steerkit.corpora.mbpp import Problem, load_problems
from steerkit.errors import SteerkitError
from steerkit.sae import SAE, SAEConfig, codegen
from steerkit.sae.codegen import ExtractedCode
from steerkit.sae.loaders import save_saelens
from tests.conftest import script

ROOT = Path(__file__).resolve().parents[1]

baseline = script("baseline")
evaluate_steering = script("evaluate_steering")
find_features = script("find_features")
select_coefficients = script("select_coefficients")


def _problems(path: Path, n: int = 12) -> Path:
    rows = [
        Problem(
            task_id=k,
            text=f"Write a function that adds {k} to x.",
            code=f"def add_{k}(x):\n    return x + {k}",
            test_list=tuple(f"assert add_{k}({i}) == {i + k}" for i in range(3)),
        ).to_dict()
        for k in range(1, n + 1)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _random_sae(layer: int = 2, d_sae: int = 32, b_dec: torch.Tensor | None = None) -> SAE:
    """Random encoder, unit-norm random decoder rows; `b_dec` (subtracted before encoding) centres the data."""
    gen = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, 64, generator=gen)
    tensors = {
        "W_enc": torch.randn(64, d_sae, generator=gen) / 8,
        "b_enc": torch.zeros(d_sae),
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
        "b_dec": torch.zeros(64) if b_dec is None else b_dec,
    }
    cfg = SAEConfig(d_in=64, d_sae=d_sae, activation="relu", layer=layer, hook="resid_post", model="tiny-llama")
    return SAE.from_tensors(cfg, tensors)


def _stand_in_extraction(completion: str, problem: Problem) -> ExtractedCode:
    if hashlib.sha256(f"salt1:{completion}".encode()).digest()[0] % 2 == 0:
        return ExtractedCode(problem.code + "\n", "fenced", False, 0, 0, True)
    return ExtractedCode("def broken(:\n", "raw", False, 0, 0, False)


def _run(run_id: str):
    return mlflow.get_run(run_id)


def _latest(entry_point: str):
    (run,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`steerkit.entry_point` = '{entry_point}'",
        output_format="list",
    )
    return run


def test_coefficient_zero_is_the_identity_and_nonzero_steers(tiny):
    lm = tiny("llama")
    sae = _random_sae()
    prompts = ["def add(a, b):\n", "Write a function that reverses a list.\n"]
    plain = generate(lm, prompts, max_new_tokens=8, progress=False)
    zero = generate(lm, prompts, interventions=[sae.steering(3, 0.0)], max_new_tokens=8, progress=False)
    strong = generate(lm, prompts, interventions=[sae.steering(3, 30.0)], max_new_tokens=8, progress=False)
    assert [g.token_ids for g in zero] == [g.token_ids for g in plain]
    assert [g.token_ids for g in strong] != [g.token_ids for g in plain]


def test_chain_on_tiny_llama(tracking_dir, monkeypatch, tiny):
    monkeypatch.setattr(codegen, "extract_code", _stand_in_extraction)
    problems = _problems(tracking_dir / "problems.jsonl")
    prompts = [codegen.build_prompt(p) for p in load_problems(problems).problems]
    centre = last_token_residuals(tiny("llama"), prompts, 2, chat=True)[2].mean(0)  # features fire on ~half
    sae_dir = save_saelens(_random_sae(b_dec=centre), tracking_dir / "sae")
    common = ["--experiment", "chain"]
    baseline.main(
        ["--model", "tiny-llama", "--problems", str(problems), "--fractions", "0.5,0.25,0.25"]
        + ["--max-new-tokens", "6", "--batch-size", "8", "--timeout", "5"]
        + common
    )
    b = _latest("baseline")
    assert b.info.status == "FINISHED" and b.data.metrics["n_tasks"] == 12
    assert 0 < b.data.metrics["n_passed"] < 12
    table = tracking.load_run_table(b.info.run_id, "samples.json")
    assert len(table) == 12 and {"task_id", "split", "prompt", "completion", "code", "status", "error_kind"} <= set(
        table[0]
    )
    assert "baseline_results" in [d.dataset.name for d in b.inputs.dataset_inputs]
    splits = tracking.load_jsonl_artifact(b.info.run_id, "splits.json")[0]["task_ids"]
    assert sorted(sum(splits.values(), [])) == list(range(1, 13)) and len(splits["hyper"]) == 3

    with pytest.raises(SteerkitError, match="trained at"):
        find_features.main(["--baseline-run-id", b.info.run_id, "--sae", str(sae_dir), "--layer", "1"] + common)
    find_features.main(
        ["--baseline-run-id", b.info.run_id, "--sae", str(sae_dir), "--generic-max-rate", "1.0"]
        + ["--generic-limit", "6", "--top-n", "3", "--control-pool", "5"]
        + common
    )
    f = [
        r
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
        if r.data.tags.get("steerkit.entry_point") == "find_features" and r.info.status == "FINISHED"
    ][0]
    feats = tracking.load_jsonl_artifact(f.info.run_id, "features.json")[0]
    assert feats["family_size"] == f.data.metrics["family_size"] > 0 and feats["layer"] == 2
    assert feats["top"]["correct"] and feats["top"]["incorrect"] and len(feats["dom"]["vector"]) == 64
    assert "dom_direction.npy" in {a.path for a in mlflow.MlflowClient().list_artifacts(f.info.run_id)}

    select_coefficients.main(
        ["--features-run-id", f.info.run_id, "--grid", "1,30", "--min-similarity", "0", "--max-syntax-error", "1"]
        + ["--n-examples", "1"]
        + common
    )
    s = _latest("select_coefficients")
    assert s.info.status == "FINISHED" and s.data.metrics["identity_flips"] == 0
    assert s.data.metrics["identity_identical"] == s.data.metrics["identity_n"] == 3
    selected = tracking.load_jsonl_artifact(s.info.run_id, "selected_coefficients.json")[0]["selected"]
    assert set(selected) == {"correct", "incorrect"} and all(v["coefficient"] in (1.0, 30.0) for v in selected.values())
    norm = s.data.metrics["resid_norm_mean"]
    assert norm > 0 and all(  # the dose next to the residual stream, logged with the raw coefficient
        v["relative_coefficient"] == pytest.approx(v["coefficient"] * v["norm"] / norm) for v in selected.values()
    )
    assert all(isinstance(v["effective"], bool) and 0 <= v["effect_p"] <= 1 for v in selected.values())
    # 3 hyper tasks: the smallest one-sided exact McNemar p is 0.125 > alpha, so no coefficient can be effective,
    # and the run says so (and still finishes)
    assert s.data.tags["steerkit.no_effective_coefficient"] == "correct,incorrect"
    assert "no effective coefficient" in s.data.tags["steerkit.no_effective_reason"]
    assert s.data.metrics["correct_effective"] == 0 and not selected["correct"]["effective"]
    children = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`steerkit.optuna_trial` != ''", output_format="list"
    )
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert {"samples.json", "examples.md"} <= {
        a.path for a in mlflow.MlflowClient().list_artifacts(children[0].info.run_id)
    }

    argv = ["--selection-run-id", s.info.run_id, "--allow-underpowered", "true", "--allow-ineffective", "true"]
    evaluate_steering.main(argv + common)
    e = _latest("evaluate_steering")
    m = e.data.metrics
    assert e.data.tags["steerkit.allow_ineffective"] == "correct,incorrect"
    assert e.info.status == "FINISHED" and m["family_size"] == 10 and m["identity_flips"] == 0
    assert m["correct_relative_coefficient"] == pytest.approx(
        m["correct_coefficient"] * selected["correct"]["norm"] / m["resid_norm_mean"]
    )
    for arm in ("correct", "correct_control_feature", "correct_control_random", "incorrect_control_random"):
        assert 0.0 <= m[f"{arm}_vs_baseline_p"] <= 1.0
    assert {"samples.json", "evaluation.json", "rates.png"} <= {
        a.path for a in mlflow.MlflowClient().list_artifacts(e.info.run_id)
    }
    rows = tracking.load_run_table(e.info.run_id, "samples.json")
    assert len(rows) == 3 * 7  # 3 validation tasks x (2 directions x 3 arms + identity)


BAD_INPUT = [
    (select_coefficients, ["--features-run-id", "x", "--grid", "0,1"], "grid coefficients must be > 0"),
    (select_coefficients, ["--features-run-id", "x", "--directions", "up"], "directions"),
    (evaluate_steering, ["--selection-run-id", "0" * 32], "unknown run id"),
    (baseline, ["--model", "tiny-llama", "--fractions", "0.5,0.4"], "fractions"),
]


def test_bad_input_fails_the_run(tracking_dir):
    for module, argv, message in BAD_INPUT:  # one tracking store for all cases (creating one is slow)
        with pytest.raises(SteerkitError, match=message):
            module.main(argv + ["--experiment", "bad"])
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == len(BAD_INPUT) and all(r.info.status == "FAILED" for r in runs)
