"""Command-line plumbing for entry points: shared argparse groups and parameter parsing.

MLflow passes every parameter as a string. Parsing happens inside the MLflow run, so a bad value fails the run
(status FAILED) with a one-line error that names the parameter and the value. The argument groups every script
shares (`add_model_args`, `add_run_args`) are defined here once, with the defaults MLproject uses. `main` is the
`steerkit` console script (`steerkit run NAME -P k=v`, `steerkit ui`), a thin launcher of the `mlflow` CLI with
the project's tracking store.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from steerkit.errors import SteerkitError


def as_int(name: str, value: str | int, minimum: int | None = None) -> int:
    """An integer; "128.0" (MLflow float formatting) is accepted, "12.5" is not."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise SteerkitError(f"{name} must be an integer, got {value!r}") from exc
    if not math.isfinite(number) or number != int(number):
        raise SteerkitError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise SteerkitError(f"{name} must be >= {minimum}, got {value!r}")
    return int(number)


def as_float(name: str, value: str | float, minimum: float | None = None) -> float:
    """A finite float (NaN and inf are rejected)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise SteerkitError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise SteerkitError(f"{name} must be finite, got {value!r}")
    if minimum is not None and number < minimum:
        raise SteerkitError(f"{name} must be >= {minimum}, got {value!r}")
    return number


def as_bool(name: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise SteerkitError(f"{name} must be true or false, got {value!r}")
    return value.lower() in ("true", "1", "yes")


def as_float_list(name: str, value: str, minimum: float | None = None) -> list[float]:
    """Comma-separated finite floats, e.g. "1,2,2.5" (each >= `minimum` when given)."""
    parts = [p for p in value.split(",") if p.strip()]
    if not parts:
        raise SteerkitError(f"{name} must list at least one number, got {value!r}")
    return [as_float(name, p.strip(), minimum=minimum) for p in parts]


AUTO_LAYER_FRACTION = 0.6  # 'auto' = a mid-to-late block, the seed's choice for a 30-layer model (layer 18)


def as_layer(name: str, value: str | int, loaded: Any, others: str = "'auto'") -> int:
    """A block index from a parameter: an integer in range, or 'auto' = round(0.6 * n_layers).

    `others` names the words the caller accepts besides integers, for the error message.
    """
    if value == "auto":
        return round(AUTO_LAYER_FRACTION * loaded.n_layers)
    try:
        layer = int(value)
    except ValueError as exc:
        raise SteerkitError(f"{name} must be an integer or {others}, got {value!r}") from exc
    loaded.check_layer(layer)
    return layer


def as_layer_list(name: str, value: str, loaded: Any, every: str = "all") -> tuple[int, ...]:
    """Layers from a parameter: `every` (e.g. "all" or "sweep") = every block, else a comma-separated list.

    Each layer is checked against the model (`loaded.check_layer`); a layer listed twice is an error.
    """
    if value == every:
        return tuple(range(loaded.n_layers))
    layers = tuple(as_int(name, part.strip()) for part in value.split(","))
    for layer in layers:
        loaded.check_layer(layer)
    if len(set(layers)) != len(layers):
        raise SteerkitError(f"{name} lists a layer twice: {value!r}")
    return layers


DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded model (steerkit.core.sources.DEFAULT_MODEL)


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An entry point's parser, described by the first line of its module docstring."""
    return argparse.ArgumentParser(prog=prog, description=(doc or prog).splitlines()[0])


def add_model_args(p: argparse.ArgumentParser, model: str = DEFAULT_MODEL, threads: str = "auto") -> None:
    """`--model`, `--dtype`, `--device`, `--threads`: what `load_model` takes."""
    p.add_argument("--model", default=model)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    add_threads_arg(p, threads)


def add_threads_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """`--threads`: torch's intra-op threads, `auto` or a positive integer (`steerkit.core.threads`)."""
    p.add_argument(
        "--threads", default=default, help="torch threads: auto (torch's default capped at the usable CPUs) or N"
    )


def add_run_args(p: argparse.ArgumentParser, output: bool = True) -> None:
    """`--experiment` (the MLflow experiment) and, with `output`, `--output` (also write the result JSON here)."""
    if output:
        p.add_argument("--output", default="", help="also write the result JSON to this path")
    # MLflow's own knob, which `mlflow run` reads too: one default experiment however a script is started
    p.add_argument("--experiment", default=os.environ.get("MLFLOW_EXPERIMENT_NAME") or "steerkit")


