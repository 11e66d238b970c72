"""Attention knockout (entry points `knockout`, `knockout_generate`) against independent paths: a hand-written eager
attention with -inf at the knocked edges, one full forward pass, scipy/statsmodels called directly, hand-written
doctest completions run through the sandbox."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from steerkit import tracking
from steerkit.attention import knockout_generation as kg
from steerkit.attention.doctest_scoring import SCORES, run_passes, score_static
from steerkit.attention.knockout import (
    knockout_edit,
    layer_tests,
    prepare_sample,
    sample_metrics,
    tail_logits,
)
from steerkit.attention.knockout_controls import key_mass, matched_control_keys
from steerkit.core.models import load_model
from steerkit.corpora.attention_pairs import load_attention_corpus
from steerkit.corpora.doctests import load_doctest_prompts
from steerkit.errors import SteerkitError
from steerkit.interventions import AttentionCapture, steer
from tests.conftest import all_runs, script

ROOT = Path(__file__).resolve().parents[1]

knockout = script("knockout")
knockout_generate = script("knockout_generate")

ATTENTION_CORPUS = str(ROOT / "corpus" / "attention_pairs.json")
DOCTEST_CORPUS = str(ROOT / "corpus" / "doctest_prompts.json")


class _KnockoutReference:
    """Eager attention written here: softmax over scores with -inf at the knocked (query, key) edges of one layer."""

    def __init__(self) -> None:
        self.layer: int | None = None
        self.edges: tuple[list[int], list[int]] = ([], [])

    def __call__(self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                 scaling: float | None = None, **kwargs: Any) -> Any:  # fmt: skip
        groups = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        scores = query @ k.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
        q_len, k_len = scores.shape[-2:]
        causal = torch.ones(q_len, k_len, dtype=torch.bool).triu(1 + k_len - q_len)
        scores = scores.masked_fill(causal, float("-inf"))
        if module.layer_idx == self.layer:
            rows, cols = torch.tensor(self.edges[0]), torch.tensor(self.edges[1])
            scores[:, :, rows[:, None], cols[None, :]] = float("-inf")
        weights = torch.softmax(scores, dim=-1)
        return (weights @ v).transpose(1, 2).contiguous(), weights


@pytest.fixture(scope="module")
def reference() -> Iterator[tuple[_KnockoutReference, Any]]:
    ref = _KnockoutReference()
    AttentionInterface.register("attn2_knockout_ref", ref)
    AttentionMaskInterface.register("attn2_knockout_ref", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    loaded = load_model("tiny-llama")  # same seeded weights as the steerkit copy
    loaded.model.set_attn_implementation("attn2_knockout_ref")
    yield ref, loaded


@pytest.fixture(scope="module")
def corpus() -> Any:
    return load_attention_corpus(ATTENTION_CORPUS)


def test_knockout_zeroes_edges_and_equals_hand_written_eager(tiny, reference, corpus) -> None:
    loaded = tiny("llama")
    ref, ref_model = reference
    for item in (corpus.pairs()[2][0], corpus.pairs()[2][1]):  # a Python and a Rust item
        sample = prepare_sample(loaded, item, "both")
        ids = torch.tensor([sample.encoded.ids])
        capture = AttentionCapture(1)
        with torch.inference_mode(), steer(loaded, knockout_edit(sample, (1,), sample.targets), capture,
                                           prompts=[sample.encoded]):  # fmt: skip
            got = loaded.model(ids).logits
        (record,) = capture.records[1]
        knocked = record.weights[0][:, list(sample.sources)][:, :, list(sample.targets)]
        assert torch.equal(knocked, torch.zeros_like(knocked))  # exactly zero, every head
        torch.testing.assert_close(record.weights.sum(-1), torch.ones_like(record.weights.sum(-1)))
        ref.layer, ref.edges = 1, (list(sample.sources), list(sample.targets))
        try:
            with torch.inference_mode():
                expected = ref_model.model(ids).logits
        finally:
            ref.layer = None
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        with torch.inference_mode():
            plain = loaded.model(ids).logits
        assert (got - plain).abs().max() > 1e-4  # the knockout did something the comparison can see


def test_tail_logits_with_prefix_cache_equal_one_full_pass(tiny, corpus) -> None:
    loaded = tiny("llama")
    sample = prepare_sample(loaded, corpus.pairs()[0][0])
    edit = knockout_edit(sample, (0, 1), sample.targets)
    plain, knocked = tail_logits(loaded, sample, [[], [edit]])
    ids = torch.tensor([sample.encoded.ids])
    with torch.inference_mode():
        full = loaded.model(ids).logits[0, sample.first_marker :]
        with steer(loaded, edit, prompts=[sample.encoded]):
            full_knocked = loaded.model(ids).logits[0, sample.first_marker :]
    torch.testing.assert_close(plain, full, atol=1e-4, rtol=0)
    torch.testing.assert_close(knocked, full_knocked, atol=1e-4, rtol=0)


def test_matched_control_removes_the_targets_mass_within_tolerance(tiny, reference, corpus) -> None:
    """The control's knocked edges carry the targets' baseline attention mass (within 10%), read independently
    from the hand-written eager attention's weights (`output_attentions`), not from steerkit's capture."""
    loaded = tiny("llama")
    _, ref_model = reference
    for item in corpus.select(kind="test")[:8]:
        sample = prepare_sample(loaded, item, "function_name")
        with torch.inference_mode():
            out = ref_model.model(torch.tensor([sample.encoded.ids]), output_attentions=True)
        weights = out.attentions[1][0].double()  # [heads, q, k], layer 1, unhooked
        mass = weights[:, list(sample.sources)].sum(1).mean(0)  # summed over the knocked queries, mean over heads
        target = float(mass[list(sample.targets)].sum())
        captured = key_mass(loaded, sample.encoded, sample, [1])[1]
        for seed in range(3):
            control = matched_control_keys(sample, captured, seed, tolerance=0.1)
            independent = float(mass[list(control.keys)].sum())
            assert control.matched and abs(independent - target) <= 0.1 * target + 1e-6, (item.id, seed)
            assert control.target_mass == pytest.approx(target, rel=1e-4)
            assert control.control_mass == pytest.approx(independent, rel=1e-4)
            assert not set(control.keys) & (set(sample.targets) | set(sample.sources))
            assert all(1 <= k < sample.first_marker for k in control.keys)
            assert control == matched_control_keys(sample, captured, seed, tolerance=0.1)  # reproducible


def test_matched_control_reports_an_unreachable_mass() -> None:
    sample = SimpleNamespace(id="x", targets=(5,), sources=(8, 9), first_marker=8)
    mass = np.array([0.9, 0.01, 0.01, 0.01, 0.01, 0.9, 0.01, 0.01])  # the target holds far more than all the pool
    control = matched_control_keys(sample, mass, seed=0, tolerance=0.1)  # type: ignore[arg-type]
    assert not control.matched and control.target_mass == pytest.approx(0.9)
    assert control.control_mass == pytest.approx(0.06)  # the closest reachable: all six pool keys
    with pytest.raises(SteerkitError, match="tolerance must be in"):
        matched_control_keys(sample, mass, seed=0, tolerance=1.5)  # type: ignore[arg-type]


def test_sample_metrics_against_closed_forms(tiny, corpus) -> None:
    loaded = tiny("llama")
    sample = prepare_sample(loaded, corpus.pairs()[0][1])
    base, knocked = tail_logits(loaded, sample, [[], [knockout_edit(sample, (0, 1, 2), sample.targets)]])
    same = sample_metrics(sample, base, base, k=5)
    assert same["kl_last"] == 0.0 and same["kl_mean"] == 0.0 and same["nll_delta"] == 0.0
    assert same["top1_changed_last"] == 0.0 and same["topk_overlap_last"] == 1.0
    got = sample_metrics(sample, base, knocked, k=5)
    last = sample.prompt_end - sample.first_marker
    target = torch.tensor(sample.encoded.ids[sample.prompt_end + 1 :])
    nll = torch.nn.functional.cross_entropy(knocked[last:-1].double(), target)
    assert got["nll_edited"] == pytest.approx(float(nll), abs=1e-9)
    p, q = torch.softmax(base[last].double(), -1), torch.softmax(knocked[last].double(), -1)
    assert got["kl_last"] == pytest.approx(float((p * (p.log() - q.log())).sum()), abs=1e-9)
    assert got["kl_last"] > 0


def test_layer_tests_wire_wilcoxon_ttest_and_bh_like_scipy_and_statsmodels() -> None:
    rng = np.random.default_rng(0)
    rows, ko, ctrl = [], {}, {}
    for layer, shift in (("0", 0.0), ("1", 0.3), ("2", 2.0)):
        ko[layer] = rng.normal(shift, 1.0, 12)
        ctrl[layer] = rng.normal(0.0, 1.0, 12)
        rows += [{"layer": layer, "knockout_kl_last": a, "control_kl_last": b} for a, b in zip(ko[layer], ctrl[layer])]
    out, family = layer_tests(rows, "kl_last", alpha=0.05)
    assert family == 3 and [r["layer"] for r in out] == ["0", "1", "2"]
    p_values = [sps.wilcoxon(ko[lay], ctrl[lay]).pvalue for lay in ("0", "1", "2")]
    reject, q, _, _ = multipletests(p_values, alpha=0.05, method="fdr_bh")
    for r, p, q_i, rej, lay in zip(out, p_values, q, reject, ("0", "1", "2")):
        assert r["wilcoxon_p"] == pytest.approx(p) and r["wilcoxon_q"] == pytest.approx(q_i)
        assert r["rejected"] == bool(rej)
        assert r["ttest_p"] == pytest.approx(sps.ttest_rel(ko[lay], ctrl[lay]).pvalue)
        assert r["median_diff"] == pytest.approx(float(np.median(ko[lay] - ctrl[lay])))
        assert r["median_diff_low"] <= r["median_diff"] <= r["median_diff_high"]
    assert out[2]["rejected"]  # a shift of two SD over 12 pairs is found


# --- doctest scoring (knockout_generate) ---------------------------------------------------------------------------


def test_doctest_scores_on_hand_written_completions() -> None:
    item = next(i for i in load_doctest_prompts(DOCTEST_CORPUS).prompts if i.function_name == "clamp")
    cases = {  # completion -> (valid, calls, arity, param names, passes)
        ' clamp(15, 0, 10)\n    10\n    """\n': (True, True, True, False, True),
        ' clamp(15, 0, 10)\n    15\n    """': (True, True, True, False, False),  # wrong expected output
        " clamp(value=-3, low=0, high=10)\n    0\n": (True, True, True, True, True),
        " value = 5\n    >>> clamp(value, 0, 3)\n    3\n": (True, False, False, True, True),
        " clamp(15, 0)\n    10\n": (True, True, False, False, False),  # TypeError in the sandbox
        ' clamp(15, 0,\n    """': (False, True, False, False, False),
        " max(1, 2)\n    2\n": (True, False, False, False, False),  # passes as doctest, but never calls clamp
        " clamp(1, 0, 2) and __import__('os')._exit(0)\n    1\n": (True, True, False, False, False),  # early exit
        " The function clamps a value.\n": (False, False, False, False, False),
    }
    completions = list(cases)
    static = [score_static(item, c) for c in completions]
    passes = run_passes([item] * len(static), static, workers=2)
    for completion, score, (passed, _result) in zip(completions, static, passes):
        got = (score.valid_doctest, score.calls_function, score.arity_matches, score.uses_param_names, passed)
        assert got == cases[completion], completion


