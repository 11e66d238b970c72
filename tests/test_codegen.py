"""Prompt building and code extraction from hand-written completions (nothing is executed here)."""

from __future__ import annotations

import ast

import pytest

from steerkit.corpora.mbpp import Problem
from steerkit.errors import SteerkitError
from steerkit.sae.codegen import build_prompt, extract_code

ADD = Problem(
    task_id=7,
    text="Write a function to add two numbers.",
    code="def add(a, b):\n    return a + b",
    test_list=("assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"),
)
CODE = "def add(a, b):\n    return a + b\n"


def test_prompt_has_text_one_test_and_signature_only():
    prompt = build_prompt(ADD)
    assert ADD.text in prompt and "assert add(1, 2) == 3" in prompt and prompt.rstrip().endswith("def add(a, b):")
    assert "assert add(0, 0) == 0" not in prompt and "assert add(-1, 1) == 0" not in prompt
    assert "assert add(0, 0) == 0" in build_prompt(ADD, test_index=1)
    with pytest.raises(SteerkitError, match="test_index 3"):
        build_prompt(ADD, test_index=3)


@pytest.mark.parametrize(
    ("completion", "method", "added", "expected"),
    [
        # fenced block, trailing prose
        (f"```python\n{CODE}```\n\nThis function adds a and b.", "fenced", False, CODE),
        # unclosed fence (what a stop at the closing fence leaves)
        (f"```python\n{CODE}", "fenced", False, CODE),
        # a usage block first, then the definition: the block with a def wins
        (f"```\nadd(1, 2)\n```\nThe code:\n```py\n{CODE}```", "fenced", False, CODE),
        # the model continued the body: signature prepended, prose cut
        ("    return a + b\n\nThis returns the sum.", "raw", True, CODE),
        # no def at all: signature prepended and the body indented
        ("return a + b", "raw", True, CODE),
        # leading prose before raw code
        (f"Here is the function:\n{CODE}\nIt works for ints.", "raw", False, CODE),
    ],
)
def test_extract_code_cases(completion, method, added, expected):
    got = extract_code(completion, ADD)
    assert (got.code, got.method, got.signature_added, got.syntax_ok) == (expected, method, added, True)


def test_model_test_code_is_dropped_but_definitions_imports_and_docstrings_kept():
    completion = (
        '```python\n"""Adds."""\nimport math\nLIMIT = 3\n\ndef add(a, b):\n    return a + b\n\n'
        'assert add(1, 2) == 4\nprint(add(1, 2))\nif __name__ == "__main__":\n    print("hi")\n```'
    )
    got = extract_code(completion, ADD)
    assert got.statements_dropped == 3 and got.syntax_ok
    assert got.code == '"""Adds."""\nimport math\nLIMIT = 3\n\ndef add(a, b):\n    return a + b\n'
    assert [type(n).__name__ for n in ast.parse(got.code).body] == ["Expr", "Import", "Assign", "FunctionDef"]


def test_other_function_names_are_kept_as_written():
    got = extract_code("```python\ndef plus(a, b):\n    return a + b\n```", ADD)
    assert got.code == "def plus(a, b):\n    return a + b\n" and not got.signature_added


@pytest.mark.parametrize("completion", ["", "   \n", "```python\n```"])
def test_empty_completions(completion):
    got = extract_code(completion, ADD)
    assert (got.code, got.method, got.syntax_ok) == ("", "empty", False)


def test_prose_only_is_a_syntax_error_and_trailing_garbage_is_cut():
    assert not extract_code("I am not sure how to do that, sorry.", ADD).syntax_ok
    got = extract_code(f"{CODE}    if (:\n", ADD)
    assert got.code == CODE and got.lines_cut == 1 and got.syntax_ok