def add_design_args(p: argparse.ArgumentParser) -> None:
    """`--allow-underpowered`: run a design that cannot reject anyway (the run is tagged `steerkit.underpowered`)."""
    p.add_argument("--allow-underpowered", default="false", help="run even if the design cannot reject (tags the run)")


def as_resume(value: str) -> str | None:
    """A run id to resume, or None for 'none' / empty."""
    return None if value.strip().lower() in ("", "none") else value.strip()


def as_choice(name: str, value: str, options: tuple[str, ...]) -> str:
    """`value` if it is one of `options`, else a one-line error naming the parameter and the choices."""
    if value not in options:
        raise SteerkitError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def as_layer_set(name: str, value: str, loaded: Any) -> list[int]:
    """'all' or comma-separated layer indices (sorted, duplicates merged), each checked against the model."""
    if value == "all":
        return list(range(loaded.n_layers))
    try:
        layers = sorted({int(x) for x in value.split(",") if x.strip()})
    except ValueError as exc:
        raise SteerkitError(f"{name} must be 'all' or comma-separated integers, got {value!r}") from exc
    if not layers:
        raise SteerkitError(f"{name} must name at least one layer, got {value!r}")
    for layer in layers:
        loaded.check_layer(layer)
    return layers


def kwargs_for(fn: Callable[..., Any], args: argparse.Namespace) -> dict[str, Any]:
    """The parsed parameters that `fn` takes as keyword-only arguments, so library functions take plain keywords
    and never a namespace; a parameter `fn` needs that the parser lacks fails in the call (TypeError)."""
    wanted = {n for n, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {k: v for k, v in vars(args).items() if k in wanted}


def add_args(p: argparse.ArgumentParser, specs: list[tuple[str, object, str]]) -> None:
    """Add (flag, default, help) parameters a library declares (e.g. `entropy.design.design_args()`)."""
    for flag, default, text in specs:
        p.add_argument(flag, default=default, help=text or None)


# --- the `steerkit` console script ------------------------------------------------------------------------------


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest directory holding `MLproject`, from `start` (default: the current directory) upwards."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "MLproject").is_file():
            return folder
    raise SteerkitError(f"no MLproject in {here} or its parents: run steerkit from a steerkit checkout")


def project_env(root: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a launched command: the project's store (`sqlite:///<root>/mlflow.db`, as the Makefile
    sets it) and experiment (`steerkit`), unless `MLFLOW_TRACKING_URI` / `MLFLOW_EXPERIMENT_NAME` say otherwise."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    env.setdefault("MLFLOW_EXPERIMENT_NAME", "steerkit")
    return env


def console_command(argv: list[str], root: Path, env: Mapping[str, str]) -> list[str]:
    """The `mlflow` command line for `steerkit run NAME -P k=v ...` or `steerkit ui [...]` (extra options pass on)."""
    p = argparse.ArgumentParser(prog="steerkit", description="Run steerkit entry points and open the MLflow UI.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="mlflow run . -e NAME --env-manager local -P k=v ...")
    run.add_argument("entry_point")
    run.add_argument("-P", "--param", action="append", default=[], help="an entry point parameter, key=value")
    ui = sub.add_parser("ui", help="mlflow ui on the project's tracking store", add_help=False)  # --help: mlflow's
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", default="5000")
    args, extra = p.parse_known_args(argv)
    mlflow = [sys.executable, "-m", "mlflow"]
    if args.command == "ui":
        store = ["--backend-store-uri", env["MLFLOW_TRACKING_URI"]]
        return [*mlflow, "ui", *store, "--host", args.host, "--port", str(args.port), *extra]
    params: list[str] = []
    for item in args.param:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise SteerkitError(f"-P must be key=value, got {item!r}")
        params += ["-P", item]
    return [*mlflow, "run", str(root), "-e", args.entry_point, "--env-manager", "local", *params, *extra]


def main(argv: list[str] | None = None) -> int:
    """The `steerkit` console script: `steerkit run NAME -P k=v`, `steerkit ui`; bad input exits 2."""
    try:
        root = project_root()
        env = project_env(root)
        command = console_command(list(sys.argv[1:] if argv is None else argv), root, env)
    except SteerkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return subprocess.call(command, cwd=root, env=env)
