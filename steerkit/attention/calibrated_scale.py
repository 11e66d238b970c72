"""`scale=from:RUN_ID`: the attention scale a `calibrate_dose` run chose, carried into generation with its checks.

Design note: a calibrated scale means something only for the edges, model, layer and prompt format it was
calibrated on, and only on prompts it was not chosen on. `resolve_scale` reads the run through a callback (the
script passes `steerkit.tracking`'s readers; this package never imports MLflow) and refuses, in one line naming
the value, a run that is missing, unfinished, not a `calibrate_dose` run, calibrated a different edge rule,
model, layer, corpus or chat setting, or calibrated on the split being reported on. The chosen scale also depends
on the generation settings: calibrate_dose averages the edge share over the edited queries of a greedy baseline
continuation of `max_new_tokens` tokens (logged as `continuation_tokens`), and every rule whose sources reach
generated tokens (`edge_rules.reads_continuation`: all the usable ones) has most of its queries there, where the
share drifts with distance from the doc test. A run that generates a different continuation (another length, or
sampled instead of greedy) would be dosed by a figure measured elsewhere, so it is refused, naming the setting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from steerkit.attention.edge_rules import reads_continuation
from steerkit.cli import as_float
from steerkit.corpora.splits import disjoint
from steerkit.errors import SteerkitError

FROM_RUN = "from:"
CALIBRATION_ENTRY_POINT = "calibrate_dose"
CHOSEN_ARTIFACT = "chosen_scale.json"

# (params, chosen record) of a FINISHED calibrate_dose run; raises SteerkitError when there is none
RunReader = Callable[[str], tuple[Mapping[str, str], Mapping[str, Any]]]


def resolve_scale(
    value: str,
    expect: Mapping[str, Any],
    split: str,
    read_run: RunReader,
    generation: Mapping[str, Any] | None = None,
) -> tuple[float, str]:
    """(scale, source): a number as given (source `given`), or `from:RUN_ID`'s chosen scale (source the run id).

    Args:
        value: the `scale` parameter.
        expect: calibrate_dose params the run must have (e.g. `edge_rule`, `model`, `resolved_layer`), compared
            as lower-case strings.
        split: the split this run reports on; the calibration run's `split` must be disjoint from it.
        read_run: run id -> (params, the run's `chosen_scale.json`).
        generation: this run's `max_new_tokens` and `temperature`; checked against the calibration's continuation
            when `expect` names an `edge_rule` that reads it (None: not checked).
    """
    text = str(value).strip()
    if not text.startswith(FROM_RUN):
        return as_float("scale", text, minimum=0.0), "given"
    run_id = text.removeprefix(FROM_RUN).strip()
    if not run_id:
        raise SteerkitError(f"scale={value!r} names no run (expected from:RUN_ID of a calibrate_dose run)")
    try:
        params, chosen = read_run(run_id)
    except SteerkitError as exc:
        raise SteerkitError(f"scale={value!r}: {exc}") from exc
    for key, want in expect.items():
        if str(params.get(key, "")).lower() != str(want).lower():
            raise SteerkitError(
                f"scale={value!r}: calibrate_dose run {run_id} has {key}={params.get(key)!r}, this run needs {want!r}"
            )
    if generation is not None and reads_continuation(str(expect.get("edge_rule", ""))):
        _check_generation(value, run_id, params, generation)
    chosen_on = str(params.get("resolved_split", "all"))
    if not disjoint(chosen_on, split):
        raise SteerkitError(
            f"scale={value!r}: calibrated on split {chosen_on!r}, this run reports on split "
            f"{split!r} (report on prompts the scale was not chosen on: split=eval)"
        )
    return float(chosen["scale"]), run_id


def _check_generation(value: str, run_id: str, params: Mapping[str, str], generation: Mapping[str, Any]) -> None:
    """Refuse a carry-over whose continuation differs from the one the share was measured over (length, sampling)."""
    tokens, want = params.get("continuation_tokens"), generation["max_new_tokens"]
    if str(tokens) != str(want):
        raise SteerkitError(
            f"scale={value!r}: calibrate_dose run {run_id} measured the share over continuation_tokens={tokens!r}, "
            f"this run generates max_new_tokens={want} (calibrate with -P max_new_tokens={want}, or pass it here)"
        )
    if float(generation["temperature"]) != 0.0:
        raise SteerkitError(
            f"scale={value!r}: calibrate_dose run {run_id} measured the share over greedy continuations, this run "
            f"samples at temperature={generation['temperature']} (the share is read over different tokens)"
        )


__all__ = ["CALIBRATION_ENTRY_POINT", "CHOSEN_ARTIFACT", "FROM_RUN", "resolve_scale"]
