"""The SAE pipeline's trust checks: effect vs coefficient 0, coefficients relative to the residual norm, the
baseline re-run in the steered batch (a timeout is a missing pair, not a flip), and the refusal to evaluate a
direction without an effective coefficient."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from scipy.stats import binomtest
from statsmodels.stats.multitest import multipletests

from steerkit import tracking
from steerkit.core.positions import ALL
from steerkit.corpora.mbpp import Problem
from steerkit.errors import SteerkitError
from steerkit.sae import SAE, SAEConfig, codegen, pipeline
from steerkit.sae.arms import Arm, arm_metrics
from steerkit.sae.codegen import ExtractedCode
from steerkit.sae.effect import NO_EFFECT, choose, mean_residual_norm
from steerkit.sae.selection import Context
from tests.conftest import script

evaluate_steering = script("evaluate_steering")
RULE = {"objective": "correction_rate", "min_similarity": 0.4, "max_syntax_error": 0.3, "alpha": 0.05}


def _trial(coef: float, objective: float, b: int, c: int) -> dict:
    return {
        "coefficient": coef,
        "correction_rate": objective,
        "char_similarity": 0.9,
        "syntax_error_rate": 0.0,
        "vs_zero_b": b,
        "vs_zero_c": c,
    }


def test_a_raw_improvement_is_not_an_effect_without_the_test():
    # 2 tasks fixed, none broken: a positive raw difference, but one-sided exact p = 0.25 (binomial, 2 of 2)
    choice, trials = choose([_trial(30.0, 0.9, 2, 0)], direction="correct", **RULE, direction_norm=1, resid_norm=2)
    assert trials[0]["effect_p"] == pytest.approx(binomtest(2, 2, 0.5, alternative="greater").pvalue)
    assert not choice["effective"] and choice["reason"].startswith(NO_EFFECT)
    assert choice["coefficient"] == 30.0  # kept for a user who overrides the refusal


def test_selection_picks_among_coefficients_that_beat_coefficient_zero():
    trials = [_trial(30.0, 0.9, 2, 0), _trial(10.0, 0.8, 9, 1), _trial(100.0, 0.95, 5, 5)]
    choice, marked = choose(trials, direction="correct", **RULE, direction_norm=2.0, resid_norm=8.0)
    p = [binomtest(b, b + c, 0.5, alternative="greater").pvalue for b, c in [(2, 0), (9, 1), (5, 5)]]
    _, q, _, _ = multipletests(p, method="fdr_bh")
    assert [t["effect_q"] for t in marked] == pytest.approx(list(q))
    assert [t["effective"] for t in marked] == [False, True, False]
    assert choice["coefficient"] == 10.0 and choice["effective"] and choice["effect_family_size"] == 3
    assert choice["relative_coefficient"] == pytest.approx(10.0 * 2.0 / 8.0)
    down, _ = choose(
        [_trial(10.0, 0.8, 0, 9)],
        direction="incorrect",
        **{**RULE, "objective": "correction_rate"},
        direction_norm=1,
        resid_norm=1,
    )
    assert down["effective"]  # the incorrect feature's goal is fewer passes: the test is one-sided the other way


def test_pruned_coefficients_stay_in_the_bh_family_at_p_one():
    # Two completed coefficients and two a pruner stopped: BH runs over four hypotheses (the pruned at p = 1), so
    # stopping a coefficient after seeing its data cannot shrink the family.
    trials = [_trial(10.0, 0.8, 9, 1), _trial(30.0, 0.9, 6, 1)]
    choice, marked = choose(trials, direction="correct", **RULE, direction_norm=1, resid_norm=1, not_run=2)
    p = [binomtest(b, b + c, 0.5, alternative="greater").pvalue for b, c in [(9, 1), (6, 1)]]
    _, q, _, _ = multipletests(p + [1.0, 1.0], method="fdr_bh")
    assert [t["effect_q"] for t in marked] == pytest.approx(list(q[:2]))
    assert choice["effect_family_size"] == 4


def test_mean_residual_norm_matches_hidden_states(tiny):
    lm = tiny("llama")
    prompts = ["def add(a, b):\n    return", "Write a function that reverses a list."]
    got = mean_residual_norm(lm, prompts, 1, "resid_post", chat=False)
    norms = []
    for text in prompts:
        ids = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = lm.model(**ids, output_hidden_states=True).hidden_states[2][0]  # block 1's output
        norms.append(hidden[1:].norm(dim=-1))
    assert got == pytest.approx(float(torch.cat(norms).mean()), rel=1e-5)


def _sae() -> SAE:
    gen = torch.Generator().manual_seed(0)
    w_dec = torch.randn(8, 64, generator=gen)
    tensors = {"W_enc": torch.randn(64, 8, generator=gen), "b_enc": torch.zeros(8), "b_dec": torch.zeros(64)}
    cfg = SAEConfig(d_in=64, d_sae=8, activation="relu", layer=1, hook="resid_post", model="tiny-llama")
    return SAE.from_tensors(cfg, {**tensors, "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True)})


def test_baseline_reruns_in_the_steered_batch_and_a_timeout_is_missing(tiny, monkeypatch):
    problems = [
        Problem(
            task_id=k,
            text=f"Add {k} to x.",
            code=f"def add_{k}(x):\n    return x + {k}\n",
            test_list=(f"assert add_{k}(1) == {1 + k}",),
        )
        for k in (1, 2)
    ]
    # the steered program is wrong for both tasks; task 2's baseline passed when it was recorded but its program
    # now hangs (as a slow program under load would): a missing pair, not a corruption
    monkeypatch.setattr(
        codegen,
        "extract_code",
        lambda text, p: ExtractedCode(f"def add_{p.task_id}(x):\n    return x\n", "fenced", False, 0, 0, True),
    )
    slow = "import time\ntime.sleep(30)\n"
    base = {
        p.task_id: {
            "task_id": p.task_id,
            "passed": True,
            "status": "passed",
            "completion": "c",
            "token_ids": [1],
            "code": p.code if p.task_id == 1 else slow,
        }
        for p in problems
    }
    batches: list[list[str]] = []
    real = codegen.run_many

    def spy(jobs, **kw):  # type: ignore[no-untyped-def]
        batches.append([j.code for j in jobs])
        return real(jobs, **kw)

    monkeypatch.setattr(codegen, "run_many", spy)
    bcfg = {"max_new_tokens": 3, "batch_size": 2, "chat": False, "stop_at_fence": False, "timeout": 1.0, "workers": 2}
    ctx = Context(tiny("llama"), problems, base, bcfg, ALL)
    rows = ctx.run(Arm("correct", _sae(), feature=0), 0.0, "x")
    assert len(batches) == 1 and set(batches[0]) >= {problems[0].code, slow, "def add_1(x):\n    return x\n"}
    by_id = {r["task_id"]: r for r in rows}
    assert by_id[1]["paired"] and by_id[1]["corrupted"] and by_id[1]["baseline_status"] == "passed"
    assert not by_id[2]["paired"] and not by_id[2]["corrupted"] and by_id[2]["baseline_status"] == "timeout"
    m = arm_metrics(rows)
    assert (m["corrupted"], m["n_baseline_pass"], m["n_missing"], m["corruption_rate"]) == (1, 1, 1, 1.0)


def test_evaluate_steering_refuses_a_selection_without_an_effective_coefficient(tracking_dir):
    selected = {"correct": {"coefficient": 10.0, "effective": False, "reason": NO_EFFECT}}
    with tracking.tracked_run("select_coefficients", {}, experiment="e"):
        tracking.log_text(json.dumps({"selected": selected, "features_run_id": "0" * 32}), pipeline.SELECTED_FILE)
        sel_id = tracking.active_run_id()
    with pytest.raises(SteerkitError, match=f"selection run {sel_id} has no effective coefficient for correct"):
        evaluate_steering.main(["--selection-run-id", sel_id, "--experiment", "e"])
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    failed = [r for r in runs if r.data.tags.get("steerkit.entry_point") == "evaluate_steering"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    # with the override it gets past the refusal (and stops at the made-up features run)
    with pytest.raises(SteerkitError, match="0" * 32):
        evaluate_steering.main(["--selection-run-id", sel_id, "--allow-ineffective", "true", "--experiment", "e"])


def test_an_effective_but_infeasible_coefficient_is_not_selected_as_effective():
    strong = {**_trial(300.0, 0.9, 9, 0), "char_similarity": 0.1}  # beats coefficient 0, below the similarity floor
    choice, _ = choose([strong, _trial(1.0, 0.0, 0, 0)], direction="correct", **RULE, direction_norm=1, resid_norm=1)
    assert not choice["effective"] and "1 beat coefficient 0 but none is feasible" in choice["reason"]
    assert choice["coefficient"] == 1.0 and choice["effect_p"] == 1.0


def test_pregenerated_coefficients_run_what_each_coefficient_generates_alone(tiny, monkeypatch):
    """`Context.pregenerate` (every grid coefficient in one `generate_arms` pass, decoded as one batch) gives each
    coefficient's `run` exactly the rows of its own `generate` call, and the pass is not repeated per coefficient."""
    problems = [
        Problem(task_id=k, text=f"Add {k} to x.", code=f"def add_{k}(x):\n    return x + {k}\n",
                test_list=(f"assert add_{k}(1) == {1 + k}",))
        for k in range(1, 6)
    ]  # fmt: skip
    base = {
        p.task_id: {"task_id": p.task_id, "passed": True, "status": "passed", "completion": "c", "token_ids": [1],
                    "code": p.code}
        for p in problems
    }  # fmt: skip
    bcfg = {"max_new_tokens": 6, "batch_size": 2, "chat": False, "stop_at_fence": False, "timeout": 5.0, "workers": 2}
    arm, coefs = Arm("correct", _sae(), feature=0), [0.5, 40.0]
    alone = Context(tiny("llama"), problems, base, bcfg, ALL)
    rows = {c: alone.run(arm, c, "x") for c in coefs}
    together = Context(tiny("llama"), problems, base, bcfg, ALL)
    together.pregenerate(arm, coefs)
    monkeypatch.setattr(codegen, "generate", None)  # a pregenerated coefficient must not generate again
    for c in coefs:
        assert together.run(arm, c, "x") == rows[c]
    assert together.generated == {}
    completions = {c: [r["steered_completion"] for r in rows[c]] for c in coefs}
    assert completions[0.5] != completions[40.0]  # precondition: the coefficient changes completions
