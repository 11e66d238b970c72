"""Entry point `train_sae`: train a small SAE on the embedded model's residual stream, offline, and judge it.

Residuals at one layer and hook point (`resid_post` by default; the SAE records it and refuses to steer anywhere
else) over the project's corpora plus Python standard-library sources, cut into token windows (`steerkit.sae.fit`);
whole windows are held out. MBPP problems (text, solution) are kept out by task id (`holdout`: "all" records with a
task id, a baseline run id = its validation split, or "none"); the ids that reached training are saved with the SAE
(`training_task_ids.json`); find_features refuses an SAE trained on a validation problem. Logged: the resolved
config, every text file with its SHA-256, the training curve, held-out reconstruction (MSE, explained variance, L0,
dead fraction), and the next-token loss with the residual replaced by the reconstruction vs clean vs zero ablation,
with the identity splice as the control (CE change 0, else the run fails). SAE: `runs:/<id>/sae` (SAELens format).

Usage: mlflow run . -e train_sae --env-manager local   (or python experiments/train_sae.py --tokens 8192)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from steerkit import cli, tracking
from steerkit.core.checks import require_identity
from steerkit.core.models import LoadedModel, load_model
from steerkit.interventions.residual import HOOK_POINTS
from steerkit.sae import SAE, SAEConfig, TrainConfig, fit, load_sae, pipeline, sae_metrics, spliced_loss, train_sae
from steerkit.sae.data import Window, drop_task_ids, task_ids
from steerkit.sae.loaders import save_saelens
from steerkit.sae.reports import plot_training

REPO = Path(__file__).resolve().parents[1]  # `corpus` is relative to the checkout


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("train_sae", __doc__)
    cli.add_model_args(p)
    p.add_argument("--layer", default="auto", help="block index, or 'auto' = round(0.6 * n_layers)")
    p.add_argument("--hook", default="resid_post", help=", ".join(HOOK_POINTS))
    p.add_argument("--tokens", default=16384, help="total token budget (train + validation windows)")
    p.add_argument("--window", default=128, help="tokens per text window")
    p.add_argument("--val-fraction", default=0.1, help="fraction of windows held out")
    p.add_argument("--ce-windows", default=32, help="held-out windows scored for spliced loss (0 = all)")
    p.add_argument("--d-sae", default="auto", help="features, or 'auto' = 4 * d_model")
    p.add_argument("--activation", default="topk", help="topk or relu")
    p.add_argument("--k", default=32, help="features kept per token (topk)")
    p.add_argument("--l1-coefficient", default=1.0, help="L1 weight (relu)")
    p.add_argument("--lr", default=1e-3)
    p.add_argument("--epochs", default=8.0)
    p.add_argument("--batch-size", default=512, help="tokens per training step")
    p.add_argument("--collect-batch-size", default=16, help="windows per forward pass")
    p.add_argument("--stdlib", default="true", help="add Python standard-library sources to the corpora")
    p.add_argument("--corpus", default="corpus", help="directory of *.json / *.jsonl corpora")
    p.add_argument("--corpus-fraction", default=0.5, help="share of the token budget the corpora may fill")
    p.add_argument("--holdout", default="all", help="task ids kept out: all, none, or a baseline run id")
    p.add_argument("--seed", default=0)
    cli.add_run_args(p, output=False)
    return p.parse_args(argv)


def log_sae_dir(sae: SAE, windows: list[Window]) -> Path:
    """Save the SAE with the task ids of its training text, and log its files as the artefact dir `sae/`."""
    directory = save_saelens(sae, Path(tempfile.mkdtemp(prefix="steerkit-sae-")) / "sae")
    (directory / pipeline.TRAINED_IDS_FILE).write_text(json.dumps({"task_ids": task_ids(windows)}))
    for path in sorted(directory.iterdir()):
        tracking.log_artifact(path, "sae")
    return directory


def prepare(args: Any) -> tuple[LoadedModel, SAEConfig, TrainConfig, list[Window], list[Window]]:
    """Model, configs and the train/validation windows; logs the resolved config and the corpus files."""
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
    layer = cli.as_layer("layer", args.layer, loaded)
    cfg, train = fit.build_configs(loaded, layer, **cli.kwargs_for(fit.build_configs, args))
    corpus = Path(args.corpus) if Path(args.corpus).is_absolute() else REPO / args.corpus
    train_w, val_w, files = fit.windows(loaded.tokenizer, corpus, train.seed, **cli.kwargs_for(fit.windows, args))
    held = pipeline.holdout_ids(args.holdout, lambda run: tracking.phase_record(run, "baseline", pipeline.SPLITS_FILE))
    train_w, val_w = drop_task_ids(train_w, held), drop_task_ids(val_w, held)
    tracking.log_json({"files": files, "python": sys.version}, "corpus_files.json")
    tracking.log_params(
        {
            "resolved_layer": cfg.layer,
            "hook_name": cfg.hook_name,
            "resolved_d_sae": cfg.d_sae,
            "sae_config": cfg.to_dict(),
            "train_config": train.to_dict(),
            "corpus_sha256": fit.files_sha256(files),
            "n_files": len(files),
            "n_windows_train": len(train_w),
            "n_windows_val": len(val_w),
            "n_holdout_ids": "all" if held is None else len(held),
            "python_version": sys.version.split()[0],
            **loaded.params(),
        }
    )
    return loaded, cfg, train, train_w, val_w


def splice_eval(loaded: LoadedModel, sae: SAE, windows: list[Window]) -> dict[str, float]:
    """Spliced next-token loss on held-out `windows`, per-window rows streamed to `samples/spliced_loss.jsonl`."""
    log = tracking.SampleLog("spliced_loss")
    sources = {w.id: w.source for w in windows}
    ce, rows = spliced_loss(loaded, [w.as_prompt() for w in windows], sae, on_rows=log.extend)
    tracking.log_table([{**r, "source": sources[r["id"]]} for r in rows], "samples.json")
    return {("ce_n_tokens" if k == "n_tokens" else k): v for k, v in ce.items()}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("train_sae", vars(args), experiment=args.experiment):
        t_start = time.perf_counter()
        loaded, cfg, train, train_w, val_w = prepare(args)
        collect_batch = cli.as_int("collect_batch_size", args.collect_batch_size, 1)
        ce_limit = cli.as_int("ce_windows", args.ce_windows, 0)
        times = {"collect_seconds": time.perf_counter()}
        x_train, x_val = (fit.collect(loaded, w, cfg, collect_batch) for w in (train_w, val_w))
        tracking.log_params({"n_tokens_train": x_train.shape[0], "n_tokens_val": x_val.shape[0]})

        def on_step(record: dict[str, float]) -> None:
            tracking.log_metrics({f"train_{k}": v for k, v in record.items() if k != "step"}, step=int(record["step"]))

        times["train_seconds"] = time.perf_counter()
        sae, history = train_sae(x_train, cfg, train, on_step=on_step)
        times["ce_seconds"] = time.perf_counter()
        ce = splice_eval(loaded, sae, val_w[:ce_limit] if ce_limit else val_w)
        times["end"] = time.perf_counter()
        directory = log_sae_dir(sae, train_w + val_w)
        reload_diff = fit.reload_diff(sae, load_sae(directory), x_val[:256])
        density = fit.firing_frequency(sae, x_val)
        tracking.log_json({"firing_frequency_val": density.tolist()}, "feature_density.json")
        tracking.log_figure(plot_training(history, density), "training.png")
        stamps = list(times.values())
        metrics = {
            **{f"val_{k}": v for k, v in sae_metrics(sae, x_val).items()},
            **{f"train_final_{k}": v for k, v in sae_metrics(sae, x_train).items()},
            **ce,
            "reload_max_abs_diff": reload_diff,
            **{name: stamps[i + 1] - stamps[i] for i, name in enumerate(list(times)[:-1])},
            "total_seconds": time.perf_counter() - t_start,
        }
        tracking.log_metrics(metrics)
        require_identity(metrics)  # the identity splice (the SAE's error added back) equals the clean model exactly
        keys = ["val_explained_variance", "val_l0", "val_dead_fraction", "ce_clean", "ce_sae", "ce_zero"]
        keys += ["fraction_recovered", "identity_max_abs_ce_diff", "total_seconds"]
        print(json.dumps({"run_id": tracking.active_run_id(), **{k: metrics[k] for k in keys}}))


if __name__ == "__main__":
    tracking.entry_point(main)
