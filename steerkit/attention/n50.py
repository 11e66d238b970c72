"""Seed 000's n=50 experiment: attention steering and whether the model keeps the doc-comment test.

Design note: baseline and steered arms run through the same code path: the baseline is the same `AttentionEdit`
at scale 1.0, bit-identical to the unhooked model (`identity_and_kl` checks it). Arms are generated batch by batch
into a `RecordLog` (the script passes a `tracking.SampleLog`; this module never imports MLflow), so a resumed arm
only generates the prompts its log lacks; done prompts are a prefix of the length-sorted batch order, so the
remaining batches are the ones an uninterrupted run builds. `summarise` joins the two arms by prompt id (never by
position: a reused baseline is in batch order) and reports new tests separately from copies of the prompt's own.
The primary outcome is executable (`OutcomePlan`, declared before generation): `valid_test`, the completion's own
test compiled and run against the item's reference in the sandbox (`score_validity`, both arms of every item in
one batch, so the sandbox compiles in parallel and load hits both arms alike); the seed's substring outcomes
`has_test` / `new_test` are secondary. Items without a reference are not scored; a corpus with no reference at
all falls back to `new_test` as the primary, and says so.
The scale-search objectives (`NewTestGain` here, `kl_gain.KlGain`) take an Optuna-style trial (`suggest_float`,
`set_user_attr`, `report`) and a `record` callback for what the trial run logs; `NewTestGain` reports each prompt's
gain (steered minus baseline new test, step = corpus index) for a paired pruner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steerkit.attention.applied_dose import applied_doses, continuations_of
from steerkit.attention.edge_rules import attention_scale
from steerkit.attention.n50_arms import baseline_key as baseline_key
from steerkit.attention.n50_arms import declared_split, first_logit_figures, identity_and_kl, run_arm, run_arms
from steerkit.core.arms import FirstLogits
from steerkit.core.checks import require_identity
from steerkit.core.generation import GenerationConfig
from steerkit.core.models import LoadedModel
from steerkit.core.pruning import chunk_ends, report_items
from steerkit.core.records import MemoryLog, Record, RecordLog
from steerkit.corpora.prompts import CorpusPrompt
from steerkit.errors import Pruned
from steerkit.metrics import rust_test_preservation
from steerkit.metrics.rust_validity import Runner, RustValidity, TestProblem, score_valid_tests
from steerkit.stats import join_by_id, paired_binary_summary
from steerkit.stats.design import Design

SECONDARY = ("has_test", "new_test")
CEILING, FLOOR = 0.8, 0.05  # a baseline rate outside [FLOOR, CEILING] leaves little room to show a change
_VALIDITY_FLAGS = ("valid_test", "test_compiles", "test_fails_on_mutant")
Validity = Mapping[str, tuple[RustValidity, RustValidity]]  # prompt id -> (baseline, steered)


@dataclass(frozen=True)
class OutcomePlan:
    """The declared outcomes: `valid_test` when some item has a reference, else the `new_test` fallback."""

    primary: str
    secondary: tuple[str, ...]
    n_scored: int
    n_without_reference: int

    @classmethod
    def of(cls, corpus_prompts: Sequence[CorpusPrompt]) -> OutcomePlan:
        n = len(corpus_prompts)
        with_ref = sum(cp.reference is not None and cp.mutant is not None for cp in corpus_prompts)
        if with_ref:
            return cls("valid_test", SECONDARY, with_ref, n - with_ref)
        return cls("new_test", ("has_test",), n, n)

    @property
    def fallback(self) -> str | None:
        return None if self.primary == "valid_test" else "new_test: no corpus item has a reference"

    def design(self, alpha: float) -> Design:
        """Exact McNemar on the primary outcome's pairs, one hypothesis (family 1)."""
        return Design(self.primary, "mcnemar_exact", n=self.n_scored, family_size=1, alpha=alpha)

    def params(self) -> dict[str, Any]:
        fallback = {"primary_outcome_fallback": self.fallback} if self.fallback else {}
        return {"primary_outcome": self.primary, "secondary_outcomes": ",".join(self.secondary), **fallback}

    def tags(self) -> dict[str, str]:
        fallback = {"steerkit.primary_outcome_fallback": self.fallback} if self.fallback else {}
        return {"steerkit.primary_outcome": self.primary, **fallback}


