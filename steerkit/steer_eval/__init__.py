"""`steer_eval`: a paired, significance-tested steering evaluation of your own model, prompts, intervention and
scorer (`steering` what is done, `scorers` how completions are scored, `evaluation` the paired design, `grid` the
search objective over coefficients, `api` `evaluate` / `prepare`). It composes the experiment systems (SAE
loaders, refusal judges and directions, attention edge rules), so it sits one layer above them; like them it never
imports mlflow or optuna.
"""

from steerkit.steer_eval.api import evaluate, prepare, resolve_layers, resolve_prompts
from steerkit.steer_eval.evaluation import CoefResult, EvalResult, EvalSession, adjust_grid
from steerkit.steer_eval.grid import DIRECTIONS, GridObjective, parse_objectives
from steerkit.steer_eval.scorers import BUILTINS, Scorer, resolve_scorer
from steerkit.steer_eval.steering import SPEC_KINDS, Steering, build_steering, load_vector

__all__ = [
    "BUILTINS",
    "SPEC_KINDS",
    "CoefResult",
    "DIRECTIONS",
    "EvalResult",
    "EvalSession",
    "GridObjective",
    "Scorer",
    "Steering",
    "adjust_grid",
    "build_steering",
    "evaluate",
    "load_vector",
    "parse_objectives",
    "prepare",
    "resolve_layers",
    "resolve_prompts",
    "resolve_scorer",
]
