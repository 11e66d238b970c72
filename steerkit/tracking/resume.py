"""Rules for resuming a killed run and for reusing a finished one (no mlflow here: `tracking` applies them).

Design note: both decisions compare a run's logged params with the params a command would log now. A param value
is compared as a string, in either of the two forms it can be logged in: as steerkit logs it (`str`, JSON for
lists) or shell-quoted, as `mlflow run` logs an entry point's parameters. Resume (`check_resumable`) continues the
*same* run, so everything that decides its outputs must be what it was: the entry point, every param except the
ones a caller names as free (the `resume` param itself, an output path), and the git commit. Uncommitted edits do
not block a resume (the fix for what crashed the run is often one), but they are tagged on the run. A FINISHED run
is never resumed. Reuse (`matches_step`, the `main` driver's test, as in MLflow's multistep example) needs a
FINISHED run of the same entry point, with the same value for every parameter of the step, from the same code:
the same `steerkit.code_version` (commit + hash of the uncommitted diff), never an unknown one.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steerkit.errors import SteerkitError
from steerkit.tracking.tags import TAG_CODE_VERSION, TAG_COMMIT, TAG_ENTRY_POINT


@dataclass(frozen=True)
class RunFacts:
    """What the checks need to know about a logged run."""

    run_id: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def same_param(logged: str | None, value: str) -> bool:
    """Whether a logged param equals `value`, as steerkit logs it or shell-quoted by `mlflow run`."""
    return logged is not None and logged in (value, shlex.quote(value))


def first_difference(logged: Mapping[str, str], wanted: Mapping[str, str], ignore: tuple[str, ...] = ()) -> str | None:
    """The first param (sorted by name) whose logged value differs from the wanted one, or None."""
    for key in sorted(wanted):
        if key not in ignore and not same_param(logged.get(key), wanted[key]):
            return key
    return None


def check_resumable(
    facts: RunFacts, entry_point: str, params: Mapping[str, str], commit: str, ignore: tuple[str, ...] = ()
) -> None:
    """Refuse (one-line SteerkitError naming the run and the value) a resume that could not continue the run.

    Args:
        facts: the run to resume.
        entry_point: the entry point resuming it.
        params: the params it would log now (strings, as logged).
        commit: the current git commit.
        ignore: params allowed to differ.
    """
    rid = facts.run_id
    if facts.status == "FINISHED":
        raise SteerkitError(f"run {rid} is FINISHED: nothing to resume (start a new run)")
    found = facts.tags.get(TAG_ENTRY_POINT)
    if found != entry_point:
        raise SteerkitError(f"run {rid} is a {found!r} run, not {entry_point!r}: cannot resume it here")
    key = first_difference(facts.params, params, ignore)
    if key is not None:
        raise SteerkitError(
            f"run {rid} was logged with {key}={facts.params.get(key)!r}, not {params[key]!r}: "
            "resume with the same params"
        )
    logged_commit = facts.tags.get(TAG_COMMIT)
    if logged_commit != commit:
        raise SteerkitError(f"run {rid} ran at git commit {logged_commit!r}, this code is {commit!r}")


def matches_step(facts: RunFacts, entry_point: str, params: Mapping[str, str], code_version: str) -> bool:
    """Whether a logged run can stand in for a step: FINISHED, same entry point, params and code version."""
    if code_version.startswith("unknown") or facts.status != "FINISHED":
        return False
    if facts.tags.get(TAG_ENTRY_POINT) != entry_point or facts.tags.get(TAG_CODE_VERSION) != code_version:
        return False
    return first_difference(facts.params, params) is None


def project_params(mlproject: str | Path, entry_point: str, overrides: Mapping[str, Any]) -> dict[str, str]:
    """Every parameter of an MLproject entry point: its defaults, with `overrides` applied (all as strings).

    Raises:
        SteerkitError: If the entry point is unknown, an override is not one of its parameters, or a
            parameter without a default is not given.
    """
    project = yaml.safe_load(Path(mlproject).read_text())
    spec = project.get("entry_points", {}).get(entry_point)
    if spec is None:
        raise SteerkitError(f"no entry point {entry_point!r} in {mlproject}")
    declared = spec.get("parameters", {})
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise SteerkitError(f"entry point {entry_point!r} has no parameter {unknown[0]!r}")
    out = {}
    for name, decl in declared.items():
        value = overrides.get(name, decl.get("default") if isinstance(decl, dict) else None)
        if value is None:
            raise SteerkitError(f"entry point {entry_point!r} needs a value for {name!r}")
        out[name] = str(value)
    return out
