"""The paired steering evaluation: identity control, one baseline, one steered arm per coefficient, paired tests.

Design note: the seed experiments' design, for any model, prompts, intervention and scorer. The baseline is the
steering at its identity value (coef 0 / scale 1), generated through the same `generate` call, batching and
prefill cut as every steered arm (the cut is derived once from all arms, `core.arms.shared_prefix`), and checked
bit for bit against the unhooked model first (`core.checks`; a non-zero difference fails). Arms are joined by
prompt id (`stats.paired.join_by_id`), never by position. Binary outcomes get exact McNemar and the paired
(Newcombe) risk difference, continuous ones the Wilcoxon signed-rank test and the median paired difference with a
bootstrap interval (`stats.compare`); with several coefficients, Benjamini-Hochberg runs over the grid, the
declared family. No MLflow here: the caller logs (`experiments/steer_eval.py`) or reads the result in a notebook.
A search trial may prune a coefficient: its prompts then go in chunks in the baseline's batch order (the same
batches, so a completed coefficient's figures equal one pass), and after each chunk the per-prompt paired
differences (steered minus baseline score, joined by id; step = the prompt's index) go to the trial's pruner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from steerkit.core.arms import generate_arms, shared_prefix
from steerkit.core.batching import batch_order, encode_prompts
from steerkit.core.checks import identity_logits, require_identity
from steerkit.core.generation import Generation, GenerationConfig, Prompt, generate, next_token_logits
from steerkit.core.models import LoadedModel
from steerkit.core.pruning import chunk_ends, report_items
from steerkit.corpora.loader import PromptRow
from steerkit.errors import Pruned, SteerkitError
from steerkit.metrics.divergence import kl_divergence
from steerkit.stats.compare import Comparison, Pairing, adjust_family, compare_binary, compare_continuous
from steerkit.stats.design import Design
from steerkit.stats.paired import join_by_id
from steerkit.steer_eval.scorers import Scorer
from steerkit.steer_eval.steering import Steering

TESTS = {"binary": "mcnemar_exact", "continuous": "wilcoxon_exact"}


@dataclass(frozen=True)
class CoefResult:
    """One coefficient: its per-sample table (joined by id) and the paired test against the baseline."""

    coef: float
    table: list[dict[str, Any]] = field(repr=False)
    test: Comparison

    def metrics(self) -> dict[str, float | int | None]:
        """Flat figures: p, effect and interval, rates or means per arm, q-value, identical outputs."""
        t = self.test
        out: dict[str, float | int | None] = {
            "p_value": t.p_value,
            "effect": t.effect,
            "effect_low": t.effect_low,
            "effect_high": t.effect_high,
            "n_pairs": t.n_pairs,
            "q_value": t.q_value,
            "n_identical_outputs": sum(r["baseline_output"] == r["steered_output"] for r in self.table),
        }
        if t.kind == "binary":
            out.update(baseline_rate=t.reference_rate, steered_rate=t.run_rate, mcnemar_b=t.b, mcnemar_c=t.c)
        else:
            out.update(baseline_mean=t.extra["reference_mean"], steered_mean=t.extra["run_mean"])
        return out


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate` returns: the design, the identity figure, and one `CoefResult` per coefficient."""

    design: Design
    identity: dict[str, float]
    steering: Steering = field(repr=False)
    scorer: str
    results: list[CoefResult]

    @property
    def test(self) -> Comparison:
        """The paired test of the only coefficient (with a grid: use `results` or `summary()`)."""
        if len(self.results) != 1:
            raise SteerkitError(f"{len(self.results)} coefficients were evaluated: read .results or .summary()")
        return self.results[0].test

    @property
    def table(self) -> list[dict[str, Any]]:
        """Every coefficient's per-sample rows (each row carries its `coef`)."""
        return [row for r in self.results for row in r.table]

    def frame(self) -> Any:
        """`table` as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.table)

    def summary(self) -> list[dict[str, Any]]:
        """One row per coefficient: p, BH q (over the grid), effect with its interval, arm rates or means."""
        return [{"coef": r.coef, **r.metrics()} for r in self.results]


def _records(gens: Sequence[Generation], scores: Sequence[float | bool]) -> list[dict[str, Any]]:
    return [
        {"prompt_id": g.prompt_id, "output": g.text, "tokens": g.n_tokens, "stop_reason": g.stop_reason, "score": s}
        for g, s in zip(gens, scores)
    ]


class EvalSession:
    """The evaluation of one steering on one prompt set: identity check, a cached baseline, any coefficient.

    Args:
        loaded: the model.
        rows: the prompts (ids unique).
        steering: what is done to the model.
        scorer: how a completion is scored.
        config: generation parameters, the same for every arm.
        coefs: every coefficient that will be evaluated (the declared family, and the arms the prefill cut is
            derived from).
        alpha: the family's false discovery rate.
        seed: the bootstrap seed of continuous effect intervals.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        rows: Sequence[PromptRow],
        steering: Steering,
        scorer: Scorer,
        *,
        config: GenerationConfig,
        coefs: Sequence[float],
        alpha: float = 0.05,
        seed: int = 0,
    ) -> None:
        if not rows:
            raise SteerkitError("steer_eval needs at least one prompt")
        if not coefs:
            raise SteerkitError("steer_eval needs at least one coefficient")
        for need in scorer.needs:
            if any(need not in r.fields for r in rows):
                raise SteerkitError(f"scorer {scorer.name!r} needs the field {need!r} in every prompt (fields={need})")
        self.loaded, self.rows, self.steering, self.scorer, self.config = loaded, list(rows), steering, scorer, config
        self.coefs, self.seed = [float(c) for c in coefs], seed
        self.prompts = [Prompt(r.id, r.text) for r in self.rows]
        self.order = batch_order(encode_prompts(loaded, self.prompts, config.chat))  # `generate`'s batches
        self._index = {r.id: i for i, r in enumerate(self.rows)}
        arms = {f"coef={c}": steering.interventions(c) for c in [steering.identity, *self.coefs]}
        self.split = shared_prefix(loaded, self.prompts, arms, config.chat)
        family = len(self.coefs)
        self.design = Design(scorer.name, TESTS[scorer.outcome], len(self.rows), family, alpha)
        self._identity_logits: Any = None
        self._baseline: list[dict[str, Any]] | None = None
        self._generated: dict[float, list[Generation]] = {}  # `pregenerate`'s arms by coefficient

    def identity_check(self, require: bool = True) -> dict[str, float]:
        """`{identity_max_abs_logit_diff: d}` of the unhooked model vs the identity steering; with `require`
        (else the caller's job, after logging it) raises unless it is exactly 0."""
        figures, self._identity_logits = identity_logits(
            self.loaded,
            self.prompts,
            self.steering.interventions(self.steering.identity),
            chat=self.config.chat,
            batch_size=self.config.batch_size,
        )
        if require:
            require_identity(figures)
        return figures

    def pregenerate(self, on_baseline: Callable[[Generation], None] | None = None) -> None:
        """The baseline and every coefficient in one `generate_arms` pass (prompt prefix shared, arms decoded as one
        batch where exact): the tokens one `generate` per arm with this cut gives. `baseline()` and unpruned
        `coefficient()` then score these; the baseline's generations reach `on_baseline` batch by batch."""
        coefs = list(dict.fromkeys([self.steering.identity, *self.coefs]))
        arms = {str(c): self.steering.interventions(c) for c in coefs}
        sink = (lambda arm, g: on_baseline(g) if arm == str(coefs[0]) else None) if on_baseline else None
        got = generate_arms(self.loaded, self.prompts, arms, config=self.config, split=self.split, on_result=sink)
        self._generated = {c: got[str(c)] for c in coefs}

    def _arm(
        self, coef: float, on_result: Callable[[Generation], None] | None, idx: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """Scored records of the arm at `coef` on every prompt, or on the prompts at `idx`."""
        prompts = self.prompts if idx is None else [self.prompts[i] for i in idx]
        if idx is None and coef in self._generated:
            gens = self._generated[coef]
            for gen in gens:
                _ = on_result(gen) if on_result is not None else None
        else:
            ivs, split = self.steering.interventions(coef), self.split
            gens = generate(
                self.loaded, prompts, interventions=ivs, config=self.config, prefill_split=split, on_result=on_result
            )
        if self.scorer.batch is not None:
            return _records(gens, self.scorer.score(gens, [self.rows[self._index[p.id]] for p in prompts]))
        return _records(gens, [float(k) for k in self._kl(coef)])

    def _kl(self, coef: float) -> Any:
        """Per-prompt KL(identity || coef) of the next-token distribution at the last prompt token `[n_prompts]`."""
        if self._identity_logits is None:
            self.identity_check()
        logits = next_token_logits(
            self.loaded,
            self.prompts,
            interventions=self.steering.interventions(coef),
            chat=self.config.chat,
            batch_size=self.config.batch_size,
        )
        return kl_divergence(self._identity_logits, logits)

    def divergence(self, coef: float) -> float:
        """Mean over prompts of KL(identity || steered at `coef`) at the last prompt token (0 at the identity)."""
        return float(self._kl(coef).mean())

    def baseline(
        self, on_result: Callable[[Generation], None] | None = None, with_coefs: bool = False
    ) -> list[dict[str, Any]]:
        """The identity arm's scored records (generated once, then reused by every coefficient); `with_coefs`:
        generated in one pass with every coefficient (`pregenerate`), each generation handed to `on_result` once."""
        if self._baseline is None:
            if with_coefs and not self._generated:
                self.pregenerate(on_result)
                on_result = None
            self._baseline = self._arm(self.steering.identity, on_result)
        return self._baseline

    def coefficient(
        self,
        coef: float,
        on_result: Callable[[Generation], None] | None = None,
        *,
        trial: Any = None,
        prune_every: int = 0,
        on_pruned: Callable[[CoefResult], None] | None = None,
    ) -> CoefResult:
        """Generate and score the steered arm at `coef`, join it to the baseline by id, and test the pairs.

        With an Optuna-style `trial` the per-prompt paired differences are reported to its pruner
        (`core.pruning.report_items`), after every `prune_every` prompts (in batch order; 0: once, at the end).
        A pruned trial calls `on_pruned` with the result on the prompts seen so far and raises `Pruned`.
        """
        if prune_every and self.scorer.batch is None:
            raise SteerkitError(f"pruning needs a scorer of completions; {self.scorer.name!r} is computed from logits")
        base, steered, n = self.baseline(), [], len(self.prompts)
        for start, end in chunk_ends(n, prune_every):
            steered += self._arm(coef, on_result, self.order[start:end] if prune_every else None)
            if trial is None:
                continue
            seen = {r["prompt_id"] for r in steered[start:]}
            pairs = join_by_id([b for b in base if b["prompt_id"] in seen], steered[start:])
            diffs = {self._index[b["prompt_id"]]: float(s["score"]) - float(b["score"]) for b, s in pairs}
            try:
                report_items(trial, diffs, end, n)
            except Pruned:
                if on_pruned is not None:
                    on_pruned(self._result(coef, base, steered))
                raise
        return self._result(coef, base, steered)

    def _result(self, coef: float, base: list[dict[str, Any]], steered: list[dict[str, Any]]) -> CoefResult:
        """The per-sample table and the paired test of `steered` (every prompt, or the ones a pruned trial saw)."""
        seen = {r["prompt_id"] for r in steered}
        order = [r.id for r in self.rows if r.id in seen]
        pairs = join_by_id([b for b in base if b["prompt_id"] in seen], steered, order=order)
        fields = {r.id: r for r in self.rows}
        table = [
            {
                "id": b["prompt_id"],
                "coef": float(coef),
                "prompt": fields[b["prompt_id"]].text,
                **fields[b["prompt_id"]].fields,
                **{f"{arm}_{k}": rec[k] for arm, rec in (("baseline", b), ("steered", s)) for k in _KEYS},
            }
            for b, s in pairs
        ]
        pairing = Pairing(
            [r["id"] for r in table], [r["baseline_score"] for r in table], [r["steered_score"] for r in table]
        )
        name, outcome = f"coef={coef}", self.scorer.name
        if self.scorer.outcome == "binary":
            test = compare_binary(pairing, run_id=name, reference="baseline", outcome=outcome, dose=float(coef))
        else:
            test = compare_continuous(
                pairing, run_id=name, reference="baseline", outcome=outcome, dose=float(coef), seed=self.seed
            )
        return CoefResult(float(coef), table, test)


_KEYS = ("output", "score", "tokens", "stop_reason")


def adjust_grid(results: Sequence[CoefResult], alpha: float, not_run: int = 0) -> list[CoefResult]:
    """Benjamini-Hochberg over the coefficients (the declared family): each result gets its q-value.

    `not_run` pruned coefficients stay in the family at p = 1 (`stats.compare.adjust_family`)."""
    tests, _ = adjust_family([r.test for r in results], alpha, not_run)
    return [dataclasses.replace(r, test=t) for r, t in zip(results, tests)]


__all__ = ["CoefResult", "EvalResult", "EvalSession", "TESTS", "adjust_grid"]
