"""steerkit.attention.n50's executable outcome on n50 items with hand-written completions, in the Rust sandbox:
repeated `#[test]` lines and copies of the prompt's test score 0 on `valid_test`, a real passing test scores 1;
the declared outcome plan, its fallback and the ceiling/floor warning (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from steerkit.attention import n50
from steerkit.corpora.prompts import load_prompt_corpus
from tests.conftest import CORPUS_N50

try:
    from steerkit.execution import run_rust_many
except ImportError:
    run_rust_many = None
needs_rust_sandbox = pytest.mark.skipif(run_rust_many is None, reason="no Rust sandbox in this tree")

GCD_BODY = """\
    let (mut a, mut b) = (a, b);
    while b != 0 {
        let r = a % b;
        a = b;
        b = r;
    }
    a
}

"""
GCD_OWN = """\
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcd_of_coprimes_and_multiples() {
        assert_eq!(gcd(12, 8), 4);
        assert_eq!(gcd(9, 4), 1);
    }
}
"""
GCD_COPY = """\
#[test]
fn test_gcd_again() {
    assert_eq!(gcd(48, 18), 6);
    assert_eq!(gcd(17, 5), 1);
    assert_eq!(gcd(0, 9), 9);
}
"""
GOLDEN_BODY = "    (1.0 + 5.0_f64.sqrt()) / 2.0\n}\n\n"


def _record(pid: str, text: str) -> dict:
    return {"prompt_id": pid, "text": text, "n_tokens": 1, "stop_reason": "eos", "token_ids": [hash(text) % 1000]}


def _items() -> list:
    corpus = {p.id: p for p in load_prompt_corpus(CORPUS_N50).prompts}
    return [corpus["arith_gcd"], corpus["arith_golden_ratio"]]


@needs_rust_sandbox
def test_marker_lines_and_copies_score_zero_and_a_real_test_scores_one() -> None:
    """Regression (#11): the seed's substring outcome counted `#[test]` lines and copies of the prompt's test."""
    gcd, golden = _items()
    base = [_record(gcd.id, GCD_BODY + "#[test]\n" * 20), _record(golden.id, GOLDEN_BODY + "#[test]\n#[test]\n")]
    steer = [_record(golden.id, GOLDEN_BODY + "/// #[test]\n" * 5), _record(gcd.id, GCD_BODY + GCD_OWN)]
    validity = n50.score_validity([gcd, golden], base, steer)  # steered arm in another order: joined by id
    rows, summary = n50.summarise([gcd, golden], base, steer, validity)
    assert rows[0]["baseline_has_test"] and not rows[0]["baseline_valid_test"]  # the substring outcome is fooled
    assert (rows[0]["baseline_valid_reason"], rows[1]["baseline_valid_reason"]) == ("no_test", "no_test")
    assert (rows[0]["steered_valid_test"], rows[0]["steered_test_compiles"]) == (True, True)
    assert rows[0]["steered_test_fails_on_mutant"] is True and rows[0]["steered_valid_reason"] == "ok"
    assert rows[1]["steered_valid_test"] is False
    assert (summary["baseline_valid_test"], summary["steered_valid_test"]) == (0, 1)
    assert (summary["valid_test_mcnemar_b"], summary["valid_test_mcnemar_c"]) == (1, 0)  # b: gained
    assert summary["steered_valid_test_rate"] == 0.5 and summary["steered_test_fails_on_mutant_rate"] == 0.5
    assert (summary["n_scored"], summary["n_without_reference"]) == (2, 0)

    copy = n50.score_validity([gcd], [_record(gcd.id, GCD_BODY + GCD_COPY)], [_record(gcd.id, GCD_BODY)])
    assert copy[gcd.id][0].reason == "copy_of_prompt_test" and not copy[gcd.id][0].valid_test


@needs_rust_sandbox
def test_items_without_a_reference_are_not_scored() -> None:
    gcd, golden = _items()
    bare = dataclasses.replace(golden, reference=None, mutant=None)
    base = [_record(gcd.id, GCD_BODY + GCD_OWN), _record(golden.id, GOLDEN_BODY)]
    steer = [_record(gcd.id, GCD_BODY), _record(golden.id, GOLDEN_BODY)]
    validity = n50.score_validity([gcd, bare], base, steer)
    assert set(validity) == {gcd.id}
    rows, summary = n50.summarise([gcd, bare], base, steer, validity)
    assert rows[1]["baseline_valid_test"] is None and rows[1]["steered_valid_reason"] is None
    assert (summary["n_scored"], summary["n_without_reference"], summary["baseline_valid_test"]) == (1, 1, 1)


def test_outcome_plan_declares_valid_test_or_falls_back_to_new_test() -> None:
    gcd, golden = _items()
    plan = n50.OutcomePlan.of([gcd, dataclasses.replace(golden, reference=None, mutant=None)])
    assert (plan.primary, plan.secondary, plan.n_scored, plan.n_without_reference) == (
        "valid_test", ("has_test", "new_test"), 1, 1)  # fmt: skip
    assert plan.params() == {"primary_outcome": "valid_test", "secondary_outcomes": "has_test,new_test"}
    design = plan.design(0.05)
    assert (design.primary_outcome, design.test, design.n, design.family_size) == ("valid_test", "mcnemar_exact", 1, 1)
    bare = n50.OutcomePlan.of([dataclasses.replace(p, reference=None, mutant=None) for p in (gcd, golden)])
    assert (bare.primary, bare.n_scored, bare.n_without_reference) == ("new_test", 2, 2)
    assert bare.params()["primary_outcome_fallback"] == bare.tags()["steerkit.primary_outcome_fallback"]
    assert "no corpus item has a reference" in bare.tags()["steerkit.primary_outcome_fallback"]


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(0.96, "ceiling: baseline_valid_test_rate=0.96 > 0.8"), (0.0, "floor: baseline_valid_test_rate=0.00 < 0.05"),
     (0.5, None), (0.8, None), (0.05, None)],
)  # fmt: skip
def test_ceiling_warning(rate: float, expected: str | None) -> None:
    assert n50.ceiling_warning({"baseline_valid_test_rate": rate}, "valid_test") == expected
    assert n50.ceiling_warning({}, "valid_test") is None
