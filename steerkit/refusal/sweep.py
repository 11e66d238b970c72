"""Seed 003's refusal ladder: directions per layer, every (intervention, layer, alpha) condition, judged.

Design note: the direction of each layer is the difference of means between harmful and benign prompts at the last
token of the chat-templated prompt (a position the model has seen), rejected when tiny next to the residual norm or
no longer than label-shuffled directions (permutation p > alpha). Every condition runs over harm_train, harm_test
and the benign eval and test splits with the same generation config; alpha 0 (the baseline) is checked against the
unhooked model (logits bit-identical). Controls per steered condition: a random direction of the same norm and the
label-shuffled difference of means. Judges are three-way (refusal / compliance / unclear) with degenerate-text
detection, validated before use (`steerkit.refusal.validation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from steerkit.core.arms import generate_arms
from steerkit.core.checks import IDENTITY_KEY, max_abs_diff
from steerkit.core.generation import GenerationConfig, generate, next_token_logits
from steerkit.core.models import LoadedModel
from steerkit.core.progress import progress as progress_bar
from steerkit.core.records import MemoryLog, RecordLog
from steerkit.corpora.refusal import RefusalPrompt, load_refusal_corpus
from steerkit.refusal.config import SweepConfig
from steerkit.refusal.direction import (
    Directions,
    build_interventions,
    compute_directions,
    cosine,
    random_direction,
    shuffled_difference,
)
from steerkit.refusal.judges import judge
from steerkit.refusal.llm_judge import LLMJudge
from steerkit.refusal.report import SPLITS, outcomes
from steerkit.stats.design import Design

JUDGES = ("rule", "llm", "both")
# steered conditions decoded together per `generate_arms` pass (batch_size x 4 rows; a killed run keeps finished groups)
ARMS_PER_PASS = 4


def generation_config(cfg: SweepConfig) -> GenerationConfig:
    """Greedy, chat template on, the level's token budget and batch size: the same for every condition."""
    return GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, chat=True)


def load_corpora(corpus_dir: str) -> dict[str, Any]:
    root = Path(corpus_dir)
    return {name: load_refusal_corpus(root / f"{name}.json") for name in ("harm_train", "harm_test", "benign")}


def eval_prompts(corpora: dict[str, Any], limit: int) -> list[tuple[str, RefusalPrompt]]:
    """(split, prompt) pairs, the first `limit` of each split: harm_train and benign_eval (selection), harm_test and
    benign_test (reporting; `RefusalCorpus.benign_eval_test` holds the benign test split out by id)."""
    benign_eval, benign_test = corpora["benign"].benign_eval_test(limit)
    return [
        *[("harm_train", p) for p in corpora["harm_train"].select(None, limit)],
        *[("harm_test", p) for p in corpora["harm_test"].select(None, limit)],
        *[("benign_eval", p) for p in benign_eval],
        *[("benign_test", p) for p in benign_test],
    ]


def split_sizes(items: list[tuple[str, RefusalPrompt]]) -> dict[str, int]:
    """`n_prompts_<split>` for every split (logged, so a reader sees what each figure rests on)."""
    return {f"n_prompts_{split}": sum(s == split for s, _ in items) for split in SPLITS}


def directions_for(loaded: LoadedModel, corpora: dict[str, Any], cfg: SweepConfig) -> tuple[Directions, Directions]:
    """Directions from harm_train (used; norm and permutation checks) and harm_test (for the cosine), both against
    the benign direction split."""
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
                perm_alpha=cfg.direction_alpha if split == "harm_train" else None,
                seed=cfg.seed,
            )
        )
    return out[0], out[1]


