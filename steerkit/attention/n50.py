"""Seed 000's n=50 experiment: attention steering and whether the model keeps the doc-comment test.

Design note: baseline and steered arms run through the same code path: the baseline is the same `AttentionEdit`
at scale 1.0, bit-identical to the unhooked model (`identity_and_kl` checks it). Arms are generated batch by batch
into a `RecordLog` (the script passes a `tracking.SampleLog`; this module never imports MLflow), so a resumed arm
only generates the prompts its log lacks; done prompts are a prefix of the length-sorted batch order, so the
remaining batches are the ones an uninterrupted run builds. `summarise` joins the two arms by prompt id (never by
position: a reused baseline is in batch order) and reports new tests separately from copies of the prompt's own.
The scale-search objectives (`NewTestGain`, `KlGain`) take an Optuna-style trial (`suggest_float`,
`set_user_attr`) and a `record` callback for what the trial run logs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from steerkit.attention.edge_rules import attention_scale
from steerkit.core.checks import identity_logits
from steerkit.core.generation import Generation, GenerationConfig, Prompt, generate, next_token_logits
from steerkit.core.models import LoadedModel
from steerkit.core.records import Record, RecordLog
from steerkit.corpora.prompts import CorpusPrompt
from steerkit.metrics import kl_divergence, rust_test_preservation
from steerkit.stats import join_by_id, paired_binary_summary


def baseline_key(loaded: LoadedModel, corpus_sha: str, n: int, cfg: GenerationConfig, code_version: str) -> str:
    """Same model, corpus, generation parameters and code => the same baseline (greedy is deterministic)."""
    facts = {"model": loaded.describe(), "corpus": corpus_sha, "n": n, "gen": cfg.to_dict(), "code": code_version}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def identity_and_kl(
    loaded: LoadedModel, prompts: Sequence[Prompt], edit_1: Any, edit_s: Any, chat: bool, batch: int
) -> dict[str, float]:
    """Max |logit diff| unhooked vs scale 1.0 (must be 0), and KL(baseline || steered) at the last prompt token."""
    checks, ident = identity_logits(loaded, prompts, [edit_1], chat=chat, batch_size=batch)
    steered = next_token_logits(loaded, prompts, interventions=[edit_s], chat=chat, batch_size=batch)
    kl = kl_divergence(ident, steered)
    return {**checks, "kl_last_token_mean": float(kl.mean()), "kl_last_token_max": float(kl.max())}


def run_arm(
    loaded: LoadedModel, prompts: Sequence[Prompt], edit: Any, cfg: GenerationConfig, log: RecordLog
) -> list[Record]:
    """Generate the prompts `log` lacks, flushing it per batch; every record, in `prompts` order."""
    done = {r["prompt_id"] for r in log.records}
    todo = [p for p in prompts if p.id not in done]
    pending: list[Record] = []

    def on_result(gen: Generation) -> None:
        log.append(gen.to_dict())
        pending.append(gen.to_dict())
        if len(pending) % cfg.batch_size == 0 or len(pending) == len(todo):
            log.flush()

    if todo:
        generate(loaded, todo, interventions=[edit], config=cfg, on_result=on_result)
    log.flush()
    order = {p.id: i for i, p in enumerate(prompts)}
    return sorted(log.records, key=lambda r: order[r["prompt_id"]])


def summarise(
    corpus_prompts: Sequence[CorpusPrompt], base: list[Record], steer: list[Record]
) -> tuple[list[Record], Record]:
    """Per-sample rows in corpus order, each baseline record joined to its steered record by prompt id."""
    rows = []
    pairs = join_by_id(base, steer, order=[cp.id for cp in corpus_prompts])
    for cp, (b, s) in zip(corpus_prompts, pairs):
        pb, ps = rust_test_preservation(cp.prompt, b["text"]), rust_test_preservation(cp.prompt, s["text"])
        rows.append(
            {
                "id": cp.id,
                "category": cp.category,
                "baseline_output": b["text"],
                "steered_output": s["text"],
                "baseline_tokens": b["n_tokens"],
                "steered_tokens": s["n_tokens"],
                "baseline_has_test": pb.has_test,
                "steered_has_test": ps.has_test,
                "baseline_new_test": pb.new_test,
                "steered_new_test": ps.new_test,
                "baseline_copied_test": pb.copied_test,
                "steered_copied_test": ps.copied_test,
                "baseline_stop": b["stop_reason"],
                "steered_stop": s["stop_reason"],
                "identical": b["token_ids"] == s["token_ids"],
            }
        )
    summary: Record = {"total": len(rows), "n_identical_outputs": sum(r["identical"] for r in rows)}
    for outcome, label in (("has_test", "preserved"), ("new_test", "new_tests")):
        base_flags, steer_flags = [r[f"baseline_{outcome}"] for r in rows], [r[f"steered_{outcome}"] for r in rows]
        summary.update(paired_binary_summary(base_flags, steer_flags, label))
    return rows, summary


class NewTestGain:
    """Scale-search objective: steered minus baseline new-test rate at the trial's scale (generation).

    `base` is the baseline arm (shared by all trials); `arm_log()` gives each trial's steered log; `record(metrics,
    rows)` receives what the trial run logs.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        corpus_prompts: Sequence[CorpusPrompt],
        cfg: GenerationConfig,
        layer: int,
        edge_rule: str,
        grid: Sequence[float],
        arm_log: Callable[[], RecordLog],
        record: Callable[[Record, list[Record]], None],
    ) -> None:
        self.loaded, self.corpus_prompts, self.cfg, self.layer = loaded, list(corpus_prompts), cfg, layer
        self.edge_rule, self.grid, self.arm_log, self.record = edge_rule, list(grid), arm_log, record
        self.prompts = [cp.as_prompt() for cp in self.corpus_prompts]
        self.edit_1 = attention_scale(edge_rule, layer, 1.0)
        self.base: list[Record] = []

    def __call__(self, trial: Any) -> float:
        scale = trial.suggest_float("scale", min(self.grid), max(self.grid))
        edit_s = attention_scale(self.edge_rule, self.layer, scale)
        checks = identity_and_kl(self.loaded, self.prompts, self.edit_1, edit_s, False, self.cfg.batch_size)
        steered = run_arm(self.loaded, self.prompts, edit_s, self.cfg, self.arm_log())
        rows, summary = summarise(self.corpus_prompts, self.base, steered)
        self.record({**summary, **checks, "dose": scale}, rows)
        trial.set_user_attr("new_tests_mcnemar_p", summary["new_tests_mcnemar_p"])
        trial.set_user_attr("steered_new_tests", summary["steered_new_tests"])
        return (summary["steered_new_tests"] - summary["baseline_new_tests"]) / summary["total"]


class KlGain:
    """Scale-search objective: mean KL(scale 1 || scale s) at the last prompt token (no generation)."""

    def __init__(
        self,
        loaded: LoadedModel,
        prompts: Sequence[Prompt],
        layer: int,
        edge_rule: str,
        grid: Sequence[float],
        batch: int,
        record: Callable[[Record, list[Record]], None],
    ) -> None:
        self.loaded, self.prompts, self.layer, self.edge_rule = loaded, list(prompts), layer, edge_rule
        self.grid, self.batch, self.record = list(grid), batch, record

    def __call__(self, trial: Any) -> float:
        scale = trial.suggest_float("scale", min(self.grid), max(self.grid))
        edit_1 = attention_scale(self.edge_rule, self.layer, 1.0)
        edit_s = attention_scale(self.edge_rule, self.layer, scale)
        checks = identity_and_kl(self.loaded, self.prompts, edit_1, edit_s, False, self.batch)
        self.record({**checks, "dose": scale}, [])
        trial.set_user_attr("kl_last_token_max", checks["kl_last_token_max"])
        return checks["kl_last_token_mean"]
