"""The `train_sae` entry point (tiny model, tiny token budget) and its offline text windows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from steerkit import tracking
from steerkit.core.models import load_model
from steerkit.errors import SteerkitError
from steerkit.sae import fit, load_sae, pipeline
from steerkit.sae.data import corpus_documents, drop_task_ids, split_windows, token_windows

REPO = Path(__file__).resolve().parents[1]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("train_sae_script", REPO / "experiments" / "train_sae.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_sae_script"] = module
    spec.loader.exec_module(module)
    return module


def test_corpus_documents_reads_text_fields_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"name": "x", "items": [{"code": "def f(): pass", "id": "1"}]}))
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "hello", "text": "world"}) + "\n\n")
    (tmp_path / "c.txt").write_text("ignored")
    docs = corpus_documents(tmp_path)
    assert [d.text for d in docs] == ["def f(): pass", "hello", "world"]
    (tmp_path / "d.json").write_text("{broken")
    with pytest.raises(SteerkitError, match="d.json"):
        corpus_documents(tmp_path)


def test_corpus_documents_reads_through_the_corpus_loader(tmp_path: Path) -> None:
    """Bad corpus files fail with the one corpus loader's messages (steerkit.corpora.loader): the broken line of a
    JSON-lines file by its number, non-UTF-8 bytes as a one-line SteerkitError."""
    lines = [json.dumps({"text": "one"}), json.dumps({"text": "two"}), "{broken"]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SteerkitError, match=r"a\.jsonl line 3: invalid JSON"):
        corpus_documents(tmp_path)
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(SteerkitError, match=r"malformed corpus file .*a\.jsonl: not UTF-8"):
        corpus_documents(tmp_path)


def test_token_windows_budget_files_and_split() -> None:
    tok = load_model("tiny-llama").tokenizer
    windows, files = token_windows(tok, REPO / "corpus", budget_tokens=3000, window=64, seed=0)
    assert sum(w.n_tokens for w in windows) <= 3000
    assert all(16 <= w.n_tokens <= 64 for w in windows)
    assert {w.source for w in windows} == {f["path"] for f in files}
    assert all(len(f["sha256"]) == 64 for f in files)
    again, _ = token_windows(tok, REPO / "corpus", budget_tokens=3000, window=64, seed=0)
    assert again == windows
    train, val = split_windows(windows, 0.25, seed=0)
    assert not {w.id for w in train} & {w.id for w in val}
    assert len(train) + len(val) == len(windows) and len(val) == round(0.25 * len(windows))
    only_stdlib, files = token_windows(tok, None, budget_tokens=500, window=64)
    assert {f["kind"] for f in files} == {"stdlib"}


def test_main_tiny_model_logs_a_loadable_sae(tracking_dir: Path) -> None:
    script = _script()
    argv = ["--model", "tiny-llama", "--tokens", "1500", "--window", "48", "--epochs", "2", "--layer", "1"]
    script.main([*argv, "--d-sae", "64", "--k", "8", "--ce-windows", "4", "--experiment", "t"])
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.status == "FINISHED"
    m, p = run.data.metrics, run.data.params
    assert m["identity_max_abs_ce_diff"] == 0.0 and m["reload_max_abs_diff"] == 0.0
    assert 0.0 <= m["val_dead_fraction"] <= 1.0 and m["val_l0"] <= 8.0
    assert p["hook_name"] == "blocks.1.hook_resid_post" and p["resolved_d_sae"] == "64"
    assert int(p["n_tokens_train"]) > 0 and int(p["n_tokens_val"]) > 0
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_mse")
    assert len(history) >= 2
    sae = load_sae(tracking.local_artifact(f"runs:/{run.info.run_id}/sae"))
    assert (sae.cfg.layer, sae.cfg.hook, sae.cfg.d_sae, sae.cfg.k, sae.cfg.model) == (
        1,
        "resid_post",
        64,
        8,
        "tiny-llama",
    )
    assert torch.isfinite(sae.W_dec).all()
    samples = mlflow.load_table("samples.json", run_ids=[run.info.run_id])
    assert len(samples) == min(4, int(p["n_windows_val"])) and (samples["ce_identity"] == samples["ce_clean"]).all()


def test_a_non_zero_identity_splice_fails_the_run(tracking_dir: Path, monkeypatch) -> None:
    # The identity splice's CE must equal the clean CE exactly; plant a difference and the run must end FAILED.
    script = _script()
    real = script.splice_eval
    monkeypatch.setattr(script, "splice_eval", lambda *a: {**real(*a), "identity_max_abs_ce_diff": 1e-7})
    argv = ["--model", "tiny-llama", "--tokens", "1500", "--window", "48", "--epochs", "1", "--layer", "1"]
    with pytest.raises(SteerkitError, match="identity_max_abs_ce_diff = 1e-07"):
        script.main([*argv, "--d-sae", "64", "--k", "8", "--ce-windows", "4", "--experiment", "t"])
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and run.data.metrics["identity_max_abs_ce_diff"] == 1e-7


def test_main_bad_value_fails_the_run(tracking_dir: Path) -> None:
    script = _script()
    with pytest.raises(SteerkitError, match="resid_mid"):
        script.main(["--model", "tiny-llama", "--hook", "resid_mid", "--experiment", "t"])
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.status == "FAILED"


def _problem_corpus(directory: Path, ids: range) -> Path:
    directory.mkdir()
    rows = [
        {
            "task_id": k,
            "text": f"Write a function named wombat{k} that returns the quokka{k} count of items in a list, "
            "counting each item once, carefully and slowly, without changing the list.",
            "code": f"def wombat{k}(items):\n    # numbat{k}: count the items one by one\n    total = 0\n"
            "    for _ in items:\n        total += 1\n    return total\n",
        }
        for k in ids
    ]
    (directory / "problems.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return directory


def test_windows_carry_task_ids_and_holdout_drops_by_id(tmp_path: Path) -> None:
    corpus = _problem_corpus(tmp_path / "c", range(1, 4))
    assert [(d.task_id, d.text[:7]) for d in corpus_documents(corpus)][:2] == [(1, "Write a"), (1, "def wom")]
    tok = load_model("tiny-llama").tokenizer
    windows, _ = token_windows(tok, corpus, stdlib=False, budget_tokens=2000, window=64)
    assert {w.task_id for w in windows} == {1, 2, 3}
    assert drop_task_ids(windows, None) == [] and drop_task_ids(windows, set()) == windows
    assert {w.task_id for w in drop_task_ids(windows, {2})} == {1, 3}


def test_validation_problems_never_reach_the_training_activations(tracking_dir: Path, monkeypatch) -> None:
    corpus = _problem_corpus(tracking_dir / "corpus", range(1, 7))
    with tracking.tracked_run("baseline", {}, experiment="t"):
        splits = {"task_ids": {"sae": [1, 4], "hyper": [5], "validation": [2, 3, 6]}}
        tracking.log_text(json.dumps(splits), pipeline.SPLITS_FILE)
        baseline_id = tracking.active_run_id()
    seen: list[str] = []
    real = fit.token_residuals

    def spy(loaded, prompts, *a, **kw):  # type: ignore[no-untyped-def]
        seen.extend(p.text for p in prompts)
        return real(loaded, prompts, *a, **kw)

    monkeypatch.setattr(fit, "token_residuals", spy)
    argv = ["--model", "tiny-llama", "--tokens", "1500", "--window", "24", "--epochs", "1", "--layer", "1"]
    argv += ["--d-sae", "32", "--k", "4", "--ce-windows", "2", "--stdlib", "false", "--corpus", str(corpus)]
    _script().main([*argv, "--holdout", baseline_id, "--experiment", "t"])
    run = [
        r
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
        if r.data.tags.get("steerkit.entry_point") == "train_sae"
    ][0]
    assert run.info.status == "FINISHED" and seen
    text = "\n".join(seen)
    for k in (2, 3, 6):  # neither the problem text nor its solution
        assert f"wombat{k}" not in text and f"quokka{k}" not in text and f"numbat{k}" not in text
    assert all(f"wombat{k}" in text for k in (1, 4, 5))  # the others did reach training: the spy saw them
    sae_dir = tracking.local_artifact(f"runs:/{run.info.run_id}/sae")
    trained = json.loads((sae_dir / pipeline.TRAINED_IDS_FILE).read_text())["task_ids"]
    assert trained == [1, 4, 5]
    assert "checked" in pipeline.check_sae_holdout(sae_dir, splits)["steerkit.sae_holdout"]
    (sae_dir / pipeline.TRAINED_IDS_FILE).write_text(json.dumps({"task_ids": [1, 6]}))
    with pytest.raises(SteerkitError, match=r"trained on 1 validation problems \(task ids \[6\]\)"):
        pipeline.check_sae_holdout(sae_dir, splits)