# --- entry points ------------------------------------------------------------------------------------------------


def test_knockout_main_logs_tables_and_identity(tracking_dir) -> None:
    knockout.main(["--model", "tiny-llama", "--limit", "2", "--layers", "0,1", "--seeds", "2",
                   "--corpus", ATTENTION_CORPUS, "--allow-underpowered", "true"])  # fmt: skip
    (run,) = all_runs()
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["identity_max_abs_logit_diff"] == 0.0 and m["identity_kl_max"] == 0.0
    assert m["n_samples"] == 2 and m["family_size_kl_last"] == 2
    samples = mlflow.load_table("knockout_samples.json", run_ids=[run.info.run_id])
    assert len(samples) == 4 and set(samples["layer"].astype(str)) == {"0", "1"}
    assert (samples["knockout_kl_last"] >= 0).all() and set(samples["language"]) == {"python", "rust"}
    layers = mlflow.load_table("knockout_layers.json", run_ids=[run.info.run_id])
    assert len(layers) == 2 and "kl_last_wilcoxon_q" in layers.columns
    matched = samples[samples["control_mass_matched"]]
    assert len(matched) == 4 and m["n_control_unmatched"] == 0
    assert (abs(matched["control_mass"] - matched["target_mass"]) <= 0.1 * matched["target_mass"] + 1e-9).all()
    assert len(tracking.load_jsonl_artifact(run.info.run_id, "samples/knockout.jsonl")) == 4
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "kl_knockout_vs_control.png" in artifacts


