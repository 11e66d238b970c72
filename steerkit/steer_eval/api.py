"""`evaluate`: the notebook face of `steer_eval`, and `prepare`, the session both it and the entry point use.

Design note: every input may come as the user has it: a model spec or a `LoadedModel` (`LoadedModel.from_hf` wraps
one loaded by hand), a prompt file or a list of strings / dicts, an intervention spec string or a `Steering`, a
scorer name or a plain function. They are resolved here once, into an `EvalSession`; `evaluate` then runs the
design gate, the identity control and every coefficient, and corrects over the grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from steerkit.cli import as_layer
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import LoadedModel, load_model
from steerkit.corpora.loader import PromptRow, load_prompt_table, prompt_rows
from steerkit.errors import SteerkitError
from steerkit.steer_eval.evaluation import EvalResult, EvalSession, adjust_grid
from steerkit.steer_eval.scorers import resolve_scorer
from steerkit.steer_eval.steering import Steering, build_steering, parse_spec

PromptsLike = str | Path | Sequence[str | Mapping[str, Any] | PromptRow]


def resolve_layers(loaded: LoadedModel, layer: int | str | Sequence[int], intervention: str | Steering) -> list[int]:
    """`auto` (round(0.6 x depth); for an `sae=` spec the SAE's own layer: []), an int, `3,5` or a list."""
    if isinstance(layer, int):
        return [layer]
    if isinstance(layer, str):
        if layer == "auto":
            is_sae = isinstance(intervention, str) and parse_spec(intervention)[0] == "sae"
            return [] if is_sae else [as_layer("layer", "auto", loaded)]
        return [as_layer("layer", part.strip(), loaded) for part in layer.split(",")]
    return [int(x) for x in layer]


def resolve_prompts(
    prompts: PromptsLike, *, text_field: str = "prompt", id_field: str = "id", fields: Sequence[str] = ()
) -> list[PromptRow]:
    """Rows from a file (JSONL / JSON / CSV / a corpus), or from strings, dicts or `PromptRow`s given in code."""
    if isinstance(prompts, str | Path):
        return list(load_prompt_table(prompts, text_field=text_field, id_field=id_field, fields=fields).rows)
    if all(isinstance(p, PromptRow) for p in prompts):
        return list(prompts)  # type: ignore[arg-type]
    records = [(f"item #{i}", {text_field: p} if isinstance(p, str) else dict(p)) for i, p in enumerate(prompts)]  # type: ignore[arg-type]
    return prompt_rows(records, "prompts", text_field=text_field, id_field=id_field, fields=fields)[0]


def prepare(
    model: str | LoadedModel,
    prompts: PromptsLike,
    intervention: str | Steering,
    scorer: str | Callable[..., Any],
    *,
    layer: int | str | Sequence[int] = "auto",
    hook: str = "resid_post",
    positions: str = "all",
    coefs: Sequence[float] = (1.0,),
    text_field: str = "prompt",
    id_field: str = "id",
    fields: Sequence[str] = (),
    limit: int = 0,
    outcome: str = "auto",
    config: GenerationConfig | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    workers: int = 2,
    min_relative_norm: float = 0.01,
    dtype: str = "float32",
    device: str = "cpu",
) -> EvalSession:
    """Resolve every input into an `EvalSession` (arguments as for `evaluate`); generates nothing yet."""
    cfg = config or GenerationConfig(max_new_tokens=64, seed=seed)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
    score = resolve_scorer(scorer, outcome=outcome, workers=workers)
    rows = resolve_prompts(prompts, text_field=text_field, id_field=id_field, fields=fields)
    if limit < 0:
        raise SteerkitError(f"limit must be >= 0, got {limit}")
    rows = rows[:limit] if limit else rows
    if isinstance(intervention, Steering):
        steering = intervention
    else:
        layers = resolve_layers(loaded, layer, intervention)
        steering = build_steering(
            loaded, intervention, layers=layers, hook=hook, positions=positions, text_field=text_field,
            chat=cfg.chat, min_relative_norm=min_relative_norm,
        )  # fmt: skip
    return EvalSession(loaded, rows, steering, score, config=cfg, coefs=list(coefs), alpha=alpha, seed=seed)


def evaluate(
    model: str | LoadedModel,
    prompts: PromptsLike,
    intervention: str | Steering,
    scorer: str | Callable[..., Any],
    *,
    coef: float | Sequence[float] = 1.0,
    allow_underpowered: bool = False,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    chat: bool = False,
    temperature: float = 0.0,
    seed: int = 0,
    **options: Any,
) -> EvalResult:
    """Paired steering evaluation of `model` on `prompts`: baseline vs steered, same code path, joined by id.

    Args:
        model: a spec (`load_model`) or a `LoadedModel` (e.g. `LoadedModel.from_hf(model, tokenizer)`).
        prompts: a JSONL / JSON / CSV file or a corpus in `corpus/`, or a list of strings or dicts.
        intervention: `direction=PATH`, `mean_diff=POS,NEG`, `sae=PATH:feature=N`, `ablate=PATH`,
            `attention=RULE` (see `steerkit.steer_eval.steering`), or a `Steering`.
        scorer: `python_tests`, `rust_tests`, `refusal`, `regex:PATTERN`, `length`, `kl`, `module:function`, or a
            function `(completion, prompt_dict) -> bool | float` annotated with its return type.
        coef: one coefficient, or a grid (BH over the grid).
        allow_underpowered: run a design that cannot reject anyway (else it raises before generating).
        max_new_tokens, batch_size, chat, temperature, seed: generation, the same for every arm.
        **options: `layer`, `hook`, `positions`, `text_field`, `id_field`, `fields`, `limit`, `outcome`, `alpha`,
            `workers`, `min_relative_norm`, `dtype`, `device` (as for `prepare`).

    Returns:
        An `EvalResult`: `.test` (one coefficient), `.summary()` (per coefficient), `.table` / `.frame()`.
    """
    coefs = [float(coef)] if isinstance(coef, int | float) else [float(c) for c in coef]
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat, temperature=temperature, seed=seed
    )
    session = prepare(model, prompts, intervention, scorer, coefs=coefs, config=cfg, seed=seed, **options)
    session.design.check(allow_underpowered)
    identity = session.identity_check()
    session.pregenerate()  # the baseline and every coefficient in one pass (shared prefix, arms decoded together)
    results = adjust_grid([session.coefficient(c) for c in session.coefs], session.design.alpha)
    return EvalResult(session.design, identity, session.steering, session.scorer.name, results)


__all__ = ["evaluate", "prepare", "resolve_layers", "resolve_prompts"]
