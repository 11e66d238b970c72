"""`steer_eval` with a grid: Optuna's WilcoxonPruner on per-prompt paired differences (a planted hopeless coefficient
stops after one batch, BH counts only the completed ones), and the two-objective mode (effect vs KL) whose logged
Pareto front is checked against a hand-written dominance filter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from statsmodels.stats.multitest import multipletests

from steerkit import tracking
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import load_model
from steerkit.core.pruning import PRUNED_AFTER_ATTR
from steerkit.search import RUN_ID_ATTR
from steerkit.steer_eval import prepare
from tests.conftest import all_runs, script

steer_eval = script("steer_eval")
N, BATCH = 20, 4
GOOD, HOPELESS = 1e-6, 500.0  # a coefficient that changes nothing, and one that changes every completion

SCORERS = """
def same(output: str, prompt: dict) -> bool:
    return output == prompt["reference"]


def changed(output: str, prompt: dict) -> bool:
    return output != prompt["reference"]
"""


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """20 prompts, each with `reference` = its own baseline completion (so the baseline scores True everywhere), a
    direction file, and the scorers as an importable module."""
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    torch.save(vector, tmp_path / "v.pt")
    rows = [{"id": f"q{i:02d}", "prompt": f"Item {i}: the value of {i} times three is"} for i in range(N)]
    (tmp_path / "bare.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    session = prepare(load_model("tiny-llama"), tmp_path / "bare.jsonl", f"direction={tmp_path / 'v.pt'}", "length",
                      layer=2, coefs=[GOOD], config=GenerationConfig(max_new_tokens=8, batch_size=BATCH))  # fmt: skip
    outputs = {r["prompt_id"]: r["output"] for r in session.baseline()}
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({**r, "reference": outputs[r["id"]]}) for r in rows))
    (tmp_path / "se_planted_scorers.py").write_text(SCORERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("se_planted_scorers", None)
    return {"prompts": str(tmp_path / "prompts.jsonl"), "vector": str(tmp_path / "v.pt"), "db": str(tmp_path / "o.db")}


def _argv(files: dict[str, str], scorer: str, grid: list[float], *extra: str) -> list[str]:
    return [
        "--model", "tiny-llama", "--corpus", files["prompts"], "--intervention", f"direction={files['vector']}",
        "--scorer", f"se_planted_scorers:{scorer}", "--fields", "reference", "--layer", "2", "--max-new-tokens", "8",
        "--batch-size", str(BATCH), "--grid", ",".join(map(str, grid)), "--storage", f"sqlite:///{files['db']}",
        "--study-name", "planted", *extra,
    ]  # fmt: skip


def _run(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["steer_eval", *argv])
    tracking.entry_point(steer_eval.main)


def _children(parent_id: str) -> dict[float, object]:
    return {float(c.data.params["coef"]): c for c in tracking.child_runs(parent_id)}


def test_hopeless_coefficient_is_pruned_after_one_batch_and_stays_in_the_bh_family(tracking_dir, monkeypatch, planted):
    _run(monkeypatch, _argv(planted, "same", [GOOD, HOPELESS], "--pruner", "wilcoxon", "--seed", "1"))
    parent = next(r for r in all_runs() if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "steer_eval")
    study = optuna.load_study(study_name="planted", storage=f"sqlite:///{planted['db']}")
    assert [t.params["coef"] for t in study.trials] == [GOOD, HOPELESS], "precondition: the good one runs first"
    good, hopeless = (next(t for t in study.trials if t.params["coef"] == c) for c in (GOOD, HOPELESS))
    assert good.state == optuna.trial.TrialState.COMPLETE and hopeless.state == optuna.trial.TrialState.PRUNED
    assert hopeless.user_attrs[PRUNED_AFTER_ATTR] == BATCH  # stopped after the first batch of 20 prompts
    order = [json.loads(line)["id"] for line in Path(planted["prompts"]).read_text().splitlines()]
    runs = _children(parent.info.run_id)
    for trial, n_seen in ((good, N), (hopeless, BATCH)):
        run = runs[trial.params["coef"]]
        assert run.info.run_id == trial.user_attrs[RUN_ID_ATTR]
        table = mlflow.load_table("samples.json", run_ids=[run.info.run_id])  # what the trial saw
        steered = tracking.load_jsonl_artifact(run.info.run_id, "samples/steered.jsonl")
        assert len(table) == n_seen and len(steered) == n_seen  # the pruned one generated only one batch
        # the pruner got each prompt's steered-minus-baseline score, at the prompt's index in the file (by id)
        expected = {
            order.index(i): float(s) - float(b)
            for i, s, b in zip(table["id"], table["steered_score"], table["baseline_score"])
        }
        assert trial.intermediate_values == expected
    assert set(runs[HOPELESS].data.metrics) >= {"p_value", "effect"} and runs[HOPELESS].data.metrics["pruned"] == 1
    assert runs[HOPELESS].info.status == "KILLED" and runs[HOPELESS].data.tags["steerkit.optuna_state"] == "PRUNED"
    assert runs[HOPELESS].data.metrics["effect"] == -1.0 and runs[GOOD].data.metrics["effect"] == 0.0
    assert runs[GOOD].info.status == "FINISHED" and runs[GOOD].data.metrics["pruned"] == 0
    assert parent.info.status == "FINISHED" and parent.data.params["pruned_coefs"] == str(HOPELESS)
    assert parent.data.metrics["bh_family_size"] == 2 and parent.data.metrics["n_pruned_coefs"] == 1
    # The pruned coefficient stays in the declared family at p = 1: BH over (p, 1) gives q = min(2p, 1).
    p_good = runs[GOOD].data.metrics["p_value"]
    expected = float(multipletests([p_good, 1.0], method="fdr_bh")[1][0])
    assert runs[GOOD].data.metrics["q_value"] == pytest.approx(expected, abs=1e-9)
    summary = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="steer_eval.json"))
    assert [s["coef"] for s in json.loads(summary.read_text())] == [GOOD]


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Maximise the effect, minimise the KL: `a` is no worse on both and better on one."""
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def test_two_objectives_log_the_pareto_front_of_effect_and_kl(tracking_dir, monkeypatch, planted):
    grid = [GOOD, 0.3, 5.0, HOPELESS]
    _run(monkeypatch, _argv(planted, "changed", grid, "--objectives", "effect,kl"))
    parent = next(r for r in all_runs() if r.data.tags.get(tracking.TAG_ENTRY_POINT) == "steer_eval")
    assert parent.info.status == "FINISHED"
    study = optuna.load_study(study_name="planted", storage=f"sqlite:///{planted['db']}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    runs = _children(parent.info.run_id)
    points = {c: (r.data.metrics["effect"], r.data.metrics["kl_mean"]) for c, r in runs.items()}
    assert sorted(points) == grid and all(r.info.status == "FINISHED" for r in runs.values())
    front = sorted(c for c, p in points.items() if not any(_dominates(q, p) for q in points.values()))
    assert 0 < len(front) < len(grid), f"precondition: a trade-off with a dominated point, got {points}"
    path = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="pareto.json")
    logged = mlflow.load_table("pareto.json", run_ids=[parent.info.run_id])  # the table loads back
    assert sorted(logged["coef"]) == pytest.approx(front)
    table = json.loads(Path(path).read_text())  # MLflow's table format: columns + data
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sorted(r["coef"] for r in rows) == front
    for row in rows:
        assert (row["effect"], row["kl_mean"]) == pytest.approx(points[row["coef"]], rel=1e-8, abs=1e-10)  # 10 decimals
        assert row["run_id"] == runs[row["coef"]].info.run_id
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "optuna")}
    assert "optuna/pareto_front.png" in artifacts


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pruner", "median"], "error: pruner must be 'none' or 'wilcoxon', got 'median'"),
        (["--pruner", "wilcoxon", "--prune-p", "1.5"], "error: prune_p must be in (0, 1), got 1.5"),
        (["--objectives", "effect,size"], "error: objectives must be 'effect' or 'effect,kl', got 'effect,size'"),
        (["--objectives", "effect,kl", "--pruner", "wilcoxon"], "error: pruner 'wilcoxon' needs one objective"),
        (["--grid", "", "--pruner", "wilcoxon"], "error: pruner='wilcoxon' / objectives='effect' need a grid"),
    ],
)
def test_bad_search_option_is_one_line_and_the_run_fails(tracking_dir, monkeypatch, capsys, planted, extra, message):
    argv = _argv(planted, "same", [GOOD, HOPELESS])
    if "--grid" in extra:
        del argv[argv.index("--grid") : argv.index("--grid") + 2]
        extra = extra[2:]
    with pytest.raises(SystemExit) as exc:
        _run(monkeypatch, [*argv, *extra])
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in line and line.startswith("error: ")
    (run,) = all_runs()
    assert run.info.status == "FAILED" and "n_prompts" not in run.data.params  # refused before loading anything


