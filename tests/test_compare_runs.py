"""compare_runs end to end: generate_n50 runs at two scales on a tiny model, then one `compare_runs` run."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

from steerkit import tracking
from steerkit.errors import SteerkitError
from steerkit.stats.comparisons import declared_outcomes
from tests.conftest import all_runs, mlflow_run, script

ROOT = Path(__file__).resolve().parents[1]

compare_runs = script("compare_runs")
generate_n50 = script("generate_n50")

FAST = ["--model", "tiny-llama", "--layer", "2", "--limit", "4", "--max-new-tokens", "6", "--batch-size", "4"]
FAST += ["--allow-underpowered", "true"]  # exact McNemar with 4 pairs cannot reject (smallest p 0.125)
FAST += ["--corpus", str(ROOT / "corpus" / "generation_prompts_n50.json")]
UNDERPOWERED = ["--allow-underpowered", "true"]  # 4 prompts: exact McNemar cannot reject


@pytest.fixture
def two_scales(tracking_dir) -> list[str]:
    for scale in ("1.0", "3.0"):
        generate_n50.main(FAST + ["--scale", scale])
    runs = tracking.search_finished_runs("steerkit", "generate_n50")
    return [r.info.run_id for r in runs]


def _compare_run():
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`steerkit.entry_point` = 'compare_runs'", output_format="list"
    )
    assert len(runs) == 1
    return runs[0]


def _csv(run_id: str) -> list[dict]:
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/comparison.csv")
    return list(csv.DictReader(io.StringIO(text)))


def test_compare_against_own_baseline(two_scales):
    compare_runs.main([*UNDERPOWERED])
    run = _compare_run()
    assert run.info.status == "FINISHED"
    rows = _csv(run.info.run_id)
    primary = {mlflow.get_run(rid).data.params["primary_outcome"] for rid in two_scales}
    assert len(primary) == 1  # by default the runs' declared primary outcome (and tokens), not the secondary ones
    assert len(rows) == 2 * 2  # one row per (run, outcome)
    assert {(r["run_id"], r["outcome"]) for r in rows} == {(rid, o) for rid in two_scales for o in (*primary, "tokens")}
    assert all(0.0 <= float(r["p_value"]) <= 1.0 and 0.0 <= float(r["q_value"]) <= 1.0 for r in rows)
    assert all(int(r["n_pairs"]) == 4 and int(r["n_dropped"]) == 0 for r in rows)
    identity = [r for r in rows if float(r["dose"]) == 1.0]
    assert all(float(r["p_value"]) == 1.0 and float(r["effect"]) == 0.0 for r in identity)  # scale 1 = identity
    m = run.data.metrics
    assert m["family_size"] == 4 and m["n_runs"] == 2
    assert m[f"{two_scales[1][:8]}.dose"] == 3.0
    assert set(run.data.tags["steerkit.compared_runs"].split(",")) == set(two_scales)
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"comparison.csv", "comparison.md", "preservation_vs_dose.png"} <= names
    md = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/comparison.md")
    assert "family of 4 tests" in md and md.count("mcnemar_exact") == 2


def test_compare_against_a_reference_run_and_filters(two_scales):
    ref, other = two_scales
    args = ["--reference", ref, "--continuous", "none", "--outcomes", "has_test,new_test"]  # named: the secondary ones
    compare_runs.main([*args, "--filter", "params.scale = '3.0'", *UNDERPOWERED])
    rows = _csv(_compare_run().info.run_id)
    assert [(r["run_id"], r["outcome"], r["reference"]) for r in rows] == [
        (other, "has_test", ref),
        (other, "new_test", ref),
    ]


BAD_INPUT = [
    (["--experiment", "nope"], "nope"),
    (["--filter", "params.scale = '9.9'"], "9.9"),
    (["--filter", "this is not a filter"], "bad run filter"),
    (["--outcomes", "no_such"], "no_such"),
    (["--alpha", "1.5"], "1.5"),
    (["--reference", "0123456789abcdef"], "0123456789abcdef"),
]


def test_bad_input_fails_the_compare_run(two_scales):
    # One store for every case: generating the runs dominates the time, not the failing comparisons.
    for i, (argv, needle) in enumerate(BAD_INPUT):
        with pytest.raises(SteerkitError, match=needle):
            compare_runs.main([*argv, *UNDERPOWERED])
        runs = mlflow.search_runs(
            search_all_experiments=True,
            filter_string="tags.`steerkit.entry_point` = 'compare_runs'",
            output_format="list",
        )
        assert len(runs) == i + 1 and all(r.info.status == "FAILED" for r in runs), argv


def test_design_card_path_with_no_flags(tracking_uri):
    """`mlflow run . -e generate_n50` at two scales, then `mlflow run . -e compare_runs`, no experiment flags.

    A bare `mlflow run` creates its run in MLflow's `Default` before the script starts; compare_runs reads every
    experiment (runs told apart by their entry-point tag), so the comparison finds both.
    """
    small = {"model": "tiny-llama", "limit": "4", "max_new_tokens": "4", "allow_underpowered": "true"}
    for scale in ("2.0", "3.0"):
        proc = mlflow_run("generate_n50", small | {"scale": scale})
        assert proc.returncode == 0, proc.stderr[-2000:]
    proc = mlflow_run("compare_runs", {"allow_underpowered": "true"})  # 2 runs x 4 prompts cannot reject
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "family_size=4" in proc.stdout
    runs = all_runs()
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert [r.info.run_name for r in runs] == [
        "n50 scale=2.0 L2 tiny-llama",
        "n50 scale=3.0 L2 tiny-llama",
        "compare generate_n50 reference=baseline",
    ]
    compared = set(runs[2].data.tags["steerkit.compared_runs"].split(","))
    assert compared == {r.info.run_id for r in runs[:2]}


def _json(run_id: str, name: str):
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")


def test_runs_on_other_models_or_corpora_are_not_pooled(tracking_dir, tmp_path):
    """Regression: compare_runs used to put every FINISHED run of the experiment in one BH family, whatever its
    model or corpus. By default only runs sharing the match params with the reference (newest) run are compared.
    """
    corpus_b = tmp_path / "n50_copy.json"
    corpus_b.write_text((ROOT / "corpus" / "generation_prompts_n50.json").read_text() + "\n")  # same prompts, new hash
    generate_n50.main(["--model", "tiny-gemma3", *FAST[2:], "--scale", "3.0"])  # older: other model
    generate_n50.main(FAST[:-1] + [str(corpus_b), "--scale", "3.0"])  # newest (the reference): other corpus
    old, new = [r.info.run_id for r in tracking.search_finished_runs("steerkit", "generate_n50")]

    compare_runs.main([*UNDERPOWERED])
    run = _compare_run()
    assert {r["run_id"] for r in _csv(run.info.run_id)} == {new}
    assert run.data.metrics["n_excluded_runs"] == 1 and run.data.metrics["family_size"] == 2
    (excluded,) = _json(run.info.run_id, "excluded_runs.json")
    assert excluded["run_id"] == old and set(excluded["keys"].split(",")) >= {"model", "corpus_sha256"}
    assert excluded["reference.model"] == "tiny-llama" and excluded["run.model"] == "tiny-gemma3"
    assert _json(run.info.run_id, "family.json") == {"family_size": 2, "n_runs": 1, "run_ids": [new]}
    assert run.data.params["match_reference_run"] == new


def test_match_loosens_or_refuses_bad_keys(tracking_dir, tmp_path):
    corpus_b = tmp_path / "n50_copy.json"
    corpus_b.write_text((ROOT / "corpus" / "generation_prompts_n50.json").read_text() + "\n")
    generate_n50.main(FAST + ["--scale", "3.0"])
    generate_n50.main(FAST[:-1] + [str(corpus_b), "--scale", "2.0"])
    ids = [r.info.run_id for r in tracking.search_finished_runs("steerkit", "generate_n50")]
    compare_runs.main(["--match", "model,edge_rule", *UNDERPOWERED])  # corpus hash no longer compared
    run = _compare_run()
    assert run.data.metrics["n_excluded_runs"] == 0 and run.data.metrics["family_size"] == 4
    assert _json(run.info.run_id, "family.json")["run_ids"] == ids
    with pytest.raises(SteerkitError, match="match key 'no_such_param' is not a param"):
        compare_runs.main(["--match", "model,no_such_param", *UNDERPOWERED])
    failed = [r for r in all_runs() if r.data.tags.get("steerkit.entry_point") == "compare_runs"]
    assert sorted(r.info.status for r in failed) == ["FAILED", "FINISHED"]


def test_declared_outcomes_is_the_runs_primary_and_refuses_a_mix():
    def run(rid: str, params: dict) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(run_id=rid), data=SimpleNamespace(params=params))

    same = [run("a", {"primary_outcome": "valid_test", "secondary_outcomes": "has_test"})]
    same.append(run("b", {"primary_outcome": "valid_test"}))
    assert declared_outcomes(same) == ["valid_test"]
    with pytest.raises(SteerkitError, match="different primary outcomes"):
        declared_outcomes([same[0], run("c", {"primary_outcome": "new_test"})])
    with pytest.raises(SteerkitError, match="run d declares no primary_outcome"):
        declared_outcomes([run("d", {})])
