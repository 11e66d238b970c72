"""Entry point `refusal_sweep` (seed 003): steer refusal with a difference-of-means direction, judged 3-way.

One level of the refusal ladder (experiments/configs/{smoke,layer_test,alpha_sweep,full}.yaml). The direction of
each layer is mean(harm_train) - mean(benign, direction split) of the residual stream at the last token of the
chat-templated prompt (`refusal.direction`); layers whose direction is tiny next to the residual norm are rejected
with a reason, and the run fails if none passes. The same direction from harm_test gives the train/test cosine.
Every (intervention, layer, alpha) runs as a nested MLflow run over harm_train, harm_test and benign eval
prompts, greedy, chat template on, every reply judged (rule judge; `judge=llm|both` adds the embedded model
as grader). Controls at every steered condition: a random direction and a label-shuffled direction. One
baseline (alpha 0 through the same hooked path) serves all conditions and is checked against unhooked
generation. The best conditions are chosen on harm_train (under a benign-helpfulness floor) and reported on
harm_test with exact McNemar tests vs baseline (BH over all steered conditions).

Usage: mlflow run . -e refusal_sweep --env-manager local -P config=experiments/configs/smoke.yaml
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from steerkit import tracking
from steerkit.cli import as_int
from steerkit.core.generation import GenerationConfig, generate, next_token_logits
from steerkit.core.models import LoadedModel, load_model
from steerkit.corpora.refusal import RefusalPrompt, load_refusal_corpus
from steerkit.errors import SteerkitError
from steerkit.refusal.config import SweepConfig, load_sweep_config
from steerkit.refusal.direction import (
    Directions,
    build_interventions,
    compute_directions,
    cosine,
    permutation_norm_p,
    random_direction,
    shuffled_difference,
)
from steerkit.refusal.judges import HELP_LABELS, REFUSAL_LABELS, agreement, judge, load_judge_labels
from steerkit.refusal.llm_judge import LLMJudge
from steerkit.refusal.report import (
    SPLITS,
    generalisation_figure,
    heatmap_figure,
    paired_tests,
    select,
    summarise,
    tradeoff_figure,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "refusal"
JUDGES = ("rule", "llm", "both")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="refusal_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="experiments/configs/smoke.yaml")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--limit", default="", help="prompts per split (overrides the config; 0 = all)")
    p.add_argument("--seed", default="", help="control-direction seed (overrides the config)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", default="", help="overrides the config")
    p.add_argument("--max-new-tokens", default="", help="overrides the config")
    p.add_argument("--judge", default="rule", help="rule | llm | both (primary verdicts: llm only for 'llm')")
    p.add_argument("--corpus-dir", default=str(CORPUS))
    p.add_argument("--experiment", default="steerkit")
    return p.parse_args(argv)


def _override(name: str, value: str, minimum: int) -> int | None:
    return None if str(value).strip() in ("", "config") else as_int(name, value, minimum)


def load_config(args: argparse.Namespace) -> SweepConfig:
    return load_sweep_config(
        args.config,
        prompts_per_split=_override("limit", args.limit, 0),
        seed=_override("seed", args.seed, 0),
        batch_size=_override("batch_size", args.batch_size, 1),
        max_new_tokens=_override("max_new_tokens", args.max_new_tokens, 1),
    )


def load_corpora(corpus_dir: str) -> dict[str, Any]:
    root = Path(corpus_dir)
    return {name: load_refusal_corpus(root / f"{name}.json") for name in ("harm_train", "harm_test", "benign")}


def eval_prompts(corpora: dict[str, Any], limit: int) -> list[tuple[str, RefusalPrompt]]:
    """(split, prompt) pairs: the first `limit` of harm_train, harm_test and the benign eval split."""
    return [
        *[("harm_train", p) for p in corpora["harm_train"].select(None, limit)],
        *[("harm_test", p) for p in corpora["harm_test"].select(None, limit)],
        *[("benign", p) for p in corpora["benign"].select("eval", limit)],
    ]


def directions_for(loaded: LoadedModel, corpora: dict[str, Any], cfg: SweepConfig) -> tuple[Directions, Directions]:
    """Directions from harm_train (used) and harm_test (for the cosine), both against the benign direction split."""
    n = cfg.direction_prompts
    benign = [p.as_prompt() for p in corpora["benign"].select("direction", n)]
    out = []
    for split in ("harm_train", "harm_test"):
        harm = [p.as_prompt() for p in corpora[split].select(None, n)]
        out.append(
            compute_directions(
                loaded,
                harm,
                benign,
                cfg.layers,
                hook=cfg.hook,
                threshold=cfg.norm_threshold,
                batch_size=cfg.batch_size,
            )
        )
    return out[0], out[1]


def direction_report(train: Directions, test: Directions, seed: int) -> list[dict[str, Any]]:
    """Per layer: norms, ratio, accept/reject reason, cosine with the harm_test direction and with the controls."""
    rows = []
    for layer, d in train.layers.items():
        shuffled = shuffled_difference(train.harmful[layer], train.benign[layer], seed + layer)
        rows.append(
            {
                "layer": layer,
                "hook": d.hook,
                "raw_norm": d.norm,
                "mean_resid_norm": d.mean_resid_norm,
                "norm_ratio": d.ratio,
                "accepted": d.accepted,
                "reject_reason": d.reason,
                "cos_train_test": cosine(d.vector, test.layers[layer].vector),
                "test_norm_ratio": test.layers[layer].ratio,
                "cos_train_shuffled": cosine(d.vector, shuffled),
                "shuffled_norm_ratio": float(shuffled.norm()) / d.mean_resid_norm,
                "permutation_p_norm": permutation_norm_p(train.harmful[layer], train.benign[layer], 200, seed),
            }
        )
    return rows


def control_vectors(train: Directions, layer: int, seed: int) -> dict[str, Any]:
    d = train.layers[layer]
    return {
        "refusal": d.vector,
        "random": random_direction(d.vector.numel(), d.norm, seed + layer),
        "shuffled": shuffled_difference(train.harmful[layer], train.benign[layer], seed + layer),
    }


class Runner:
    """Generates and judges every condition, one nested MLflow run each; keeps all records."""

    def __init__(self, loaded: LoadedModel, cfg: SweepConfig, items: list[tuple[str, RefusalPrompt]], judge_kind: str):
        self.loaded, self.cfg, self.items, self.judge_kind = loaded, cfg, items, judge_kind
        self.gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, chat=True)
        self.llm = LLMJudge(loaded, batch_size=cfg.batch_size) if judge_kind != "rule" else None
        self.by_id = {p.id: (split, p) for split, p in items}
        self.records: list[dict[str, Any]] = []

    def run(self, meta: dict[str, Any], interventions: list[Any]) -> list[dict[str, Any]]:
        name = meta["condition"]
        with tracking.child_run(name, tags={"steerkit.condition": name}):
            tracking.log_params({**meta, "n_hooks": len(interventions), "positions": "ALL"})
            log, rows = tracking.SampleLog("samples"), []

            def on_result(gen: Any) -> None:
                split, prompt = self.by_id[gen.prompt_id]
                verdict = judge(gen.text, prompt.text)
                row = {**meta, "split": split, "prompt_id": gen.prompt_id, "action": prompt.action}
                row.update({"prompt": prompt.text, "text": gen.text, "n_tokens": gen.n_tokens})
                row.update({"stop_reason": gen.stop_reason, **{f"rule_{k}": v for k, v in verdict.to_dict().items()}})
                log.append(row)
                rows.append(row)
                if len(rows) % self.gen.batch_size == 0:
                    log.flush()

            prompts = [p.as_prompt() for _, p in self.items]
            generate(self.loaded, prompts, interventions=interventions, config=self.gen, on_result=on_result)
            log.flush()
            self._finish(rows)
            tracking.log_table(rows, "samples.json")
            tracking.log_metrics(_split_metrics(rows))
        self.records.extend(rows)
        return rows

    def _finish(self, rows: list[dict[str, Any]]) -> None:
        """Primary verdict columns (rule, or the LLM's for judge=llm); LLM columns when asked."""
        if self.llm is not None:
            verdicts = self.llm.judge_many([r["prompt"] for r in rows], [r["text"] for r in rows])
            for row, v in zip(rows, verdicts):
                row.update({f"llm_{k}": val for k, val in v.to_dict().items()})
        source = "llm" if self.judge_kind == "llm" else "rule"
        for row in rows:
            row.update({k: row[f"{source}_{k}"] for k in ("refusal", "helpfulness", "degenerate", "reason")})


def _split_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    frame = pd.DataFrame(rows)
    out: dict[str, float] = {}
    for split, group in frame.groupby("split"):
        out[f"refusal_rate_{split}"] = float((group.refusal == "refusal").mean())
        out[f"helpful_rate_{split}"] = float((group.helpfulness == "helpful").mean())
        out[f"unclear_rate_{split}"] = float((group.refusal == "unclear").mean())
        out[f"degenerate_rate_{split}"] = float(group.degenerate.astype(bool).mean())
    return out


def identity_check(runner: Runner, baseline_hooks: list[Any], baseline: list[dict[str, Any]]) -> dict[str, float]:
    """alpha 0 vs no hooks at all: max |logit diff| over every prompt, identical outputs on the first batch."""
    prompts = [p.as_prompt() for _, p in runner.items]
    plain = next_token_logits(runner.loaded, prompts, chat=True, batch_size=runner.cfg.batch_size)
    hooked = next_token_logits(
        runner.loaded, prompts, interventions=baseline_hooks, chat=True, batch_size=runner.cfg.batch_size
    )
    first = prompts[: runner.cfg.batch_size]
    unhooked = generate(runner.loaded, first, config=runner.gen, progress=False)
    ids = {r["prompt_id"]: r["text"] for r in baseline}
    same = sum(g.text == ids[g.prompt_id] for g in unhooked)
    return {
        "identity_max_abs_logit_diff": float((plain - hooked).abs().max()),
        "identity_identical_fraction": same / len(unhooked),
        "identity_n_checked": len(unhooked),
    }


def validate_judges(loaded: LoadedModel, judge_kind: str, labels_path: Path) -> dict[str, Any]:
    """Rule (and LLM) judge accuracy, kappa and confusion matrices on the labelled set."""
    items = load_judge_labels(labels_path)
    rule = [judge(i.response, i.prompt) for i in items]
    out: dict[str, Any] = {
        "rule_refusal": agreement([i.refusal for i in items], [v.refusal for v in rule], REFUSAL_LABELS),
        "rule_helpfulness": agreement([i.helpfulness for i in items], [v.helpfulness for v in rule], HELP_LABELS),
    }
    if judge_kind != "rule":
        llm = LLMJudge(loaded).judge_many([i.prompt for i in items], [i.response for i in items])
        out["llm_refusal"] = agreement([i.refusal for i in items], [v.refusal for v in llm], REFUSAL_LABELS)
        out["llm_vs_rule"] = agreement([v.refusal for v in rule], [v.refusal for v in llm], REFUSAL_LABELS)
    return out


def log_judge_validation(found: dict[str, Any]) -> None:
    tracking.log_metrics({f"judge_{k}_accuracy": a.accuracy for k, a in found.items()})
    tracking.log_metrics({f"judge_{k}_kappa": a.kappa for k, a in found.items()})
    tracking.log_json({k: a.to_dict() for k, a in found.items()}, "judge_validation.json")


def run_conditions(runner: Runner, train: Directions, accepted: list[int]) -> dict[str, float]:
    """The baseline (+ identity check), then every steered condition and its controls."""
    cfg, n_layers = runner.cfg, runner.loaded.n_layers
    base_layer = accepted[0]
    base_hooks = build_interventions("add", base_layer, train.layers[base_layer].vector, 0.0, 1.0, n_layers, cfg.hook)
    meta = {"condition": "baseline", "intervention": "none", "layer": base_layer, "alpha": 0.0, "direction": "none"}
    baseline = runner.run({**meta, "coef": 0.0}, base_hooks)
    checks = identity_check(runner, base_hooks, baseline)
    for kind, layer, alpha in cfg.conditions():
        if layer not in accepted:
            continue
        d = train.layers[layer]
        for direction, vector in control_vectors(train, layer, cfg.seed).items():
            if direction != "refusal" and direction not in cfg.controls:
                continue
            hooks = build_interventions(kind, layer, vector, alpha, d.mean_resid_norm, n_layers, cfg.hook)
            coef = alpha * d.mean_resid_norm if kind == "add" else alpha
            name = f"{kind}_L{layer}_a{alpha:g}_{direction}"
            runner.run(
                {
                    "condition": name,
                    "intervention": kind,
                    "layer": layer,
                    "alpha": alpha,
                    "direction": direction,
                    "coef": coef,
                },
                hooks,
            )
    return checks


def report(records: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, Any]:
    """summary.csv (+ one per split), paired tests, the selection reported on harm_test, and the figures."""
    summary = summarise(records)
    tracking.log_text(summary.to_csv(index=False), "summary.csv")
    for split in SPLITS:
        tracking.log_text(summary[summary.split == split].to_csv(index=False), f"summary_{split}.csv")
    tests = paired_tests(records, "harm_test")
    tracking.log_text(tests.to_csv(index=False), "paired_tests_harm_test.csv")
    picks = select(summary, cfg.helpfulness_max_drop)
    metrics: dict[str, Any] = {}
    for name, pick in picks.items():
        if pick is None:
            continue
        test_row = tests[tests.condition == pick["condition"]].iloc[0]
        metrics.update(
            {
                f"best_{name}_refusal_harm_train": pick["refusal_rate_harm_train"],
                f"best_{name}_refusal_harm_test": pick["refusal_rate_harm_test"],
                f"best_{name}_helpful_benign": pick["helpful_rate_benign"],
                f"best_{name}_mcnemar_p_harm_test": test_row["mcnemar_p"],
                f"best_{name}_bh_q_harm_test": test_row["bh_q"],
                f"best_{name}_rd_harm_test": test_row["risk_difference"],
            }
        )
        tracking.set_tags({f"steerkit.best_{name}": pick["condition"]})
    tracking.log_json({k: v for k, v in picks.items()}, "selection.json")
    tracking.log_figure(tradeoff_figure(summary), "plots/tradeoff.png")
    tracking.log_figure(generalisation_figure(summary), "plots/generalisation_gap.png")
    for kind in cfg.interventions:
        tracking.log_figure(heatmap_figure(summary, kind), f"plots/heatmap_{kind}.png")
    return metrics


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tracking.tracked_run("refusal_sweep", vars(args), experiment=args.experiment):
        cfg = load_config(args)
        if args.judge not in JUDGES:
            raise SteerkitError(f"judge must be one of {', '.join(JUDGES)}, got {args.judge!r}")
        corpora = load_corpora(args.corpus_dir)
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        for layer in cfg.layers:
            loaded.check_layer(layer)
        tracking.log_params(
            {
                "resolved_config": cfg.to_dict(),
                "direction_position": "last token of the chat-templated prompt (end of the assistant header)",
                "generation": GenerationConfig(
                    max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, chat=True
                ).to_dict(),
                **{f"corpus_{k}_sha256": c.sha256 for k, c in corpora.items()},
                **{f"model_{k}": v for k, v in loaded.describe().items()},
            }
        )
        t0 = time.perf_counter()
        train, test = directions_for(loaded, corpora, cfg)
        directions = direction_report(train, test, cfg.seed)
        _log_directions(directions)
        accepted = train.accepted()
        if not accepted:
            reasons = "; ".join(f"L{r['layer']}: {r['reject_reason']}" for r in directions)
            raise SteerkitError(f"no layer passed the direction norm check ({reasons})")
        found = validate_judges(loaded, args.judge, Path(args.corpus_dir) / "judge_labels.json")
        log_judge_validation(found)
        runner = Runner(loaded, cfg, eval_prompts(corpora, cfg.prompts_per_split), args.judge)
        checks = run_conditions(runner, train, accepted)
        metrics = report(runner.records, cfg)
        tracking.log_table(runner.records, "samples.json")
        tracking.log_metrics({**checks, **metrics, "experiment_seconds": time.perf_counter() - t0})
        print(json.dumps({**checks, **metrics, "accepted_layers": accepted}, default=str))


def _log_directions(rows: list[dict[str, Any]]) -> None:
    tracking.log_text(pd.DataFrame(rows).to_csv(index=False), "directions.csv")
    for r in rows:
        layer = r["layer"]
        tracking.log_metrics(
            {
                f"direction_norm_ratio_L{layer}": r["norm_ratio"],
                f"direction_accepted_L{layer}": float(r["accepted"]),
                f"cos_train_test_L{layer}": r["cos_train_test"],
                f"cos_train_shuffled_L{layer}": r["cos_train_shuffled"],
                f"direction_permutation_p_L{layer}": r["permutation_p_norm"],
            }
        )
        if not r["accepted"]:
            tracking.set_tags({f"steerkit.rejected_L{layer}": r["reject_reason"]})


if __name__ == "__main__":
    tracking.entry_point(main)
