"""steerkit against plain Hugging Face `generate`, side by side in one process, and a dose sweep with and without
prefix sharing.

Rows (same prompts, greedy, same batch size; throughput = generated tokens / wall seconds, median of `--repeats`
rounds, every row once per round in turn, ratios paired within a round): plain HF `model.generate`; HF + a
hand-written residual hook; steerkit unsteered; steerkit `ResidualAdd` (the same vector at the same block); steerkit
`AttentionEdit(scale=3)`; a 5-dose sweep (scale 1 + four scales) as five independent `generate` calls, as one
`generate_arms` call sharing each prompt's prefix with the doses run one after another, and with the doses decoded
together in one batch. Token identity is checked where two rows must agree (steerkit vs HF, unsteered and
residual; each sweep vs each dose alone with the same prefill cut).

Usage: python bench/bench_peers.py [--prompts 16] [--max-new-tokens 128] [--batch-size 16] [--repeats 3]
       [--dtype float32] [--threads 0] [--model smollm2-135m-instruct] [--device cpu] [--no-sweep]
       [--output bench_peers.json]
Batch 1: --batch-size 1 --prompts 4 --no-sweep (one prompt at a time is slow on a CPU).
On a GPU: --device cuda --dtype bfloat16 (or auto), with any model `load_model` takes (an HF id or directory).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_generation import interleaved  # bench/ is the script's directory, first on sys.path

from steerkit.attention.edge_rules import attention_scale
from steerkit.core.arms import generate_arms, shared_prefix
from steerkit.core.generation import encode_prompts, generate
from steerkit.core.models import DEFAULT_MODEL, load_model
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.interventions import ResidualAdd

ROOT = Path(__file__).resolve().parents[1]
DOSES = (1.0, 2.0, 3.0, 4.0, 6.0)


def cpu_model() -> str:
    """The CPU model and whether it runs bf16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo as lscpu reads it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    name = fields.get("model name\t", fields.get("model name", "unknown")).strip()
    flags = fields.get("flags\t\t", fields.get("flags", "")).split()
    native_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return f"{name} (native bf16: {'yes' if native_bf16 else 'no'})"


def hf_generate(
    lm: Any, prompts: list[Any], batch: int, new: int, hook: Callable | None = None, **options: Any
) -> list[tuple]:
    """Plain `model.generate` on left-padded batches (optionally with a hand-written forward hook; `options` go
    to `generate`, e.g. `cache_implementation="static"`)."""
    tok, out = lm.tokenizer, []
    tok.padding_side = "left"
    encoded = encode_prompts(lm, prompts, chat=False)
    handle = lm.model.model.layers[hook[0]].register_forward_hook(hook[1]) if hook else None
    try:
        for b0 in range(0, len(encoded), batch):
            rows = encoded[b0 : b0 + batch]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + list(r.ids) for r in rows], device=lm.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=lm.device)
            with torch.inference_mode():
                gen = lm.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=new,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    **options,
                )
            for row in gen[:, width:].tolist():
                eos = {tok.eos_token_id}
                cut = next((i for i, t in enumerate(row) if t in eos or t == tok.pad_token_id), len(row))
                out.append(tuple(row[:cut]))
    finally:
        if handle is not None:
            handle.remove()
    return out


