"""refusal_sweep end to end on a tiny model: nested runs, summary.csv, plots, identity check, bad configs."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from steerkit import tracking
from steerkit.errors import SteerkitError
from steerkit.refusal.config import SweepConfig, load_sweep_config
from steerkit.refusal.judges import REFUSAL_LABELS, load_judge_labels
from steerkit.refusal.report import SPLITS
from tests.conftest import script

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "corpus" / "refusal" / "judge_heldout.jsonl"

refusal_sweep = script("refusal_sweep")

TINY = """name: tiny
layers: [1, 2]
interventions:
  add: [0.0, 0.5]
  ablate: [1.0]
prompts_per_split: 2
direction_prompts: 8
max_new_tokens: 4
batch_size: 6
norm_threshold: 0.01
direction_alpha: 1.0
controls: [random, shuffled]
"""
# direction_alpha 1.0 switches the permutation check off: the tiny random model's harmful-vs-benign direction from
# 8 prompts per set is no longer than label-shuffled ones (p ~ 0.6 at layers 1 and 2), so the default rejects it
# (`test_bad_input_one_line_exit_2_run_failed` checks that).


def _config(tmp_path: Path, text: str = TINY) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def _args(cfg: str, *extra: str) -> list[str]:
    return ["--config", cfg, "--model", "tiny-llama", "--corpus-dir", str(ROOT / "corpus" / "refusal"), *extra]


@pytest.mark.parametrize("level", ["smoke", "layer_test", "alpha_sweep", "full"])
def test_shipped_levels_load(level):
    cfg = load_sweep_config(ROOT / "experiments" / "configs" / f"{level}.yaml")
    assert cfg.name == level and cfg.conditions()


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"alpah": 1}, "unknown keys in config: alpah"),
        ({"interventions": {"ablate": [2.0]}}, "ablate alpha must be in [0, 1]"),
        ({"interventions": {"steer": [1.0]}}, "unknown intervention 'steer'"),
        ({"layers": []}, "layers must be"),
        ({"hook": "resid_mid"}, "resid_mid"),
        ({"controls": ["noise"]}, "noise"),
        ({"prompts_per_split": -1}, "prompts_per_split"),
    ],
)
def test_config_validation_names_the_bad_value(patch, needle):
    data = {"name": "x", "layers": [1], "interventions": {"add": [0.1]}, **patch}
    with pytest.raises(SteerkitError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        SweepConfig.from_dict(data)


def test_sweep_logs_nested_runs_summary_and_plots(tracking_dir, tmp_path):
    refusal_sweep.main(_args(_config(tmp_path), "--judge", "both", "--allow-underpowered", "true"))
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    # baseline + 2 layers x (add 0.5, ablate 1.0) x (refusal, random, shuffled); alpha 0 is the shared baseline
    assert len(children) == 1 + 2 * 2 * 3
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    m = parent.data.metrics
    assert m["identity_max_abs_logit_diff"] == 0.0 and m["identity_identical_fraction"] == 1.0
    assert "cos_train_test_L1" in m and "direction_norm_ratio_L2" in m and "judge_rule_refusal_accuracy" in m
    assert {f"n_prompts_{s}": m[f"n_prompts_{s}"] for s in SPLITS} == {f"n_prompts_{s}": 2 for s in SPLITS}
    assert "judge_llm_refusal_accuracy" in m and "judge_llm_heldout_refusal_accuracy" in m
    cells = [f"judge_rule_heldout_refusal_gold_{g}_pred_{p}" for g in REFUSAL_LABELS for p in REFUSAL_LABELS]
    assert sum(m[c] for c in cells) == m["judge_rule_heldout_refusal_n"] == len(load_judge_labels(HELDOUT))
    client = mlflow.MlflowClient()
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    files |= {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
    assert {
        "summary.csv",
        "summary_harm_test.csv",
        "summary_benign_test.csv",
        "paired_tests_harm_test.csv",
        "directions.csv",
        "selection.json",
        "judge_validation.json",
    } <= files
    assert {"plots/tradeoff.png", "plots/heatmap_add.png", "plots/heatmap_ablate.png"} <= files
    assert "plots/generalisation_gap.png" in files
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="summary.csv")
    summary = pd.read_csv(local)
    assert set(summary.split) == set(SPLITS) and (summary.n == 2).all()
    assert {"refusal_rate", "refusal_rate_low", "helpful_rate_high", "degenerate_rate", "median_tokens"} <= set(
        summary.columns
    )
    assert set(summary.direction) == {"none", "refusal", "random", "shuffled"}
    child = next(c for c in children if c.data.tags["steerkit.condition"] == "add_L1_a0.5_refusal")
    assert child.data.params["coef"] != "0.0" and "refusal_rate_harm_test" in child.data.metrics
    table = mlflow.load_table("samples.json", run_ids=[child.info.run_id])
    assert len(table) == 8 and {"rule_refusal", "llm_refusal", "refusal", "text"} <= set(table.columns)


@pytest.mark.parametrize(
    ("extra", "text", "needle"),
    [
        ((), TINY.replace("norm_threshold: 0.01", "norm_threshold: 1.0"), "no layer passed the direction checks"),
        ((), TINY.replace("direction_alpha: 1.0\n", ""), "> alpha 0.05: no longer than label-shuffled directions"),
        ((), TINY.replace("layers: [1, 2]", "layers: [9]"), "layer 9 out of range"),
        ((), TINY + "alpah: 3\n", "alpah"),
        (("--judge", "gpt4"), TINY, "gpt4"),
        (("--limit", "2.5"), TINY, "2.5"),
    ],
)
def test_bad_input_one_line_exit_2_run_failed(tracking_dir, tmp_path, monkeypatch, capsys, extra, text, needle):
    monkeypatch.setattr(sys, "argv", ["refusal_sweep", *_args(_config(tmp_path, text), *extra)])
    with pytest.raises(SystemExit) as exc:
        tracking.entry_point(refusal_sweep.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1]
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"


def test_conditions_decoded_together_give_each_conditions_own_records(tmp_path, monkeypatch):
    """`Runner.run_group` (several conditions in one `generate_arms` pass, decoded as one batch) logs, condition by
    condition, exactly the records `Runner.run` gives each condition alone (its own `generate` call)."""
    import torch

    from steerkit.core.models import load_model
    from steerkit.refusal import sweep
    from steerkit.refusal.direction import build_interventions

    cfg = load_sweep_config(_config(tmp_path, TINY.replace("max_new_tokens: 4", "max_new_tokens: 10")))
    loaded = load_model("tiny-llama")
    items = sweep.eval_prompts(sweep.load_corpora(str(ROOT / "corpus" / "refusal")), 3)
    vecs = [torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    n = loaded.n_layers
    specs = [("add_a", "add", 1, 6.0), ("ablate_b", "ablate", 2, 1.0), ("add_c", "add", 2, 0.0)]
    group = [
        ({"condition": name, "coef": a}, build_interventions(kind, layer, vec, a, 1.0, n, cfg.hook))
        for (name, kind, layer, a), vec in zip(specs, vecs)
    ]
    alone = sweep.Runner(loaded, cfg, items, "rule")
    for meta, hooks in group:
        alone.run(meta, hooks)
    together = sweep.Runner(loaded, cfg, items, "rule")
    monkeypatch.setattr(sweep, "generate", None)  # the group must not fall back to one generate per condition
    together.run_group(group)
    key = lambda r: (r["condition"], r["prompt_id"])  # noqa: E731  (a group logs in prompt order, `run` in batch order)
    assert sorted(together.records, key=key) == sorted(alone.records, key=key)
    assert len({key(r) for r in alone.records}) == 3 * len(items)
    texts = {c: [r["text"] for r in alone.records if r["condition"] == c] for c in ("add_a", "add_c")}
    assert texts["add_a"] != texts["add_c"]  # precondition: the steering changes completions
