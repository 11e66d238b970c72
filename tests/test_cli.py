"""steerkit.cli: a script hands a library function its keyword-only parameters from the parsed namespace."""

from __future__ import annotations

import argparse

import pytest

from steerkit import cli
from steerkit.refusal.config import config_from_params


def _fn(loaded: object, *, seed: str, limit: str = "0") -> tuple[object, str, str]:
    return loaded, seed, limit


def test_kwargs_for_passes_only_the_keyword_only_parameters() -> None:
    args = argparse.Namespace(loaded="from the namespace", seed="3", limit="7", experiment="x")
    assert cli.kwargs_for(_fn, args) == {"seed": "3", "limit": "7"}
    assert _fn("model", **cli.kwargs_for(_fn, args)) == ("model", "3", "7")


def test_kwargs_for_a_parameter_the_parser_lacks_fails_in_the_call() -> None:
    with pytest.raises(TypeError, match="seed"):
        _fn("model", **cli.kwargs_for(_fn, argparse.Namespace(limit="7")))


def test_kwargs_for_reads_the_parameters_of_a_library_function() -> None:
    ns = argparse.Namespace(config="c.yaml", limit="", seed="1", batch_size="2", max_new_tokens="3", judge="regex")
    expected = {"config": "c.yaml", "limit": "", "seed": "1", "batch_size": "2", "max_new_tokens": "3"}
    assert cli.kwargs_for(config_from_params, ns) == expected
