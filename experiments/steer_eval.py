"""Entry point `steer_eval`: your model, prompts, intervention and scorer, as a paired, significance-tested run.

Baseline (the intervention at its identity value) and steered arms go through the same generation code, are joined
by prompt id and tested pairwise (exact McNemar for a binary scorer, Wilcoxon for a continuous one) with the effect
and its interval; the design is logged and gated before generating, the identity control must be exactly 0. With
a grid, an Optuna study runs one nested MLflow run per coefficient (its own `samples.json`), and BH corrects over
the grid's completed coefficients (`pruner=wilcoxon` may stop one after any batch; `objectives=effect,kl` logs the
Pareto front of effect vs KL instead of pruning). The library is `steerkit.steer_eval` (`steerkit.evaluate`).

Usage: mlflow run . -e steer_eval --env-manager local -P corpus=prompts.jsonl -P intervention=direction=v.pt
       -P scorer=regex:sorry -P layer=12 -P coef=4
"""

from __future__ import annotations

import json
from typing import Any

from steerkit import cli, tracking
from steerkit.core.checks import require_identity
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import load_model
from steerkit.errors import SteerkitError
from steerkit.search import RUN_ID_ATTR, StudyConfig, run_study, study_name
from steerkit.steer_eval import CoefResult, EvalSession, GridObjective, adjust_grid, prepare
from steerkit.steer_eval.grid import DIRECTIONS, parse_objectives


def parse_args(argv: list[str]) -> Any:
    p = cli.parser("steer_eval", __doc__)
    cli.add_model_args(p)
    for flag, default in [
        ("--revision", ""), ("--attn-implementation", ""), ("--quantization", "none"), ("--text-field", "prompt"),
        ("--id-field", "id"), ("--fields", ""), ("--limit", "0"), ("--layer", "auto"), ("--hook", "resid_post"),
        ("--positions", "all"), ("--coef", "1.0"), ("--grid", ""), ("--outcome", "auto"), ("--max-new-tokens", "64"),
        ("--batch-size", "16"), ("--chat", "false"), ("--temperature", "0"), ("--seed", "0"), ("--alpha", "0.05"),
        ("--workers", "2"), ("--min-relative-norm", "0.01"), ("--study-name", "auto"), ("--storage", "default"),
        ("--pruner", "none"), ("--prune-p", "0.1"), ("--objectives", "effect"),
    ]:  # fmt: skip
        p.add_argument(flag, default=default)
    p.add_argument("--corpus", required=True, help="prompts: JSONL, JSON or CSV (or a corpus in corpus/)")
    p.add_argument("--intervention", required=True, help="direction=PATH, mean_diff=POS,NEG, sae=PATH:feature=N, ...")
    p.add_argument("--scorer", required=True, help="python_tests, rust_tests, refusal, regex:RE, length, kl, mod:fn")
    cli.add_design_args(p)
    cli.add_run_args(p, output=False)
    return p.parse_args(argv)


def _sae_path(spec: str) -> str:
    """`sae=runs:/ID/sae:feature=N` or `sae=RUN_ID:feature=N` -> the downloaded local path (MLflow is read here)."""
    if not spec.startswith("sae="):
        return spec
    source, sep, feature = spec.removeprefix("sae=").rpartition(":feature=")
    if not sep:
        raise SteerkitError(f"sae must be PATH_OR_RUN:feature=N, got {spec!r}")
    return f"sae={tracking.local_artifact(source, default_artifact='sae')}:feature={feature}"


def _session(args: Any, coefs: list[float]) -> EvalSession:
    seed = cli.as_int("seed", args.seed)
    cfg = GenerationConfig(
        max_new_tokens=cli.as_int("max_new_tokens", args.max_new_tokens, 1),
        batch_size=cli.as_int("batch_size", args.batch_size, 1),
        chat=cli.as_bool("chat", args.chat),
        temperature=cli.as_float("temperature", args.temperature, 0.0),
        seed=seed,
    )
    loaded = load_model(
        args.model, dtype=args.dtype, device=args.device, revision=args.revision or None,
        attn_implementation=args.attn_implementation or None, quantization=args.quantization, threads=args.threads,
    )  # fmt: skip
    return prepare(
        loaded, args.corpus, _sae_path(args.intervention), args.scorer, layer=args.layer, hook=args.hook,
        positions=args.positions, coefs=coefs, text_field=args.text_field, id_field=args.id_field,
        fields=[f.strip() for f in args.fields.split(",") if f.strip()], limit=cli.as_int("limit", args.limit, 0),
        outcome=args.outcome, config=cfg, alpha=cli.as_float("alpha", args.alpha), seed=seed,
        workers=cli.as_int("workers", args.workers, 1),
        min_relative_norm=cli.as_float("min_relative_norm", args.min_relative_norm, 0.0),
    )  # fmt: skip