class _Trial:
    """A trial double whose pruner never stops it; keeps what was reported."""

    number = 0

    def __init__(self) -> None:
        self.reports: dict[int, float] = {}

    def report(self, value: float, step: int) -> None:
        self.reports[step] = value

    def should_prune(self) -> bool:
        return False


def test_chunked_coefficient_equals_one_pass(planted):
    """Pruning generates the steered arm one batch at a time, in the baseline's batch order: the same batches, so the
    table and test equal the one-pass evaluation's (temperature 0.7: the per-prompt sampling seeds must carry too)."""
    config = GenerationConfig(max_new_tokens=8, batch_size=BATCH, temperature=0.7, seed=3)
    session = prepare(load_model("tiny-llama"), planted["prompts"], f"direction={planted['vector']}",
                      "se_planted_scorers:same", layer=2, coefs=[0.3], fields=["reference"], config=config)  # fmt: skip
    whole = session.coefficient(0.3)
    trial = _Trial()
    chunked = session.coefficient(0.3, trial=trial, prune_every=BATCH)
    assert chunked.table == whole.table and chunked.test == whole.test
    assert any(r["steered_output"] != r["baseline_output"] for r in whole.table)  # precondition: steering acts
    index = {json.loads(line)["id"]: i for i, line in enumerate(Path(planted["prompts"]).read_text().splitlines())}
    assert trial.reports == {
        index[r["id"]]: float(r["steered_score"]) - float(r["baseline_score"]) for r in whole.table
    }


