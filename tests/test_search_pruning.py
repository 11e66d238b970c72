"""Pruning (Optuna's WilcoxonPruner on per-item reports), the study-name rule, the default storage, the HTML plots,
and no private Optuna API anywhere in steerkit/ or experiments/."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import mlflow
import optuna
import pytest

from steerkit import tracking
from steerkit.core.pruning import PRUNED_AFTER_ATTR, chunk_ends, report_items
from steerkit.errors import SteerkitError
from steerkit.search import StudyConfig, default_storage, run_study, study_name
from tests.conftest import script

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 40
HOPELESS = 30.0


def _item_values(coef: float) -> list[float]:
    """Per-item scores: coefficient 10 is best, 3 close behind, 30 (the planted hopeless one) worse on most items."""
    rng = random.Random(0)  # the same item difficulties for every coefficient: a paired design
    base = [rng.random() for _ in range(N_ITEMS)]
    shift = {3.0: -0.05, 10.0: 0.0, HOPELESS: -0.6}[coef]
    noise = random.Random(int(coef))
    return [b + shift + 0.02 * noise.random() for b in base]


class Items:
    """An objective over N_ITEMS items, 4 at a time, reporting each (steerkit.core.pruning); counts items done."""

    def __init__(self) -> None:
        self.done: dict[float, int] = {}

    def __call__(self, trial) -> float:
        coef = float(trial.suggest_categorical("coefficient", [3.0, 10.0, HOPELESS]))
        values = _item_values(coef)
        for start, end in chunk_ends(N_ITEMS, 4):
            self.done[coef] = end
            report_items(trial, {i: values[i] for i in range(start, end)}, end, N_ITEMS)
        return sum(values) / N_ITEMS


def _config(tmp_path: Path, name: str, pruner: str) -> StudyConfig:
    space = {"coefficient": [3.0, 10.0, HOPELESS]}
    return StudyConfig(name, f"sqlite:///{tmp_path}/p.db", ("maximize",), "grid", space, seed=1, pruner=pruner)  # type: ignore[arg-type]


def test_planted_hopeless_coefficient_is_pruned_early_and_the_best_is_unchanged(tracking_dir):
    plain, pruned = Items(), Items()
    reference = run_study(plain, _config(tracking_dir, "plain", "none"), track=False)
    with tracking.tracked_run("pruning_test", {}, experiment="pruning"):
        parent = tracking.active_run_id()
        study = run_study(pruned, _config(tracking_dir, "pruned", "wilcoxon"))
    order = [t.params["coefficient"] for t in study.trials]
    assert order.index(HOPELESS) > 0, "precondition: a better coefficient ran before the hopeless one (seed 1)"
    assert plain.done == {3.0: N_ITEMS, 10.0: N_ITEMS, HOPELESS: N_ITEMS}
    assert pruned.done[HOPELESS] < N_ITEMS / 2 and pruned.done[10.0] == N_ITEMS
    assert study.best_params == reference.best_params == {"coefficient": 10.0}
    assert study.best_value == reference.best_value
    (trial,) = [t for t in study.trials if t.params["coefficient"] == HOPELESS]
    assert (
        trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs[PRUNED_AFTER_ATTR] == pruned.done[HOPELESS]
    )
    children = tracking.child_runs(parent)
    (killed,) = [c for c in children if float(c.data.params["coefficient"]) == HOPELESS]
    assert killed.info.status == "KILLED" and killed.data.tags["steerkit.optuna_state"] == "PRUNED"
    assert killed.data.metrics[PRUNED_AFTER_ATTR] == pruned.done[HOPELESS]
    assert mlflow.get_run(parent).data.metrics["n_pruned"] == 1


def test_report_items_never_prunes_a_plain_trial_and_checks_chunk_size():
    class Plain:  # a test double without `report`: nothing to prune
        number = 0

    report_items(Plain(), {0: 1.0}, 1, 2)
    assert list(chunk_ends(5, 2)) == [(0, 2), (2, 4), (4, 5)] and list(chunk_ends(5, 0)) == [(0, 5)]
    with pytest.raises(SteerkitError, match="prune_every"):
        list(chunk_ends(5, -1))
    with pytest.raises(SteerkitError, match="'median'"):
        StudyConfig("s", "sqlite:///x.db", pruner="median")  # type: ignore[arg-type]


def test_study_name_is_readable_and_hash_decided():
    facts = {"layer": 18, "model": "smollm2-135m-instruct"}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:8]
    name = study_name("auto", "n50-scale", facts, label=["hf:HuggingFaceTB/SmolLM2-135M-Instruct", "L18"])
    assert name == f"n50-scale-smollm2-135m-instruct-l18-{digest}"
    assert study_name("mine", "n50-scale", facts, suffix="correct") == "mine-correct"
    assert study_name("auto", "n50-scale", {**facts, "layer": 17}, label=["x"]) != study_name(
        "auto", "n50-scale", facts, label=["x"]
    )


def test_default_storage_is_a_fixed_file_not_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("STEERKIT_OPTUNA_STORAGE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    expected = f"sqlite:///{tmp_path / 'home' / '.steerkit' / 'optuna.db'}"
    assert default_storage() == expected and StudyConfig("s", n_trials=1).storage == expected
    run_study(lambda t: t.suggest_float("x", 0, 1), StudyConfig("s", n_trials=1), track=False)
    assert (tmp_path / "home" / ".steerkit" / "optuna.db").is_file() and not (tmp_path / "optuna.db").exists()


def test_sweep_scales_with_pruning_matches_without(tracking_dir):
    """The chunked (pruning) path gives every trial the value the one-pass path gives; the name is readable."""
    sweep = script("sweep_scales")
    argv = ["--model", "tiny-llama", "--layer", "2", "--grid", "1.0,3.0", "--limit", "4", "--max-new-tokens", "4"]
    argv += ["--batch-size", "2", "--corpus", str(ROOT / "corpus" / "generation_prompts_n50.json")]
    argv += ["--allow-underpowered", "true"]  # 4 prompts: the design gate would refuse (tested elsewhere)
    sweep.main([*argv, "--study-name", "plain"])
    sweep.main([*argv, "--pruner", "wilcoxon"])
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = {r.data.params["pruner"]: r for r in runs if r.data.tags[tracking.TAG_ENTRY_POINT] == "sweep_scales"}
    assert re.fullmatch(r"n50-scale-tiny-llama-l2-[0-9a-f]{8}", parents["wilcoxon"].data.params["resolved_study_name"])
    values = {}
    for pruner, parent in parents.items():
        trials = tracking.child_runs(parent.info.run_id)
        values[pruner] = {t.data.params["scale"]: t.data.metrics["new_test_rate_gain"] for t in trials}
        assert {t.info.status for t in trials} == {"FINISHED"}
    assert values["wilcoxon"] == values["none"] and len(values["none"]) == 2
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents["wilcoxon"].info.run_id, "optuna")}
    assert {"optuna/plots.html", "optuna/intermediate_values.png"} <= artifacts
    html = Path(
        mlflow.artifacts.download_artifacts(run_id=parents["wilcoxon"].info.run_id, artifact_path="optuna/plots.html")
    )
    assert "plotly" in html.read_text() and "Plotly.newPlot" in html.read_text()


PRIVATE = re.compile(r"\._storage\b|\._trial_id\b|\._study_id\b|\boptuna\._")


def test_no_private_optuna_api_in_steerkit_or_experiments():
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for folder in ("steerkit", "experiments")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert hits == []


class FakeContext:
    """A `selection.Context` stand-in: every baseline fails; coefficient c corrects the tasks in PASSES[c]."""

    PASSES = {1.0: lambda i: i % 2 == 0, 3.0: lambda i: i % 3 == 0, HOPELESS: lambda i: False}

    def __init__(self, n: int) -> None:
        self.problems = list(range(n))
        self.ran: dict[float, int] = {}
        self.pregenerated: list[list[float]] = []

    def pregenerate(self, arm, coefs):  # the real one generates every grid coefficient in one pass
        self.pregenerated.append(list(coefs))

    def log(self, name: str) -> None:
        return None

    def run(self, arm, coef, log_name, problems=None, log=None):
        from steerkit.sae.arms import compare

        self.ran[coef] = self.ran.get(coef, 0) + len(problems)
        base = {"passed": False, "completion": "x", "token_ids": [1], "status": "ok"}
        rows = []
        for i in problems:
            ok = self.PASSES[coef](i)
            steered = {"task_id": i, "passed": ok, "completion": "x", "token_ids": [1], "status": "ok"}
            steered |= {"error_kind": "", "syntax_ok": True, "code": "x = 1\n"}
            rows.append(compare(base, steered, arm, coef))
        return rows


def test_select_coefficients_objective_prunes_a_hopeless_coefficient(tmp_path):
    """`CoefficientObjective` (select_coefficients' objective) reports per-task corrections; the hopeless one stops."""
    from steerkit.sae.selection import CoefficientObjective

    grid = [1.0, 3.0, HOPELESS]
    limits = {"n_examples": 1, "min_similarity": 0.0, "max_syntax_error": 1.0}
    best = {}
    for pruner, every in (("none", 0), ("wilcoxon", 2)):
        ctx = FakeContext(24)
        objective = CoefficientObjective(ctx, "arm", "correction_rate", grid, "grid", limits | {"prune_every": every})
        config = StudyConfig(pruner, f"sqlite:///{tmp_path}/s.db", ("maximize",), "grid", {"coefficient": grid}, 1,
                             pruner=pruner)  # type: ignore[arg-type]  # fmt: skip
        study = run_study(objective, config, track=False)
        best[pruner] = (study.best_params, study.best_value)
        states = {t.params["coefficient"]: t.state.name for t in study.trials}
        if pruner == "wilcoxon":
            assert [t.params["coefficient"] for t in study.trials][0] != HOPELESS  # precondition (seed 1)
            assert states[HOPELESS] == "PRUNED" and ctx.ran[HOPELESS] < 12 and ctx.ran[1.0] == 24
            assert ctx.pregenerated == []  # a pruned search generates chunk by chunk
        else:
            assert set(states.values()) == {"COMPLETE"} and set(ctx.ran.values()) == {24}
            assert ctx.pregenerated == [grid]  # once, before the first trial ran
    assert best["wilcoxon"] == best["none"] == ({"coefficient": 1.0}, 0.5)


def test_bad_pruner_parameters_name_the_value():
    from steerkit.cli import kwargs_for
    from steerkit.sae.selection import resolve_options

    args = script("select_coefficients").parse_args(["--features-run-id", "x", "--pruner", "median"])
    with pytest.raises(SteerkitError, match="pruner.*'median'"):
        resolve_options(**kwargs_for(resolve_options, args))
    args = script("select_coefficients").parse_args(
        ["--features-run-id", "x", "--pruner", "wilcoxon", "--prune-every", "0"]
    )
    with pytest.raises(SteerkitError, match="prune_every"):
        resolve_options(**kwargs_for(resolve_options, args))
    with pytest.raises(SteerkitError, match="prune_p"):
        StudyConfig("s", "sqlite:///x.db", pruner="wilcoxon", prune_p=1.5, n_trials=1)