def score_validity(
    corpus_prompts: Sequence[CorpusPrompt], base: list[Record], steer: list[Record], run: Runner | None = None
) -> dict[str, tuple[RustValidity, RustValidity]]:
    """`valid_test` of both arms' completions for every item with a reference, scored in one sandbox batch.

    `run`: the sandbox runner (`rust_validity.sandbox_runner()` when None). Arms are joined by prompt id.
    """
    pairs = join_by_id(base, steer, order=[cp.id for cp in corpus_prompts])
    items = [
        (cp.id, TestProblem(cp.prompt, cp.reference, cp.mutant), b["text"], s["text"])
        for cp, (b, s) in zip(corpus_prompts, pairs)
        if cp.reference is not None and cp.mutant is not None
    ]
    scores = score_valid_tests([(p, b) for _, p, b, _ in items] + [(p, s) for _, p, _, s in items], run)
    k = len(items)
    return {pid: (scores[i], scores[k + i]) for i, (pid, _, _, _) in enumerate(items)}


def ceiling_warning(summary: Mapping[str, Any], primary: str) -> str | None:
    """`ceiling: baseline_<primary>_rate=0.96 > 0.8` (or `floor: ... < 0.05`) when the baseline leaves no room."""
    rate = summary.get(f"baseline_{primary}_rate")
    if rate is None:
        return None
    if rate > CEILING:
        return f"ceiling: baseline_{primary}_rate={rate:.2f} > {CEILING}"
    if rate < FLOOR:
        return f"floor: baseline_{primary}_rate={rate:.2f} < {FLOOR}"
    return None


def _validity_columns(v: tuple[RustValidity, RustValidity] | None) -> Record:
    """`<arm>_valid_test`, `<arm>_test_compiles`, `<arm>_test_fails_on_mutant`, `<arm>_valid_reason` (None: no
    reference)."""
    row: Record = {}
    for arm, score in zip(("baseline", "steered"), v or (None, None)):
        row.update({f"{arm}_{flag}": getattr(score, flag) if score else None for flag in _VALIDITY_FLAGS})
        row[f"{arm}_valid_reason"] = score.reason if score else None
    return row


def _validity_summary(rows: list[Record], n_items: int) -> Record:
    scored = [r for r in rows if r["baseline_valid_test"] is not None]
    out: Record = {"n_scored": len(scored), "n_without_reference": n_items - len(scored)}
    if not scored:
        return out
    out.update(paired_binary_summary([r["baseline_valid_test"] for r in scored],
                                     [r["steered_valid_test"] for r in scored], "valid_test"))  # fmt: skip
    for flag in _VALIDITY_FLAGS:
        for arm in ("baseline", "steered"):
            out[f"{arm}_{flag}_rate"] = sum(bool(r[f"{arm}_{flag}"]) for r in scored) / len(scored)
    return out