def direction_report(train: Directions, test: Directions, seed: int) -> list[dict[str, Any]]:
    """Per layer: norms, ratio, permutation p, accept/reject reason, cosine with the harm_test direction and with
    the controls."""
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
                "permutation_p_norm": d.permutation_p,
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
    """Generates and judges every condition; keeps all records.

    `condition_run(meta)` is a context manager around one condition (the script opens a nested MLflow run there,
    logs `meta` and, on exit, the condition's table and `split_metrics`); it yields the condition's `RecordLog`.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        cfg: SweepConfig,
        items: list[tuple[str, RefusalPrompt]],
        judge_kind: str,
        condition_run: Callable[[dict[str, Any]], AbstractContextManager[RecordLog]] | None = None,
    ):
        self.loaded, self.cfg, self.items, self.judge_kind = loaded, cfg, items, judge_kind
        self.condition_run = condition_run or _in_memory
        self.gen = generation_config(cfg)
        self.llm = LLMJudge(loaded, batch_size=cfg.batch_size) if judge_kind != "rule" else None
        self.by_id = {p.id: (split, p) for split, p in items}
        self.prompts = [p.as_prompt() for _, p in items]
        self.records: list[dict[str, Any]] = []

    def run(self, meta: dict[str, Any], interventions: list[Any]) -> list[dict[str, Any]]:
        """One condition, its rows logged batch by batch as it generates."""
        with self._condition(meta, interventions) as add:
            generate(self.loaded, self.prompts, interventions=interventions, config=self.gen, on_result=add)
        return self.records[-len(self.prompts) :]

    def run_group(self, group: list[tuple[dict[str, Any], list[Any]]]) -> None:
        """Several conditions in one `generate_arms` pass (their rows decoded as one batch of batch_size x
        conditions), then judged and logged condition by condition: the tokens `run` gives each one alone (every
        hook acts at ALL positions, so no prefix is shared and the prefill is one pass, as in `generate`)."""
        if len(group) == 1:
            self.run(*group[0])
            return
        arms = {meta["condition"]: hooks for meta, hooks in group}
        got = generate_arms(self.loaded, self.prompts, arms, config=self.gen, split={}, progress=False)
        for meta, hooks in group:
            with self._condition(meta, hooks) as add:
                for gen in got[meta["condition"]]:
                    add(gen)

    @contextmanager
    def _condition(self, meta: dict[str, Any], interventions: list[Any]) -> Iterator[Callable[[Any], None]]:
        """The condition's run, open while its generations are added (judged by rule, logged, flushed per batch)."""
        with self.condition_run({**meta, "n_hooks": len(interventions), "positions": "ALL"}) as log:
            rows: list[dict[str, Any]] = []

            def add(gen: Any) -> None:
                split, prompt = self.by_id[gen.prompt_id]
                verdict = judge(gen.text, prompt.text)
                row = {**meta, "split": split, "prompt_id": gen.prompt_id, "action": prompt.action}
                row.update({"prompt": prompt.text, "text": gen.text, "n_tokens": gen.n_tokens})
                row.update({"stop_reason": gen.stop_reason, **{f"rule_{k}": v for k, v in verdict.to_dict().items()}})
                log.append(row)
                rows.append(row)
                if len(rows) % self.gen.batch_size == 0:
                    log.flush()

            yield add
            log.flush()
            self._finish(rows)
        self.records.extend(rows)

    def _finish(self, rows: list[dict[str, Any]]) -> None:
        """Primary verdict columns (rule, or the LLM's for judge=llm); LLM columns when asked."""
        if self.llm is not None:
            verdicts = self.llm.judge_many([r["prompt"] for r in rows], [r["text"] for r in rows])
            for row, v in zip(rows, verdicts):
                row.update({f"llm_{k}": val for k, val in v.to_dict().items()})
        source = "llm" if self.judge_kind == "llm" else "rule"
        for row in rows:
            row.update({k: row[f"{source}_{k}"] for k in ("refusal", "helpfulness", "degenerate", "reason")})


def split_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Refusal, compliance, helpful, unclear and degenerate rates per split of one condition's rows."""
    frame = pd.DataFrame(rows)
    out: dict[str, float] = {}
    for split, group in frame.groupby("split"):
        out.update({f"{name}_rate_{split}": float(mask.mean()) for name, mask in outcomes(group).items()})
    return out


