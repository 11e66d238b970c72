"""Hyperparameter search: the only package that imports optuna.

`studies` (a study: config, sampler, the one study-name rule, run and plots), `callback` (one nested MLflow child run
per trial), `workers` (scale-out: N processes share one grid study in a database).
"""

from steerkit.search.callback import (
    RUN_ID_ATTR,
    MlflowTrials,
)
from steerkit.search.studies import (
    DEFAULT_STORAGE,
    Direction,
    PrunerName,
    SamplerName,
    StudyConfig,
    default_storage,
    log_study_plots,
    pareto_front,
    prunable,
    redact_storage,
    run_study,
    storage_url,
    study_name,
)
from steerkit.search.workers import (
    GRID_ATTR,
    PARENT_ATTR,
    READY_ATTR,
    RetryStaleTrial,
    claim_waiting_trial,
    finish_if_complete,
    heartbeat,
    open_grid_study,
    run_grid_worker,
    shared_storage,
)

__all__ = [
    "DEFAULT_STORAGE",
    "Direction",
    "PrunerName",
    "GRID_ATTR",
    "MlflowTrials",
    "PARENT_ATTR",
    "READY_ATTR",
    "RUN_ID_ATTR",
    "RetryStaleTrial",
    "SamplerName",
    "StudyConfig",
    "claim_waiting_trial",
    "default_storage",
    "finish_if_complete",
    "heartbeat",
    "log_study_plots",
    "open_grid_study",
    "pareto_front",
    "prunable",
    "redact_storage",
    "run_grid_worker",
    "run_study",
    "shared_storage",
    "storage_url",
    "study_name",
]