@pytest.mark.parametrize(("module", "extra", "needle"), [
    (knockout, ["--layers", "99"], "99"),
    (knockout, ["--target", "bogus"], "bogus"),
    (knockout_generate, ["--amplify", "nan"], "nan"),
    (knockout_generate, ["--layers", "1,1"], "1,1"),
])  # fmt: skip
def test_bad_input_fails_the_run(tracking_dir, monkeypatch, capsys, module, extra, needle) -> None:
    corpus = ATTENTION_CORPUS if module is knockout else DOCTEST_CORPUS
    argv = ["x", "--model", "tiny-llama", "--limit", "2", "--corpus", corpus, *extra]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(module.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and needle in err[-1]
    assert all_runs()[0].info.status == "FAILED"


def test_knockout_generate_main_scores_four_arms_with_a_mass_matched_control(tracking_dir) -> None:
    knockout_generate.main(["--model", "tiny-llama", "--limit", "3", "--layers", "0,1", "--max-new-tokens", "6",
                            "--corpus", DOCTEST_CORPUS, "--allow-underpowered", "true"])  # fmt: skip
    (run,) = all_runs()
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["identity_max_abs_logit_diff"] == 0.0 and m["family_size"] == 20 and m["n_prompts"] == 3
    assert m["baseline_identical_to_baseline"] == 3 and m["n_control_unmatched"] == 0
    gens = mlflow.load_table("generations.json", run_ids=[run.info.run_id])
    assert len(gens) == 12 and set(gens["arm"]) == {"baseline", "knockout", "control", "amplify"}
    by_arm = {arm: sorted(gens[gens["arm"] == arm]["id"]) for arm in ("baseline", "control")}
    assert by_arm["control"] == by_arm["baseline"] and len(by_arm["control"]) == 3  # one control row per prompt id
    stats = mlflow.load_table("paired_stats.json", run_ids=[run.info.run_id])
    assert len(stats) == 20 and ((stats["mcnemar_p"] >= 0) & (stats["mcnemar_p"] <= 1)).all()
    assert len(stats[(stats["arm"] == "knockout") & (stats["reference"] == "control")]) == 5
    edges = mlflow.load_table("control_edges.json", run_ids=[run.info.run_id])
    assert len(edges) == 3 and edges["mass_matched"].all()
    assert (abs(edges["control_mass"] - edges["target_mass"]) <= 0.1 * edges["target_mass"] + 1e-9).all()
    assert run.data.params["resolved_layers"] == "[0, 1]"
    for arm in ("baseline", "knockout", "control", "amplify"):
        assert len(tracking.load_jsonl_artifact(run.info.run_id, f"samples/{arm}.jsonl")) == 3
        assert len(tracking.load_jsonl_artifact(run.info.run_id, f"samples/scores_{arm}.jsonl")) == 3


def test_knockout_generate_paired_stats_join_by_id_not_position() -> None:
    """Regression: arms were zipped by position; a control arm in another order must pair the same prompts."""
    flags = {"p1": (True, False), "p2": (False, False), "p3": (False, True), "p4": (True, True)}
    row = lambda i, v: {"id": i, **{s: v for s in SCORES}}  # noqa: E731
    base = [row(i, b) for i, (b, _) in flags.items()]
    knocked = [row(i, k) for i, (_, k) in flags.items()]
    control = [row(i, b) for i, (b, _) in reversed(flags.items())]  # same values as baseline, reversed order
    stats = kg.paired_stats({"baseline": base, "knockout": knocked, "control": control}, alpha=0.05)
    vs_control = [r for r in stats if r["arm"] == "knockout" and r["reference"] == "control"]
    vs_base = [r for r in stats if r["arm"] == "knockout" and r["reference"] == "baseline"]
    assert len(vs_control) == len(vs_base) == len(SCORES)
    for a, b in zip(vs_control, vs_base):  # control == baseline per id, so the contrasts agree
        assert (a["b"], a["c"], a["mcnemar_p"]) == (b["b"], b["c"], b["mcnemar_p"]) == (1, 1, 1.0)
    ctrl_vs_base = [r for r in stats if r["arm"] == "control" and r["reference"] == "baseline"]
    assert all(r["b"] == r["c"] == 0 for r in ctrl_vs_base)  # identical per id; zipped by position b = c = 1


def test_knockout_generate_layer_set_is_declared_not_all_layers(tiny) -> None:
    loaded = tiny("llama")
    assert knockout_generate.resolve_layers("auto", loaded) == (round(0.6 * loaded.n_layers),)
    assert knockout_generate.resolve_layers("0,2", loaded) == (0, 2)
    rows = [{"layer": "0", "kl_last_rejected": False}, {"layer": "3", "kl_last_rejected": True},
            {"layer": "1", "kl_last_rejected": True}, {"layer": "all", "kl_last_rejected": True}]  # fmt: skip
    assert kg.layers_from_knockout(rows) == (1, 3)
    with pytest.raises(SteerkitError, match="rejected no single layer"):
        kg.layers_from_knockout(rows[:1])
