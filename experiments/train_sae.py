"""Entry point `train_sae`: train a small SAE on the embedded model's residual stream, offline, and judge it.

Residual activations at one layer and hook point (`resid_post` = the block's output by default; the SAE records
it and refuses to steer anywhere else) are collected with `steerkit.core.activations.token_residuals` (first token
skipped) over the project's corpora plus Python standard-library sources, cut into token windows. Whole
windows are held out for validation. Logged: the resolved config, model facts, token counts, every text file
with its SHA-256, the training curve, held-out reconstruction (MSE, explained variance, L0, dead fraction), and
the next-token loss with the residual replaced by the SAE reconstruction vs clean vs zero ablation (CE increase,
fraction of loss recovered), with the identity splice as the control (its CE change must be 0). The SAE is
saved SAELens-style as the artefact directory `sae/`: `load_sae(tracking.local_artifact("runs:/<run_id>/sae"))`.

Usage: mlflow run . -e train_sae --env-manager local   (or python experiments/train_sae.py --tokens 8192)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from steerkit import tracking
from steerkit.cli import as_bool, as_float, as_int, as_layer
from steerkit.core.activations import token_residuals
from steerkit.core.models import LoadedModel, load_model
from steerkit.errors import SteerkitError
from steerkit.interventions.residual import HOOK_POINTS
from steerkit.sae import ACTIVATIONS, SAE, SAEConfig, TrainConfig, load_sae, sae_metrics, spliced_loss, train_sae
from steerkit.sae.data import Window, split_windows, token_windows

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_sae", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
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
    p.add_argument("--seed", default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def build_configs(args: argparse.Namespace, loaded: LoadedModel, layer: int) -> tuple[SAEConfig, TrainConfig]:
    if args.hook not in HOOK_POINTS:
        raise SteerkitError(f"unknown hook point {args.hook!r} (choose from {', '.join(HOOK_POINTS)})")
    if args.activation not in ("topk", "relu"):
        raise SteerkitError(f"activation must be topk or relu for training, got {args.activation!r} ({ACTIVATIONS})")
    d_sae = 4 * loaded.d_model if args.d_sae == "auto" else as_int("d_sae", args.d_sae, 1)
    cfg = SAEConfig(
        d_in=loaded.d_model,
        d_sae=d_sae,
        activation=args.activation,
        k=as_int("k", args.k, 1) if args.activation == "topk" else None,
        layer=layer,
        hook=args.hook,
        model=loaded.spec,
    )
    train = TrainConfig(
        lr=as_float("lr", args.lr, 0.0),
        batch_size=as_int("batch_size", args.batch_size, 1),
        epochs=as_float("epochs", args.epochs, 0.0),
        l1_coefficient=as_float("l1_coefficient", args.l1_coefficient, 0.0),
        seed=as_int("seed", args.seed),
    )
    return cfg, train


def collect(loaded: LoadedModel, windows: list[Window], cfg: SAEConfig, batch_size: int) -> torch.Tensor:
    """Residuals `[n_tokens, d_model]` at the SAE's layer/hook over `windows`, first token of each skipped.

    Windows go longest first, so batches hold similar lengths (little padding); row order does not matter to
    training, which shuffles.
    """
    prompts = [w.as_prompt() for w in sorted(windows, key=lambda w: -w.n_tokens)]
    acts = token_residuals(loaded, prompts, cfg.layer, hook=cfg.hook, batch_size=batch_size, skip_first=True)
    return torch.cat(acts)


def log_sae_dir(sae: SAE) -> Path:
    """Save the SAE, check it reloads to the same function, and log its files as the artefact dir `sae/`."""
    directory = sae.save(Path(tempfile.mkdtemp(prefix="steerkit-sae-")) / "sae")
    for path in sorted(directory.iterdir()):
        tracking.log_artifact(path, "sae")
    return directory


def figure(history: list[dict[str, float]], density: torch.Tensor) -> Any:
    from steerkit.plots import plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [h["step"] for h in history]
    axes[0].plot(steps, [h["mse"] for h in history])
    axes[0].set(xlabel="step", ylabel="reconstruction error (normalised units)", yscale="log")
    axes[1].plot(steps, [h["explained_variance"] for h in history], label="explained variance")
    axes[1].plot(steps, [h["dead_fraction"] for h in history], label="dead fraction")
    axes[1].set(xlabel="step", ylim=(0, 1))
    axes[1].legend()
    axes[2].hist(torch.log10(density.clamp_min(1e-7)).numpy(), bins=50)
    axes[2].set(xlabel="log10 firing frequency (held-out; -7 = never)", ylabel="features")
    fig.tight_layout()
    return fig


def firing_frequency(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """Fraction of rows `[n, d_in]` on which each feature fires, `[d_sae]`."""
    with torch.no_grad():
        return torch.cat([(sae.encode(x[i : i + 4096]) > 0).float() for i in range(0, x.shape[0], 4096)]).mean(0)


def prepare(args: argparse.Namespace) -> tuple[LoadedModel, SAEConfig, TrainConfig, list[Window], list[Window]]:
    """Model, configs and the train/validation windows; logs the resolved config and the corpus files."""
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    cfg, train = build_configs(args, loaded, as_layer("layer", args.layer, loaded))
    corpus = Path(args.corpus) if Path(args.corpus).is_absolute() else REPO / args.corpus
    windows, files = token_windows(
        loaded.tokenizer,
        corpus,
        stdlib=as_bool("stdlib", args.stdlib),
        budget_tokens=as_int("tokens", args.tokens, 64),
        window=as_int("window", args.window, 16),
        corpus_fraction=as_float("corpus_fraction", args.corpus_fraction, 0.0),
        seed=train.seed,
    )
    train_w, val_w = split_windows(windows, as_float("val_fraction", args.val_fraction), train.seed)
    corpus_sha = hashlib.sha256(json.dumps(sorted((f["path"], f["sha256"]) for f in files)).encode()).hexdigest()
    tracking.log_json({"files": files, "python": sys.version}, "corpus_files.json")
    tracking.log_params(
        {
            "resolved_layer": cfg.layer,
            "hook_name": cfg.hook_name,
            "resolved_d_sae": cfg.d_sae,
            "sae_config": cfg.to_dict(),
            "train_config": train.to_dict(),
            "corpus_sha256": corpus_sha,
            "n_files": len(files),
            "n_windows_train": len(train_w),
            "n_windows_val": len(val_w),
            "python_version": sys.version.split()[0],
            **{f"model_{k}": v for k, v in loaded.describe().items()},
        }
    )
    return loaded, cfg, train, train_w, val_w


def splice_eval(loaded: LoadedModel, sae: SAE, windows: list[Window]) -> dict[str, float]:
    """Spliced next-token loss on held-out `windows`, per-window rows streamed to `samples/spliced_loss.jsonl`."""
    log = tracking.SampleLog("spliced_loss")

    def on_rows(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            log.append(row)
        log.flush()

    sources = {w.id: w.source for w in windows}
    ce, rows = spliced_loss(loaded, [w.as_prompt() for w in windows], sae, on_rows=on_rows)
    tracking.log_table([{**r, "source": sources[r["id"]]} for r in rows], "samples.json")
    return {("ce_n_tokens" if k == "n_tokens" else k): v for k, v in ce.items()}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("train_sae", vars(args), experiment=args.experiment):
        t_start = time.perf_counter()
        loaded, cfg, train, train_w, val_w = prepare(args)
        collect_batch = as_int("collect_batch_size", args.collect_batch_size, 1)
        ce_limit = as_int("ce_windows", args.ce_windows, 0)
        times = {"collect_seconds": time.perf_counter()}
        x_train, x_val = collect(loaded, train_w, cfg, collect_batch), collect(loaded, val_w, cfg, collect_batch)
        tracking.log_params({"n_tokens_train": x_train.shape[0], "n_tokens_val": x_val.shape[0]})

        def on_step(record: dict[str, float]) -> None:
            tracking.log_metrics({f"train_{k}": v for k, v in record.items() if k != "step"}, step=int(record["step"]))

        times["train_seconds"] = time.perf_counter()
        sae, history = train_sae(x_train, cfg, train, on_step=on_step)
        times["ce_seconds"] = time.perf_counter()
        ce = splice_eval(loaded, sae, val_w[:ce_limit] if ce_limit else val_w)
        times["end"] = time.perf_counter()
        directory = log_sae_dir(sae)
        with torch.no_grad():
            reload_diff = float((load_sae(directory)(x_val[:256]) - sae(x_val[:256])).abs().max())
        density = firing_frequency(sae, x_val)
        tracking.log_json({"firing_frequency_val": density.tolist()}, "feature_density.json")
        tracking.log_figure(figure(history, density), "training.png")
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
        keys = (
            *("val_explained_variance", "val_l0", "val_dead_fraction", "ce_clean", "ce_sae", "ce_zero"),
            *("fraction_recovered", "identity_max_abs_ce_diff", "total_seconds"),
        )
        print(json.dumps({"run_id": tracking.active_run_id(), **{k: metrics[k] for k in keys}}))


if __name__ == "__main__":
    tracking.entry_point(main)
