"""measure_attention / calibrate_dose / steer_attention: statistics against scipy/statsmodels, the measured
weights against a hand-computed softmax(QK^T), and each entry point end to end on a tiny model."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from steerkit import tracking
from steerkit.attention import steer
from steerkit.attention.measure import edge_edit, level, measure
from steerkit.attention.rust_quality import literal_fits, score_rust_test
from steerkit.attention.stats import (
    bh_over_layers,
    compare_languages,
    language_effect_ols,
    ratio_of_means_ci,
)
from steerkit.core.models import load_model
from steerkit.corpora.attention_pairs import DEFAULT_PATH, encode_item, load_attention_corpus
from steerkit.metrics.rust_validity import REASONS
from tests.conftest import all_runs, script

ROOT = Path(__file__).resolve().parents[1]

calibrate_dose = script("calibrate_dose")
measure_attention = script("measure_attention")
steer_attention = script("steer_attention")

CORPUS = load_attention_corpus(DEFAULT_PATH)
CORPUS_ARG = ["--corpus", str(DEFAULT_PATH)]
UNDERPOWERED = ["--allow-underpowered", "true"]  # tiny designs run for their mechanics

# --- statistics ------------------------------------------------------------------------------------------------


def test_bh_family_is_every_layer_and_hypothesis():
    rng = np.random.default_rng(1)
    rows = [{"paired_wilcoxon_p": p1, "ols_language_p": p2} for p1, p2 in rng.uniform(0, 0.1, (6, 2))]
    rows[2]["ols_language_p"] = float("nan")  # an untestable hypothesis leaves the family
    flat = [r[k] for r in rows for k in ("paired_wilcoxon_p", "ols_language_p") if np.isfinite(r[k])]
    assert bh_over_layers(rows) == 11
    _, q, _, _ = multipletests(flat, method="fdr_bh")
    got = [r[k] for r in rows for k in ("paired_wilcoxon_q", "ols_language_q") if np.isfinite(r[k])]
    assert np.allclose(got, q)
    assert np.isnan(rows[2]["ols_language_q"]) and rows[2]["ols_language_reject"] is False


def test_ratio_ci_is_scipys_bootstrap_and_contains_the_ratio():
    rng = np.random.default_rng(2)
    py, rs = rng.gamma(4, 1.0, 15), rng.gamma(2, 1.0, 15)
    ratio, low, high = ratio_of_means_ci(py, rs, n_resamples=500, seed=7)
    direct = sps.bootstrap(
        (py, rs),
        lambda x, y, axis=-1: x.mean(axis=axis) / y.mean(axis=axis),
        n_resamples=500,
        method="percentile",
        rng=np.random.default_rng(7),
    )
    assert ratio == pytest.approx(py.mean() / rs.mean())
    assert (low, high) == pytest.approx((direct.confidence_interval.low, direct.confidence_interval.high))
    assert low < ratio < high


def test_ols_recovers_a_planted_language_effect_under_a_distance_confound():
    rng = np.random.default_rng(3)
    n = 200
    python = np.r_[np.ones(n), np.zeros(n)]
    distance = np.where(python == 1, rng.uniform(10, 30, 2 * n), rng.uniform(20, 60, 2 * n))
    values = 0.05 * python - 0.002 * distance + rng.normal(0, 0.01, 2 * n)
    naive = values[python == 1].mean() - values[python == 0].mean()
    fit = language_effect_ols(values, python, distance)
    assert naive > 0.08  # the confound inflates the raw difference
    assert fit["low"] < 0.05 < fit["high"] and fit["coef"] == pytest.approx(0.05, abs=0.01)
    assert fit["distance"] == pytest.approx(-0.002, abs=0.0005) and fit["p"] < 1e-6


def test_compare_languages_matches_scipy():
    rng = np.random.default_rng(4)
    py, rs = rng.normal(2, 1, 12), rng.normal(1, 1, 12)
    d_py, d_rs = rng.integers(10, 30, 12), rng.integers(20, 60, 12)
    cmp = compare_languages(py, rs, d_py, d_rs, [(i, i) for i in range(12)], n_resamples=0)
    assert cmp.welch_p == pytest.approx(sps.ttest_ind(py, rs, equal_var=False).pvalue)
    assert cmp.mannwhitney_p == pytest.approx(sps.mannwhitneyu(py, rs).pvalue)
    assert cmp.paired_wilcoxon_p == pytest.approx(sps.wilcoxon(py, rs).pvalue)
    assert np.isnan(cmp.ratio_low)


@pytest.mark.skipif(shutil.which("rustc") is None, reason="no rustc on PATH")
def test_steer_attention_scores_the_completed_test_by_running_it():
    """Regression: steer_attention scored completions by text only, so a test asserting a wrong value counted as
    `quality`. Now the completed test runs against the item's reference (and mutant) in the sandbox."""
    (item,) = steer.as_prompt_items([i for i in CORPUS.select("rust", "test") if i.task == "add"])
    completions = {
        "real": "    assert_eq!(add(2, 3), 5);\n}\n",
        "wrong_value": "    assert_eq!(add(2, 3), 6);\n}\n",
        "asserts_nothing": "    let _ = add(2, 3);\n}\n",
        "markers_only": "#[test]\n#[test]\n#[test]\n",
    }
    results = {name: [{"id": item.id, "text": text}] for name, text in completions.items()}
    steer.score_executable([item], results)
    got = {name: (r["valid_test"], r["test_fails_on_mutant"], r["valid_reason"]) for name, (r,) in results.items()}
    assert got == {
        "real": (True, True, "ok"),
        "wrong_value": (False, False, "fails_on_reference"),
        "asserts_nothing": (True, False, "ok"),  # passes, but the mutant passes too
        "markers_only": (False, False, "no_test"),
    }
    assert score_rust_test(completions["wrong_value"], item.code).quality  # the text score is fooled