def summarise(
    corpus_prompts: Sequence[CorpusPrompt], base: list[Record], steer: list[Record], validity: Validity | None = None
) -> tuple[list[Record], Record]:
    """Per-sample rows in corpus order, each baseline record joined to its steered record by prompt id.

    `validity` (from `score_validity`) adds the executable outcome's columns and its paired statistics
    (`valid_test_mcnemar_p`, ...); items it lacks get None and are counted in `n_without_reference`.
    """
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
                **_validity_columns((validity or {}).get(cp.id)),
            }
        )
    summary: Record = {"total": len(rows), "n_identical_outputs": sum(r["identical"] for r in rows)}
    for outcome, label in (("has_test", "preserved"), ("new_test", "new_tests")):
        base_flags, steer_flags = [r[f"baseline_{outcome}"] for r in rows], [r[f"steered_{outcome}"] for r in rows]
        summary.update(paired_binary_summary(base_flags, steer_flags, label))
        for arm, flags in (("baseline", base_flags), ("steered", steer_flags)):
            summary[f"{arm}_{outcome}_rate"] = sum(flags) / len(rows) if rows else 0.0
    if validity is not None:
        summary.update(_validity_summary(rows, len(rows)))
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
        self.edits = {g: attention_scale(edge_rule, layer, g) for g in self.grid}
        # the declared prefill cut of every arm (one edge rule: the same at every scale; in the baseline key)
        self.split = declared_split(loaded, self.prompts, self.edit_1, *self.edits.values())
        self.base: list[Record] = []
        self.prune_every = 0  # > 0: generate that many prompts at a time and report each prompt's gain to the pruner
        self.arms: dict[float, list[Record]] = {}  # pregenerated steered arms by scale (`pregenerate`)
        self.first = FirstLogits()
        self.doses: dict[float, tuple[dict[str, float], list[Record]]] = {}  # pregenerated scales' applied doses

    def pregenerate(self, base_log: RecordLog | None, scales: bool = True) -> None:
        """Generate the baseline into `base_log` (None: `base` was reused) and, with `scales`, every grid scale, in
        one pass computing each batch's prompt prefix once; trials then read their scale's records and logits."""
        arms = {"baseline": [self.edit_1]} | {f"scale_{g}": [e] for g, e in self.edits.items()}
        logs: dict[str, RecordLog] = {f"scale_{g}": MemoryLog() for g in self.edits} if scales else {}
        if base_log is not None:
            logs["baseline"] = base_log
        got = run_arms(self.loaded, self.prompts, arms, self.cfg, logs, self.split, self.first if scales else None)
        self.base = got.get("baseline", self.base)
        self.arms = {g: got[f"scale_{g}"] for g in self.edits} if scales else {}

    def _steered(self, scale: float, edit_s: Any, log: RecordLog, end: int) -> list[Record]:
        """The trial's steered records for `prompts[:end]`: pregenerated (copied into its log) or generated now."""
        if scale not in self.arms:
            return run_arm(self.loaded, self.prompts[:end], edit_s, self.cfg, log, self.split)
        for record in self.arms[scale]:
            log.append(record)
        log.flush()
        return self.arms[scale]

    def _checks(self, scale: float, edit_s: Any) -> dict[str, float]:
        if scale in self.arms:
            return first_logit_figures(self.first, [p.id for p in self.prompts], "baseline", f"scale_{scale}")
        return identity_and_kl(self.loaded, self.prompts, self.edit_1, edit_s, False, self.cfg.batch_size, self.split)

    def design(self, alpha: float) -> Design:
        """Exact McNemar on `new_test` at each steered scale; the family is the grid's scales other than 1.0."""
        family = max(1, sum(g != 1.0 for g in self.grid))
        return Design("new_test", "mcnemar_exact", n=len(self.prompts), family_size=family, alpha=alpha)

    def __call__(self, trial: Any) -> float:
        scale = trial.suggest_float("scale", min(self.grid), max(self.grid))
        edit_s = attention_scale(self.edge_rule, self.layer, scale)
        checks = self._checks(scale, edit_s)
        require_identity(checks)  # fails the trial, and with it the study's run
        log, n = self.arm_log(), len(self.prompts)
        for start, end in chunk_ends(n, self.prune_every):  # one chunk unless pruning (`prune_every` prompts)
            steered = self._steered(scale, edit_s, log, end)
            ids = {p.id for p in self.prompts[:end]}  # by id: a reused baseline is in batch order
            rows, summary = summarise(
                self.corpus_prompts[:end], [r for r in self.base if r["prompt_id"] in ids], steered
            )
            gains = {i: int(r["steered_new_test"]) - int(r["baseline_new_test"]) for i, r in enumerate(rows)}
            try:
                report_items(trial, {i: gains[i] for i in range(start, end)}, end, n)
            except Pruned:
                self.record({**summary, **checks, "dose": scale}, rows)  # what the pruned trial saw
                raise
        cont, batch = continuations_of(self.base), self.cfg.batch_size
        if scale not in self.doses:  # a pregenerated scale measures them all: the identity's pass done once
            pending = {g: self.edits[g] for g in self.arms} if scale in self.arms else {scale: edit_s}
            self.doses |= applied_doses(self.loaded, self.prompts, cont, self.edit_1, pending, layer=self.layer,
                                        batch_size=batch)  # fmt: skip
        applied = self.doses[scale][0]
        self.record({**summary, **checks, **applied, "dose": scale}, rows)
        trial.set_user_attr("new_tests_mcnemar_p", summary["new_tests_mcnemar_p"])
        trial.set_user_attr("steered_new_tests", summary["steered_new_tests"])
        return (summary["steered_new_tests"] - summary["baseline_new_tests"]) / summary["total"]
