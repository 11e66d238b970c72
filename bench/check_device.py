"""The exactness properties steerkit relies on, checked on your device, dtype and model (e.g. a GPU in bfloat16).

Prints JSON (and writes it with `--output`): the resolved dtype and device (`dtype=auto` -> bfloat16 where the
hardware runs it natively), where the weights landed, whether the identity arms (attention scale 1.0, residual
coef 0) give the unhooked model's tokens and exactly zero logit difference, whether arms generated together with
a shared prompt prefix equal each arm run alone with the same cut (greedy and sampled), and how many prompts give
the same tokens batched and one at a time (a float32 property: other dtypes may differ, which is why the arms of
one experiment always share batching). Plain Hugging Face `generate` with a dynamic vs a static KV cache: time and
identical rows (medians of 3; steerkit refuses `cache=static`, see README "Performance").

Usage: python bench/check_device.py --model MODEL --device cuda [--dtype auto] [--prompts 16] [--output out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from bench_generation import timed  # bench/ is the script's directory, first on sys.path
from bench_peers import hf_generate

from steerkit.attention.edge_rules import attention_scale
from steerkit.core.arms import generate_arms, shared_prefix
from steerkit.core.checks import identity_logits
from steerkit.core.generation import generate
from steerkit.core.models import DEFAULT_MODEL, load_model
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.interventions import ResidualAdd

ROOT = Path(__file__).resolve().parents[1]


def _ids(gens: list[Any]) -> list[tuple]:
    return [g.token_ids for g in gens]


def hf_cache_times(lm: Any, prompts: list[Any], new: int) -> dict[str, Any]:
    """Plain `model.generate` (`bench_peers.hf_generate`), greedy, dynamic vs static KV cache: median seconds of
    3 after a warm-up, and the rows that are identical."""
    run = {
        "dynamic": lambda: hf_generate(lm, prompts, len(prompts), new),
        "static": lambda: hf_generate(lm, prompts, len(prompts), new, cache_implementation="static"),
    }
    for fn in run.values():
        fn()  # warm-up
    (dynamic_s, dynamic), (static_s, static) = timed(run["dynamic"], 3), timed(run["static"], 3)
    same = sum(a == b for a, b in zip(dynamic, static))
    return {"hf_dynamic_s": dynamic_s, "hf_static_s": static_s, "hf_static_identical_rows": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--output", default="")
    args = p.parse_args()
    start = time.perf_counter()
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    res: dict[str, Any] = {"load_s": time.perf_counter() - start, "describe": lm.describe()}
    res["weight_devices"] = sorted({str(w.device) for w in lm.model.parameters()})
    corpus = load_prompt_corpus(ROOT / "corpus" / "generation_prompts_n50.json")
    prompts = [cp.as_prompt() for cp in corpus.prompts[: args.prompts]]
    layer, new = round(0.6 * lm.n_layers), args.max_new_tokens
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)).to(lm.device)
    kw: dict[str, Any] = {"max_new_tokens": new, "batch_size": len(prompts), "progress": False}
    plain = _ids(generate(lm, prompts, **kw))
    scale_1 = [attention_scale("signature_to_doctest", layer, 1.0)]
    res["identity_attention_tokens_equal"] = plain == _ids(generate(lm, prompts, interventions=scale_1, **kw))
    coef_0 = [ResidualAdd(layer, vec, coef=0.0)]
    res["identity_residual_tokens_equal"] = plain == _ids(generate(lm, prompts, interventions=coef_0, **kw))
    res |= identity_logits(lm, prompts, scale_1, chat=False)[0]
    arms = {f"scale_{d}": [attention_scale("signature_to_doctest", layer, d)] for d in (1.0, 3.0)}
    arms["residual"] = [ResidualAdd(layer, vec * 8, coef=1.0)]
    split = shared_prefix(lm, prompts, arms)
    for mode, extra in (("greedy", {}), ("sampled", {"temperature": 0.7, "seed": 3})):
        cut = {**kw, **extra, "prefill_split": split}
        alone = {k: _ids(generate(lm, prompts, interventions=v, **cut)) for k, v in arms.items()}
        for layout in ("separate", "together"):  # arms one after another / decoded as one batch
            shared = generate_arms(lm, prompts, arms, batch_arms=layout, **kw, **extra)
            same = sum(a == b for k in arms for a, b in zip(_ids(shared[k]), alone[k]))
            res[f"shared_prefix_{layout}_equals_alone_{mode}"] = f"{same}/{len(arms) * len(prompts)}"
    single = _ids(generate(lm, prompts, **{**kw, "batch_size": 1}))
    res["batched_vs_single_identical_prompts"] = sum(a == b for a, b in zip(plain, single))
    res["n_prompts"] = len(prompts)
    res |= hf_cache_times(lm, prompts, 128)
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