def test_outcome_plan_falls_back_to_text_without_references():
    items = list(CORPUS.select("rust", "test"))
    assert steer.outcome_plan(items)[0] == "valid_test" and "text_quality" in steer.outcome_plan(items)[1]
    bare = [dataclasses.replace(i, reference=None, mutant=None) for i in items]
    assert steer.outcome_plan(bare) == ("text_quality", steer.TEXT_OUTCOMES[1:])
    assert steer.outcome_plan(items[:1] + bare[1:])[0] == "text_quality"


def test_literal_types_and_scoring():
    assert literal_fits("-3", "i32") and literal_fits("7usize", "usize") and not literal_fits("3.0", "i64")
    assert literal_fits("2.5", "f64") and not literal_fits("2", "f64")
    assert literal_fits('"abc"', "&str") and literal_fits('String::from("x")', "String")
    assert literal_fits("vec![1, 2]", "Vec<i32>") and literal_fits("&[1, 2]", "&[i32]") and literal_fits("true", "bool")
    code = "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"
    good = score_rust_test("    assert_eq!(add(2, 3), 5);\n}\n", code)
    assert good.quality and good.first_call_args == ["2", "3"]
    wrong_arity = score_rust_test("    assert_eq!(add(2), 2);\n}\n", code)
    assert wrong_arity.calls_function and not wrong_arity.arg_count_ok and not wrong_arity.quality
    after_close = score_rust_test("    let x = 1;\n}\nfn f() { assert_eq!(add(1, 2), 3); }", code)
    assert not after_close.calls_function and not after_close.has_assert  # only the test body counts


# --- the measurement against softmax(QK^T) --------------------------------------------------------------------


def test_measured_weights_equal_eager_output_attentions(tiny):
    lm = tiny("llama")
    items = [p for p, _ in CORPUS.pairs()[:2]] + [r for _, r in CORPUS.pairs()[:2]]
    batched = measure(lm, items, layers=[0, 1, 3], batch_size=4)  # left padding: lengths differ
    eager = load_model("tiny-llama")
    eager.model.set_attn_implementation("eager")
    for k, item in enumerate(items):
        enc = encode_item(lm.tokenizer, item)
        markers = sorted(item.marker_selector().resolve(enc).indices)
        targets = sorted(item.target_selector().resolve(enc).indices)
        with torch.no_grad():
            att = eager.model(torch.tensor([enc.ids]), output_attentions=True).attentions
        for j, layer in enumerate((0, 1, 3)):
            block = att[layer][0][:, markers][:, :, targets]  # [heads, n_marker, n_target]
            assert np.allclose(batched.items[k].mean_edge[j], block.mean(dim=(1, 2)).numpy(), atol=1e-6)
            assert np.allclose(batched.items[k].total_mass[j], block.sum(-1).mean(-1).numpy(), atol=1e-6)


def test_scale_edit_reaches_the_closed_form_level(tiny):
    """Scaling the marker rows' target edges by s gives mass s*M / (1 + (s-1)*M) per row (renormalised)."""
    lm = tiny("llama")
    items = [r for _, r in CORPUS.pairs()[:3]]
    plain = measure(lm, items, layers=[2], batch_size=3)
    scaled = measure(lm, items, layers=[2], batch_size=3, interventions=[edge_edit(items, 2, value=3.0)])
    for a, b in zip(plain.captured[2], scaled.captured[2]):
        mass = a.sum(-1)
        assert torch.allclose(b.sum(-1), 3.0 * mass / (1 + 2.0 * mass), atol=1e-6)
    assert level(scaled.items, 2, "total_mass").mean() > level(plain.items, 2, "total_mass").mean()


# --- entry points on a tiny model ------------------------------------------------------------------------------


def _artifacts(run_id: str, path: str = "") -> set[str]:
    return {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, path)}