def test_pregenerated_grid_equals_one_generate_per_coefficient(planted, monkeypatch):
    """`pregenerate` runs the baseline and every coefficient in one `generate_arms` pass (shared prefix, arms decoded
    together); each coefficient's table and test equal those of its own `generate` call (sampled, per-prompt
    seeds), the baseline reaches `on_baseline` once per prompt, and no coefficient generates again."""
    config = GenerationConfig(max_new_tokens=8, batch_size=BATCH, temperature=0.7, seed=3)
    coefs = [0.3, 2.0, 0.0]  # 0.0 is the identity: the same generations as the baseline
    one = [prepare(load_model("tiny-llama"), planted["prompts"], f"direction={planted['vector']}",
                   "se_planted_scorers:same", layer=2, coefs=coefs, fields=["reference"], config=config)
           for _ in range(2)]  # fmt: skip
    alone = {c: one[0].coefficient(c) for c in coefs}
    seen: list[str] = []
    one[1].pregenerate(on_baseline=lambda g: seen.append(g.prompt_id))
    assert sorted(seen) == sorted(r["id"] for r in alone[0.3].table)
    monkeypatch.setattr("steerkit.steer_eval.evaluation.generate", _no_generate)
    together = {c: one[1].coefficient(c) for c in coefs}
    for c in coefs:
        assert together[c].table == alone[c].table and together[c].test == alone[c].test
    assert any(r["steered_output"] != r["baseline_output"] for r in alone[2.0].table)  # precondition: steering acts
    assert all(r["steered_output"] == r["baseline_output"] for r in together[0.0].table)


def _no_generate(*args: object, **kwargs: object) -> None:
    raise AssertionError("a pregenerated coefficient generated again")