def _hand_hook(delta: torch.Tensor) -> Callable:
    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    return hook


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="any spec load_model takes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--no-sweep", action="store_true", help="only the single-arm rows")
    p.add_argument("--sweep-only", action="store_true", help="only the sweep rows")
    p.add_argument("--output", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    corpus = load_prompt_corpus(ROOT / "corpus" / "generation_prompts_n50.json")
    prompts = [cp.as_prompt() for cp in corpus.prompts[: args.prompts]]
    layer, bs, new = round(0.6 * lm.n_layers), args.batch_size, args.max_new_tokens
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    vec = (vec * (4.0 / float(vec.norm()))).to(lm.device)
    kw: dict[str, Any] = {"max_new_tokens": new, "batch_size": bs, "progress": False}
    generate(lm, prompts[:2], max_new_tokens=4, progress=False)  # warm-up

    def ours(ivs: list[Any], **extra: Any) -> list[tuple]:
        return [g.token_ids for g in generate(lm, prompts, interventions=ivs, **kw, **extra)]

    arms = {f"scale_{d}": [attention_scale("signature_to_doctest", layer, d)] for d in DOSES}
    split = shared_prefix(lm, prompts, arms)

    def sweep(mode: str) -> dict[str, list[tuple]]:
        out = generate_arms(lm, prompts, arms, batch_arms=mode, **kw)
        return {k: [g.token_ids for g in gens] for k, gens in out.items()}

    rows: dict[str, Callable[[], Any]] = (
        {}
        if args.sweep_only
        else {
            "hf_generate": lambda: hf_generate(lm, prompts, bs, new),
            "hf_hand_hook": lambda: hf_generate(lm, prompts, bs, new, (layer, _hand_hook(vec.to(lm.dtype)))),
            "steerkit_unsteered": lambda: ours([]),
            "steerkit_residual": lambda: ours([ResidualAdd(layer, vec, coef=1.0)]),
            "steerkit_attention_edit": lambda: ours([attention_scale("signature_to_doctest", layer, 3.0)]),
        }
    )
    if not args.no_sweep:
        rows["sweep_independent"] = lambda: {k: ours(v) for k, v in arms.items()}
        rows["sweep_shared_prefix"] = lambda: sweep("separate")
        rows["sweep_shared_prefix_arms_together"] = lambda: sweep("together")
    times, got = interleaved(rows, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, b: str) -> float:  # median over rounds of (b's time / a's time): a's speed relative to b
        return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))

    single = [k for k in rows if not k.startswith("sweep")]
    table: dict[str, Any] = {
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
        "model": args.model,
        "threads": torch.get_num_threads(),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "workload": {"prompts": len(prompts), "max_new_tokens": new, "batch_size": bs, "repeats": args.repeats},
        "timing": "rows interleaved round by round (odd rounds reversed); ratios are medians of per-round ratios",
    }
    if single:
        table |= {
            **{f"{k}_tok_s": sum(len(t) for t in got[k]) / med[k] for k in single},
            **{f"{k}_over_hf": paired(k, "hf_generate") for k in single if k != "hf_generate"},
            "residual_over_unsteered": paired("steerkit_residual", "steerkit_unsteered"),
            "attention_over_unsteered": paired("steerkit_attention_edit", "steerkit_unsteered"),
            "identical_unsteered_vs_hf": got["steerkit_unsteered"] == got["hf_generate"],
            "identical_residual_vs_hand_hook": got["steerkit_residual"] == got["hf_hand_hook"],
            "hf_generated_tokens": sum(len(t) for t in got["hf_generate"]),
        }
    if not args.no_sweep:
        alone = {k: ours(v, prefill_split=split) for k, v in arms.items()}  # each dose alone, the declared cut
        table |= {
            "sweep_doses": list(DOSES),
            **{f"{k}_s": med[k] for k in rows if k.startswith("sweep")},
            "sweep_speedup_shared_prefix": paired("sweep_shared_prefix", "sweep_independent"),
            "sweep_speedup_arms_together": paired("sweep_shared_prefix_arms_together", "sweep_independent"),
            "sweep_prompts_x_doses": len(prompts) * len(arms),
            "sweep_shared_equals_alone": sum(
                a == b for k in arms for a, b in zip(got["sweep_shared_prefix"][k], alone[k])
            ),
            "sweep_together_equals_alone": sum(
                a == b for k in arms for a, b in zip(got["sweep_shared_prefix_arms_together"][k], alone[k])
            ),
            "sweep_alone_equals_one_pass_prefill": sum(
                a == b for k in arms for a, b in zip(alone[k], got["sweep_independent"][k])
            ),
        }
    print(json.dumps(table, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