def test_entry_points_chain_on_a_tiny_model(tracking_dir):
    measure_attention.main(["--model", "tiny-llama", "--limit", "3", "--bootstrap", "50", *CORPUS_ARG, *UNDERPOWERED])
    (m_run,) = all_runs()
    assert m_run.info.status == "FINISHED"
    assert m_run.data.metrics["identity_max_abs_weight_diff"] == 0.0
    assert m_run.data.metrics["identity_max_abs_logit_diff"] == 0.0
    assert m_run.data.metrics["family_size"] <= 2 * 4
    assert {"layer_stats.json", "item_layer.json", "reference_levels.json", "head_heatmap.png", "layers.png"} <= (
        _artifacts(m_run.info.run_id)
    )
    assert len(tracking.load_jsonl_artifact(m_run.info.run_id, "samples/attention.jsonl")) == 6
    levels = mlflow.artifacts.load_dict(f"runs:/{m_run.info.run_id}/reference_levels.json")
    assert set(levels) == {"0", "1", "2", "3"}

    storage = f"sqlite:///{tracking_dir}/optuna.db"
    cal = ["--model", "tiny-llama", "--limit", "3", "--grid", "1.0,2.0,4.0", "--storage", storage, *CORPUS_ARG]
    calibrate_dose.main([*cal, "--measure-run-id", m_run.info.run_id, "--layer", "2"])
    parent = [r for r in all_runs() if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "calibrate_dose"][-1]
    assert parent.info.status == "FINISHED" and parent.data.tags["steerkit.reference_source"].startswith("measure_run")
    assert parent.data.metrics["identity_max_abs_logit_diff"] == 0.0 and parent.data.metrics["kl_at_scale_1"] == 0.0
    assert parent.data.metrics["reference_level"] == pytest.approx(levels["2"])
    chosen = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/chosen_scale.json")
    trials = [r for r in all_runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 3 and all(t.info.status == "FINISHED" for t in trials)
    best = min(trials, key=lambda t: t.data.metrics["objective"])
    assert chosen["scale"] == best.data.metrics["dose"] and chosen["reference_level"] == pytest.approx(levels["2"])
    by_scale = {t.data.metrics["dose"]: t.data.metrics for t in trials}
    assert by_scale[1.0]["kl_mean"] == 0.0 and by_scale[4.0]["kl_mean"] > 0.0
    assert by_scale[4.0]["steered_level"] > by_scale[2.0]["steered_level"] > by_scale[1.0]["steered_level"]

    calibrate_dose.main([*cal, "--measure-run-id", m_run.info.run_id, "--layer", "2"])  # resumed: nothing left
    again = [r for r in all_runs() if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "calibrate_dose"][-1]
    assert again.data.metrics["n_trials_run"] == 0 and again.data.metrics["n_trials_total"] == 3

    steer = ["--model", "tiny-llama", "--limit", "2", "--max-new-tokens", "6", "--levels", "0.5", *CORPUS_ARG]
    steer += UNDERPOWERED  # 2 items: McNemar cannot reject
    steer_attention.main([*steer, "--layer", "2"])
    s_run = all_runs()[-1]
    assert s_run.info.status == "FINISHED" and s_run.data.tags["steerkit.reference_source"] == "in_process"
    assert s_run.data.metrics["identity_max_abs_logit_diff"] == 0.0 and s_run.data.metrics["kl_baseline"] == 0.0
    assert s_run.data.metrics["family_size"] == 3  # steered, over_steered, level_0.5
    assert {"samples.json", "conditions.json", "dose_response.json", "valid_test_vs_share.png"} <= _artifacts(
        s_run.info.run_id
    )
    dr = mlflow.artifacts.load_dict(f"runs:/{s_run.info.run_id}/dose_response.json")
    assert (dr["n"], dr["n_groups"], dr["family"]) == (6, 2, "binomial")  # assigned shares only: 3 conditions x 2
    base = tracking.load_jsonl_artifact(s_run.info.run_id, "samples/baseline.jsonl")
    assert len(base) == 2 and {"text_quality", "text_calls_function", "text"} <= set(base[0])
    assert (
        s_run.data.params["primary_outcome"] == "valid_test"
        and "text_quality" in s_run.data.params["secondary_outcomes"]
    )
    samples = tracking.load_run_table(s_run.info.run_id, "samples.json")
    assert len(samples) == 8 and all(r["valid_reason"] in REASONS and r["valid_test"] in (True, False) for r in samples)
    assert "valid_test_rate_baseline" in s_run.data.metrics and "text_quality_rate_baseline" in s_run.data.metrics


@pytest.mark.parametrize(
    ("module", "argv", "needle"),
    [
        (measure_attention, ["--metric", "bogus"], "bogus"),
        (calibrate_dose, ["--sampler", "random", "--limit", "2"], "random"),
        (steer_attention, ["--levels", "1.5", "--limit", "2"], "1.5"),
    ],
)
def test_bad_input_one_line_exit_2_run_failed(tracking_dir, monkeypatch, capsys, module, argv, needle):
    monkeypatch.setattr(sys, "argv", ["x", "--model", "tiny-llama", *CORPUS_ARG, *argv])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(module.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1]
    assert all_runs()[-1].info.status == "FAILED"