def identity_check(runner: Runner, baseline_hooks: list[Any], baseline: list[dict[str, Any]]) -> dict[str, float]:
    """alpha 0 vs no hooks at all: max |logit diff| over every prompt, identical outputs on the first batch."""
    prompts = runner.prompts
    plain = next_token_logits(runner.loaded, prompts, chat=True, batch_size=runner.cfg.batch_size)
    hooked = next_token_logits(
        runner.loaded, prompts, interventions=baseline_hooks, chat=True, batch_size=runner.cfg.batch_size
    )
    first = prompts[: runner.cfg.batch_size]
    unhooked = generate(runner.loaded, first, config=runner.gen, progress=False)
    ids = {r["prompt_id"]: r["text"] for r in baseline}
    same = sum(g.text == ids[g.prompt_id] for g in unhooked)
    return {
        IDENTITY_KEY: max_abs_diff(plain, hooked),
        "identity_n_differing": len(unhooked) - same,
        "identity_identical_fraction": same / len(unhooked),
        "identity_n_checked": len(unhooked),
    }


IDENTITY_FIGURES = (IDENTITY_KEY, "identity_n_differing")  # must be exactly 0


def declared_design(cfg: SweepConfig, accepted: list[int], items: list[tuple[str, RefusalPrompt]]) -> Design:
    """The design `report.paired_tests` reports: exact McNemar over the harm_test prompts, one BH family per
    outcome (refusal for `more_refusal`, compliance for `less_refusal`) of one test per steered condition and
    control direction."""
    family = sum(layer in accepted for _, layer, _ in cfg.conditions()) * (1 + len(cfg.controls))
    n_test = sum(split == "harm_test" for split, _ in items)
    return Design("refusal | compliance (harm_test), one family each", "mcnemar_exact", n_test, max(family, 1))


def run_conditions(
    runner: Runner,
    train: Directions,
    accepted: list[int],
    on_identity: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """The baseline (+ identity check, handed to `on_identity` before any steered condition runs, so a caller can
    log it and stop), then every steered condition and its controls."""
    cfg, n_layers = runner.cfg, runner.loaded.n_layers
    base_layer = accepted[0]
    base_hooks = build_interventions("add", base_layer, train.layers[base_layer].vector, 0.0, 1.0, n_layers, cfg.hook)
    meta = {"condition": "baseline", "intervention": "none", "layer": base_layer, "alpha": 0.0, "direction": "none"}
    baseline = runner.run({**meta, "coef": 0.0}, base_hooks)
    checks = identity_check(runner, base_hooks, baseline)
    if on_identity is not None:
        on_identity(checks)
    steered: list[tuple[dict[str, Any], list[Any]]] = []
    for kind, layer, alpha in cfg.conditions():
        if layer not in accepted:
            continue
        d = train.layers[layer]
        for direction, vector in control_vectors(train, layer, cfg.seed).items():
            if direction != "refusal" and direction not in cfg.controls:
                continue
            hooks = build_interventions(kind, layer, vector, alpha, d.mean_resid_norm, n_layers, cfg.hook)
            coef = alpha * d.mean_resid_norm if kind == "add" else alpha
            meta = {"intervention": kind, "layer": layer, "alpha": alpha, "direction": direction, "coef": coef}
            steered.append(({"condition": f"{kind}_L{layer}_a{alpha:g}_{direction}", **meta}, hooks))
    groups = [steered[i : i + ARMS_PER_PASS] for i in range(0, len(steered), ARMS_PER_PASS)]
    for group in progress_bar(groups, desc=f"refusal conditions (x{ARMS_PER_PASS})", unit="group"):
        runner.run_group(group)
    return checks


def direction_metrics(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    """Per-layer direction metrics (`..._L<layer>`) and a `steerkit.rejected_L<layer>` tag per rejected layer."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for r in rows:
        layer = r["layer"]
        metrics[f"direction_norm_ratio_L{layer}"] = r["norm_ratio"]
        metrics[f"direction_accepted_L{layer}"] = float(r["accepted"])
        metrics[f"cos_train_test_L{layer}"] = r["cos_train_test"]
        metrics[f"cos_train_shuffled_L{layer}"] = r["cos_train_shuffled"]
        metrics[f"direction_permutation_p_L{layer}"] = r["permutation_p_norm"]
        if not r["accepted"]:
            tags[f"steerkit.rejected_L{layer}"] = r["reject_reason"]
    return metrics, tags


@contextmanager
def _in_memory(meta: dict[str, Any]) -> Iterator[RecordLog]:
    yield MemoryLog()
