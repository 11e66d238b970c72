"""Tests for steerkit.metrics.rust_validity (and its parser, rust_tests): pure checks on hand-written Rust, the
scoring logic with a fake runner, and end to end in the Rust sandbox on problems written here (not in the corpus)
and on the 50 n50 references and mutants."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.errors import SteerkitError
from steerkit.metrics.rust_validity import (
    REASONS,
    RustTest,
    RustValidity,
    build_test_program,
    calls_function,
    extract_tests,
    function_name,
    is_copy_of_prompt_test,
    prompt_tests,
    sandbox_runner,
    score_valid_test,
)
from tests.conftest import CORPUS_N50

try:
    from steerkit.execution import RustJob, run_rust_many
except ImportError:
    RustJob = run_rust_many = None
needs_rust_sandbox = pytest.mark.skipif(
    run_rust_many is None,
    reason="steerkit.execution.run_rust_many cannot be imported: the Rust sandbox is not in this tree yet",
)

GCD_PROMPT = (
    "/// Returns the greatest common divisor of `a` and `b`; it's Euclid's algorithm.\n"
    "///\n"
    "/// #[test]\n"
    "/// fn test_gcd() {\n"
    "///     assert_eq!(gcd(48, 18), 6);\n"
    "///     assert_eq!(gcd(17, 5), 1);\n"
    "/// }\n"
    "fn gcd(a: u64, b: u64) -> u64 {\n"
)
BODY = "    if b == 0 { a } else { gcd(b, a % b) }\n}\n\n"


@dataclass(frozen=True)
class Problem:
    prompt: str
    reference: str
    mutant: str


# HumanEval-style problems written for this test: none of them is in the corpus.
SUM_SQUARES = Problem(
    prompt="/// Returns the sum of the squares of the values in `v`.\n///\n/// #[test]\n/// fn test_sum_squares() {\n"
    "///     assert_eq!(sum_squares(&[1, 2, 3]), 14);\n/// }\nfn sum_squares(v: &[i64]) -> i64 {\n",
    reference="fn sum_squares(v: &[i64]) -> i64 {\n    v.iter().map(|x| x * x).sum()\n}\n",
    mutant="fn sum_squares(v: &[i64]) -> i64 {\n    v.iter().sum()\n}\n",
)
IS_PALINDROME = Problem(
    prompt="/// Returns `true` if `s` reads the same forwards and backwards.\n///\n/// #[test]\n"
    '/// fn test_is_palindrome() {\n///     assert!(is_palindrome("level"));\n'
    '///     assert!(!is_palindrome("abca"));\n/// }\nfn is_palindrome(s: &str) -> bool {\n',
    reference="fn is_palindrome(s: &str) -> bool {\n    s.chars().eq(s.chars().rev())\n}\n",
    mutant="fn is_palindrome(s: &str) -> bool {\n    s.len() <= 1 || s.chars().next() == s.chars().last()\n}\n",
)
FIZZBUZZ = Problem(
    prompt='/// Returns "Fizz" for multiples of 3, "Buzz" for multiples of 5, "FizzBuzz" for multiples of both,\n'
    "/// and the number itself otherwise.\n///\n/// #[test]\n/// fn test_fizzbuzz() {\n"
    '///     assert_eq!(fizzbuzz(15), "FizzBuzz");\n///     assert_eq!(fizzbuzz(7), "7");\n/// }\n'
    "fn fizzbuzz(n: u32) -> String {\n",
    reference="fn fizzbuzz(n: u32) -> String {\n    match (n % 3, n % 5) {\n"
    '        (0, 0) => "FizzBuzz".to_string(),\n        (0, _) => "Fizz".to_string(),\n'
    '        (_, 0) => "Buzz".to_string(),\n        _ => n.to_string(),\n    }\n}\n',
    mutant="fn fizzbuzz(n: u32) -> String {\n    if n % 3 == 0 {\n"
    '        "Fizz".to_string()\n    } else if n % 5 == 0 {\n        "Buzz".to_string()\n'
    '    } else if n % 15 == 0 {\n        "FizzBuzz".to_string()\n    } else {\n        n.to_string()\n    }\n}\n',
)
# Per problem: the rest of the body, and a test of its own that passes on the reference and fails on the mutant.
SOLVED = {
    "sum_squares": (SUM_SQUARES, "    v.iter().map(|x| x * x).sum()\n}\n\n", "assert_eq!(sum_squares(&[-2, 3]), 13);"),
    "is_palindrome": (IS_PALINDROME, "    s.chars().eq(s.chars().rev())\n}\n\n", 'assert!(!is_palindrome("abxa"));'),
    "fizzbuzz": (FIZZBUZZ, "    n.to_string()\n}\n\n", 'assert_eq!(fizzbuzz(30), "FizzBuzz");'),
}


def _in_mod_tests(*tests: str) -> str:
    inner = "\n".join(f"    #[test]\n    fn {name}() {{\n        {body}\n    }}\n" for name, body in tests)
    return f"#[cfg(test)]\nmod tests {{\n    use super::*;\n\n{inner}}}\n"


# ---- extract_tests


def test_extract_finds_top_level_tests_and_tests_inside_mod_tests() -> None:
    completion = (
        BODY
        + "#[test]\nfn top() {\n    assert_eq!(gcd(4, 6), 2);\n}\n\n"
        + _in_mod_tests(("inner_a", "assert_eq!(gcd(9, 3), 3);"), ("inner_b", "assert_eq!(gcd(7, 7), 7);"))
    )
    tests = extract_tests(completion)
    assert [t.name for t in tests] == ["top", "inner_a", "inner_b"]
    assert tests[0].source == "#[test]\nfn top() {\n    assert_eq!(gcd(4, 6), 2);\n}"
    assert tests[1].source == "    #[test]\n    fn inner_a() {\n        assert_eq!(gcd(9, 3), 3);\n    }"


def test_extract_leaves_out_a_test_cut_off_mid_function() -> None:
    completion = (
        BODY + "#[test]\nfn whole() { assert_eq!(gcd(2, 4), 2); }\n\n#[test]\nfn cut() {\n    assert_eq!(gcd(1, "
    )
    assert [t.name for t in extract_tests(completion)] == ["whole"]
    in_mod = (
        BODY
        + "#[cfg(test)]\nmod tests {\n    use super::*;\n"
        + "    #[test]\n    fn cut() {\n        assert!(gcd(1, 1) == 1);\n"
    )
    assert extract_tests(in_mod) == []


def test_extract_is_not_fooled_by_braces_in_strings_chars_and_comments() -> None:
    body = 'let s = "}"; let r = r#"}"}"#; let c = \'}\'; /* } */ // }\n    assert_eq!(gcd(2, 4), 2);'
    completion = (
        BODY + f"#[test]\nfn braces() {{\n    {body}\n}}\n\n#[test]\nfn after() {{ assert_eq!(gcd(3, 9), 3); }}\n"
    )
    tests = extract_tests(completion)
    assert [t.name for t in tests] == ["braces", "after"]
    assert tests[0].source.endswith("assert_eq!(gcd(2, 4), 2);\n}")


def test_extract_finds_a_test_after_text_the_parser_cannot_read() -> None:
    garbage = "    return a\n\ndef test_gcd():\n    assert gcd(1, 2) == 1\n"
    completion = garbage + "#[test]\nfn after_python() { assert_eq!(gcd(2, 2), 2); }\n#[test]\nfn cut() { gcd("
    assert extract_tests(completion) == [
        RustTest("after_python", "#[test]\nfn after_python() { assert_eq!(gcd(2, 2), 2); }")
    ]


def test_extract_keeps_other_attributes_and_ignores_commented_tests() -> None:
    completion = (
        BODY + '/// #[test]\n/// fn in_doc() {}\n#[test]\n#[should_panic(expected = "x")]\nfn p() { gcd(1, 0); }\n'
    )
    (test,) = extract_tests(completion)
    assert test == RustTest("p", '#[test]\n#[should_panic(expected = "x")]\nfn p() { gcd(1, 0); }')


@pytest.mark.parametrize(
    "completion",
    ["#[test]\n" * 40, "    a\n}\n" + "#[test]\n" * 40, "#[test]\nfn test_gcd() {\n" * 10, "", "}\n}\n}\n"],
    ids=["test_lines", "body_then_test_lines", "repeated_headers", "empty", "closing_braces"],
)
def test_degenerate_output_has_no_test(completion: str) -> None:
    assert extract_tests(completion) == []


def test_prompt_tests_reads_the_doc_comment_test() -> None:
    (test,) = prompt_tests(GCD_PROMPT)
    assert test.name == "test_gcd"
    assert test.source == "#[test]\nfn test_gcd() {\n    assert_eq!(gcd(48, 18), 6);\n    assert_eq!(gcd(17, 5), 1);\n}"


# ---- calls_function


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("fn t() { assert_eq!(gcd(1, 2), 1); }", True),
        ("fn t() { let g = gcd (4, 2); assert!(g == 2); }", True),
        ("fn t() { assert_eq!(super::gcd(1, 2), 1); }", True),
        ("fn t() { assert_eq!(gcd::<u64>(1, 2), 1); }", True),
        ("fn t() { // gcd(1, 2)\n assert!(true); }", False),
        ("fn t() { /* gcd(1, 2) */ assert!(true); }", False),
        ('fn t() { assert_eq!("gcd(1, 2)", "x"); }', False),
        ("fn t() { assert_eq!(x.gcd(1), 1); }", False),
        ("fn t() { fn gcd(a: u64) -> u64 { a } }", False),
        ("fn t() { assert_eq!(my_gcd(1, 2), 1); }", False),
        ("fn t() { let gcd = 3; assert!(gcd > 1); }", False),
    ],
)
def test_calls_function(source: str, expected: bool) -> None:
    assert calls_function(source, "gcd") is expected


# ---- is_copy_of_prompt_test


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("#[test]\nfn test_gcd() {\n    assert_eq!(gcd(48, 18), 6);\n    assert_eq!(gcd(17, 5), 1);\n}", True),
        ("#[test]\nfn renamed() { assert_eq!(gcd(48, 18), 6); assert_eq!(gcd(17, 5), 1); }", True),
        ("#[test]\nfn reflowed() {\n    assert_eq!(\n        gcd(48,18),\n        6,\n    ); // same\n}", True),
        ("#[test]\nfn part() {\n    assert_eq!(gcd(17, 5), 1)\n}", True),
        ("#[test]\nfn more() {\n    assert_eq!(gcd(48, 18), 6);\n    assert_eq!(gcd(10, 4), 2);\n}", False),
        ("#[test]\nfn other() {\n    assert_eq!(gcd(48, 18), 7);\n}", False),
        ("#[test]\nfn other_form() {\n    assert!(gcd(48, 18) == 6);\n}", False),
        ("#[test]\nfn empty() {}", False),
    ],
    ids=["verbatim", "renamed_one_line", "reflowed_trailing_comma_comment", "subset", "added_assert", "new_value",
         "rewritten", "empty"],
)  # fmt: skip
def test_is_copy_of_prompt_test(source: str, expected: bool) -> None:
    assert is_copy_of_prompt_test(source, GCD_PROMPT) is expected


def test_a_should_panic_copy_is_a_copy() -> None:
    prompt = (
        '/// Panics.\n///\n/// #[test]\n/// #[should_panic(expected = "not divisible")]\n'
        "/// fn test_divide_exact() {\n///     divide_exact(7, 2);\n/// }\nfn divide_exact(a: i64, b: i64) -> i64 {\n"
    )
    assert is_copy_of_prompt_test("#[test]\n#[should_panic]\nfn t() {\n    divide_exact(7, 2);\n}", prompt)
    assert not is_copy_of_prompt_test("#[test]\n#[should_panic]\nfn t() {\n    divide_exact(9, 4);\n}", prompt)


# ---- build_test_program


def test_build_test_program_wraps_tests_and_renames_clashes() -> None:
    raw = 'let s = "line one\n    line two";'
    tests = [
        RustTest("t", f"#[test]\nfn t() {{ {raw} assert_eq!(gcd(1, 1), 1); }}"),
        RustTest("t", "    #[test]\n    fn t() { assert_eq!(gcd(2, 2), 2); }"),
    ]
    program = build_test_program("fn gcd(a: u64, b: u64) -> u64 {\n    a\n}\n", tests)
    assert program.startswith(
        "fn gcd(a: u64, b: u64) -> u64 {\n    a\n}\n\n#[cfg(test)]\nmod generated {\nuse super::*;\n"
    )
    assert program.endswith("}\n")
    assert "fn t() {" in program and "fn t__dup1() { assert_eq!(gcd(2, 2), 2); }" in program
    assert raw in program  # a multi-line string literal is not re-indented


def test_function_name_is_the_first_function_defined() -> None:
    assert function_name(IS_PALINDROME.reference) == "is_palindrome"
    assert function_name("pub fn largest<T: PartialOrd + Copy>(items: &[T]) -> Option<T> {\n    None\n}\n") == "largest"
    with pytest.raises(SteerkitError, match="no Rust function"):
        function_name("let x = 1;")


# ---- score_valid_test with a fake runner


@dataclass
class FakeResult:
    status: str
    tests: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeRunner:
    """Answers each call with the next scripted {id: result}; records the sources it was given."""

    answers: list[dict[str, FakeResult]]
    calls: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, sources: dict[str, str]) -> dict[str, Any]:
        self.calls.append(sources)
        return self.answers[len(self.calls) - 1]


GCD = Problem(
    GCD_PROMPT, "fn gcd(a: u64, b: u64) -> u64 {\n    REF\n}\n", "fn gcd(a: u64, b: u64) -> u64 {\n    MUT\n}\n"
)
OWN = BODY + "#[test]\nfn mine() {\n    assert_eq!(gcd(12, 8), 4);\n}\n"
DOC_COPY = "/// #[test]\n/// fn test_gcd() {\n///     assert_eq!(gcd(48, 18), 6);\n/// }\n"
RENAMED_COPY = "#[test]\nfn test_gcd_again() {\n    assert_eq!(gcd(48, 18), 6);\n    assert_eq!(gcd(17, 5), 1);\n}\n"
ALL_OK = {"n_tests_found": 1, "n_own_tests": 1, "calls_function": True, "test_compiles": True, "test_passes": True,
          "test_fails_on_mutant": True, "valid_test": True, "reason": "ok"}  # fmt: skip


def _answer(ref: str, ref_tests: dict[str, str], mut: str, mut_tests: dict[str, str]) -> dict[str, FakeResult]:
    return {"reference": FakeResult(ref, ref_tests), "mutant": FakeResult(mut, mut_tests)}


def test_fake_runner_own_passing_test_that_catches_the_mutant() -> None:
    run = FakeRunner([_answer("passed", {"generated::mine": "ok"}, "failed", {"generated::mine": "failed"})])
    result = score_valid_test(GCD, OWN, run)
    assert result.to_dict() == ALL_OK
    (sources,) = run.calls
    assert set(sources) == {"reference", "mutant"}
    assert sources["reference"].startswith(GCD.reference.rstrip()) and "REF" in sources["reference"]
    assert sources["mutant"].startswith(GCD.mutant.rstrip()) and "fn mine()" in sources["mutant"]


@pytest.mark.parametrize("key", ["mine", "generated::mine", "generated::mine - should panic"])
def test_fake_runner_reads_libtest_name_forms(key: str) -> None:
    run = FakeRunner([_answer("passed", {key: "ok", "generated::mine_too": "failed"}, "passed", {key: "ok"})])
    result = score_valid_test(GCD, OWN, run)
    assert (result.valid_test, result.test_fails_on_mutant, result.reason) == (True, False, "ok")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_answer("failed", {"generated::mine": "failed"}, "failed", {}), (True, False, False, "fails_on_reference")),
        (_answer("compile_error", {}, "compile_error", {}), (False, False, False, "compile_error")),
        (_answer("error", {}, "error", {}), (False, False, False, "run_error")),
        (_answer("passed", {"generated::mine": "ok"}, "timeout", {}), (True, True, True, "ok")),
        (_answer("passed", {"generated::mine": "ok"}, "error", {}), (True, True, False, "ok")),
        (_answer("passed", {"generated::mine": "ignored"}, "passed", {}), (True, False, False, "fails_on_reference")),
    ],
    ids=["fails_on_reference", "compile_error", "sandbox_error", "mutant_hangs", "mutant_run_error", "ignored"],
)
def test_fake_runner_statuses(answer: dict[str, FakeResult], expected: tuple[bool, bool, bool, str]) -> None:
    result = score_valid_test(GCD, OWN, FakeRunner([answer]))
    assert (result.test_compiles, result.test_passes, result.test_fails_on_mutant, result.reason) == expected
    assert result.valid_test is result.test_passes


def test_the_function_under_test_is_the_one_the_prompt_opens() -> None:
    problem = Problem(GCD_PROMPT, "fn helper() -> u64 {\n    1\n}\n\n" + GCD.reference, GCD.mutant)
    run = FakeRunner([_answer("passed", {"generated::mine": "ok"}, "failed", {})])
    assert score_valid_test(problem, OWN, run).reason == "ok"
    helper_only = BODY + "#[test]\nfn t() {\n    assert_eq!(helper(), 1);\n}\n"
    assert score_valid_test(problem, helper_only, FakeRunner([])).reason == "does_not_call_function"


def test_fake_runner_one_broken_test_does_not_hide_a_good_one() -> None:
    completion = (
        BODY + "#[test]\nfn broken() { assert_eq!(gcd(1), 1); }\n#[test]\nfn good() { assert_eq!(gcd(9, 6), 3); }\n"
    )
    run = FakeRunner([
        _answer("compile_error", {}, "compile_error", {}),
        {"reference/0": FakeResult("compile_error"), "mutant/0": FakeResult("compile_error"),
         "reference/1": FakeResult("passed", {"generated::good": "ok"}),
         "mutant/1": FakeResult("failed", {"generated::good": "failed"})},
    ])  # fmt: skip
    result = score_valid_test(GCD, completion, run)
    assert (result.n_own_tests, result.valid_test, result.test_fails_on_mutant) == (2, True, True)
    assert set(run.calls[1]) == {"reference/0", "mutant/0", "reference/1", "mutant/1"}
    assert "fn good()" in run.calls[1]["reference/1"] and "fn broken()" not in run.calls[1]["reference/1"]


@pytest.mark.parametrize(
    ("completion", "counts", "reason"),
    [
        ("#[test]\n" * 30, (0, 0, False), "no_test"),
        (BODY + "#[test]\n" * 30, (0, 0, False), "no_test"),
        (BODY + DOC_COPY, (0, 0, False), "no_test"),
        (BODY + RENAMED_COPY, (1, 0, False), "copy_of_prompt_test"),
        (BODY + "#[test]\nfn t() {\n    // gcd(4, 2)\n    assert_eq!(2 + 2, 4);\n}\n",
         (1, 1, False), "does_not_call_function"),
    ],
    ids=["test_lines_only", "body_then_test_lines", "doc_comment_copy", "renamed_copy", "no_call"],
)  # fmt: skip
def test_scores_zero_without_running(completion: str, counts: tuple[int, int, bool], reason: str) -> None:
    run = FakeRunner([])
    result = score_valid_test(GCD, completion, run)
    assert (result.n_tests_found, result.n_own_tests, result.calls_function) == counts
    assert result.reason == reason
    assert not (result.test_compiles or result.test_passes or result.test_fails_on_mutant or result.valid_test)
    assert run.calls == []


def test_validity_rejects_an_unknown_reason() -> None:
    assert "ok" in REASONS and "no_test" in REASONS
    with pytest.raises(SteerkitError, match="'maybe'"):
        RustValidity(1, 1, True, True, True, False, True, "maybe")  # type: ignore[arg-type]


def test_sandbox_runner_says_when_there_is_no_rust_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    import steerkit.execution

    monkeypatch.delattr(steerkit.execution, "run_rust_many", raising=False)
    with pytest.raises(SteerkitError, match="run_rust_many"):
        sandbox_runner()


# ---- end to end in the Rust sandbox, on problems no one here wrote into the corpus


@needs_rust_sandbox
@pytest.mark.parametrize("name", sorted(SOLVED))
def test_sandbox_own_test_scores_one_and_copies_or_markers_score_zero(name: str) -> None:
    problem, body, assertion = SOLVED[name]
    run = sandbox_runner()
    real = score_valid_test(problem, body + _in_mod_tests(("my_own_case", assertion)), run)
    assert real.to_dict() == ALL_OK
    (doc_test,) = prompt_tests(problem.prompt)
    copy = score_valid_test(problem, body + doc_test.source.replace("fn test_", "fn copied_test_") + "\n", run)
    assert (copy.valid_test, copy.reason) == (False, "copy_of_prompt_test")
    markers = score_valid_test(problem, body + "#[test]\n" * 25, run)
    assert (markers.valid_test, markers.n_tests_found, markers.reason) == (False, 0, "no_test")


@needs_rust_sandbox
def test_sandbox_a_test_that_asserts_nothing_is_valid_but_misses_the_mutant() -> None:
    problem, body, _ = SOLVED["sum_squares"]
    weak = score_valid_test(
        problem, body + _in_mod_tests(("calls_it", "sum_squares(&[1, 2]);\n        assert!(true);"))
    )
    assert (weak.valid_test, weak.test_fails_on_mutant, weak.reason) == (True, False, "ok")


@needs_rust_sandbox
def test_sandbox_wrong_expectation_and_broken_test() -> None:
    problem, body, assertion = SOLVED["fizzbuzz"]
    wrong = score_valid_test(problem, body + _in_mod_tests(("wrong", 'assert_eq!(fizzbuzz(9), "Buzz");')))
    assert (wrong.test_compiles, wrong.valid_test, wrong.reason) == (True, False, "fails_on_reference")
    broken = score_valid_test(problem, body + _in_mod_tests(("broken", "assert_eq!(fizzbuzz(), 1);")))
    assert (broken.test_compiles, broken.valid_test, broken.reason) == (False, False, "compile_error")
    both = score_valid_test(
        problem, body + _in_mod_tests(("broken", "assert_eq!(fizzbuzz(), 1);"), ("good", assertion))
    )
    assert (both.n_own_tests, both.valid_test, both.test_fails_on_mutant) == (2, True, True)


# ---- the n50 corpus: references and mutants


def _n50_items() -> list[dict[str, Any]]:
    return json.loads(CORPUS_N50.read_text(encoding="utf-8"))["prompts"]


def test_n50_items_have_a_reference_and_a_mutant_with_the_prompt_signature() -> None:
    items = _n50_items()
    assert [p.id for p in load_prompt_corpus(CORPUS_N50).prompts] == [item["id"] for item in items]
    for item in items:
        signature = item["prompt"].splitlines()[-1]
        for key in ("reference", "mutant"):
            code = item[key]
            assert code.startswith(signature + "\n") and code.endswith("\n}\n"), (item["id"], key)
            assert "unsafe" not in code and "std::io" not in code and "println!" not in code, (item["id"], key)
        assert item["reference"] != item["mutant"], item["id"]
        (doc_test,) = prompt_tests(item["prompt"])
        name = function_name(item["reference"])
        assert calls_function(doc_test.source, name), item["id"]
        assert is_copy_of_prompt_test(doc_test.source, item["prompt"]), item["id"]


@needs_rust_sandbox
def test_n50_references_pass_and_mutants_fail_the_prompt_test() -> None:
    items = _n50_items()
    jobs = []
    for item in items:
        tests = prompt_tests(item["prompt"])
        jobs.append(RustJob(id=f"{item['id']}/reference", source=build_test_program(item["reference"], tests)))
        jobs.append(RustJob(id=f"{item['id']}/mutant", source=build_test_program(item["mutant"], tests)))
    results = {r.id: r for r in run_rust_many(jobs, workers=2)}
    failing_references = [k for k, r in results.items() if k.endswith("/reference") and r.status != "passed"]
    surviving_mutants = [k for k, r in results.items() if k.endswith("/mutant") and r.status != "failed"]
    assert len(results) == 100
    assert failing_references == [] and surviving_mutants == []