def _study(args: Any, grid: list[float]) -> StudyConfig | None:
    """The grid's study, checked before anything is generated (pruner, prune_p, objectives); None without a grid."""
    names = parse_objectives(args.objectives)
    if not grid:
        if args.pruner != "none" or len(names) > 1:
            raise SteerkitError(f"pruner={args.pruner!r} / objectives={args.objectives!r} need a grid (-P grid=...)")
        return None
    name = study_name(args.study_name, "steer_eval", {"run": tracking.active_run_id()})  # BH needs the whole grid here
    directions = tuple(DIRECTIONS[n] for n in names)
    seed, prune_p = cli.as_int("seed", args.seed), cli.as_float("prune_p", args.prune_p)
    return StudyConfig(
        name, args.storage, directions, "grid", {"coef": grid}, seed, pruner=args.pruner, prune_p=prune_p
    )


def _grid(session: EvalSession, config: StudyConfig, args: Any) -> list[CoefResult]:
    """One Optuna trial (a nested run) per coefficient, pruned after every batch with `pruner=wilcoxon`; BH over the
    whole grid (a pruned coefficient at p = 1, logged), q-values on every completed trial's run."""
    objective = GridObjective(
        session, objectives=parse_objectives(args.objectives), arm_log=lambda: tracking.SampleLog("steered"),
        prune_every=session.config.batch_size if config.pruner != "none" else 0,
        record=tracking.recorder({tracking.TAG_ENTRY_POINT: "steer_eval_trial"}, None, "samples.json"),
    )  # fmt: skip
    study = run_study(objective, config, metric_names=objective.metric_names)
    completed, pruned = objective.finish(session.design.alpha)
    run_ids = {t.number: t.user_attrs.get(RUN_ID_ATTR) for t in study.trials}
    for result, number in completed:
        tracking.update_run(run_ids[number], metrics={"q_value": result.test.q_value})
    tracking.log_params({"pruned_coefs": ",".join(map(str, pruned)) or "none"})  # in the BH family at p = 1
    tracking.log_metrics({"bh_family_size": len(completed) + len(pruned), "n_pruned_coefs": len(pruned)})
    return [r for r, _ in completed]


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("steer_eval", vars(args), experiment=args.experiment):
        grid = cli.as_float_list("grid", args.grid) if args.grid.strip() else []
        config = _study(args, grid)
        session = _session(args, grid or [cli.as_float("coef", args.coef)])
        steer, layers = session.steering, ",".join(map(str, session.steering.layers))
        tracking.log_new_params(
            {**session.loaded.params(), "resolved_layer": layers,
             "resolved_hook": steer.hook, "resolved_outcome": session.scorer.outcome, "n_prompts": len(session.rows),
             **{f"steering_{k}": v for k, v in steer.facts.items()}, "generation": session.config.to_dict()}
        )  # fmt: skip
        tracking.log_design(session.design, cli.as_bool("allow_underpowered", args.allow_underpowered))
        figures = session.identity_check(require=False)
        tracking.log_metrics(figures)
        require_identity(figures)
        base_log = tracking.SampleLog("baseline")
        together = config is None or config.pruner == "none"  # every arm in one pass; the baseline logged as it goes
        session.baseline(on_result=lambda g: base_log.append(g.to_dict()), with_coefs=together)
        base_log.flush()
        if config is not None:
            results = _grid(session, config, args)
        else:
            steered = GridObjective(session, arm_log=lambda: tracking.SampleLog("steered")).evaluate(session.coefs[0])
            results = adjust_grid([steered], session.design.alpha)
            tracking.log_table(results[0].table, "samples.json")
            tracking.log_metrics(results[0].metrics())
        summary = [{"coef": r.coef, **r.metrics()} for r in results]
        tracking.log_json(summary, "steer_eval.json")
        tracking.log_metrics({"n_rejected": sum(bool(r.test.rejected) for r in results)})
        print(json.dumps(summary))


if __name__ == "__main__":
    tracking.entry_point(main)
