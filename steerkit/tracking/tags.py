"""MLflow tag names steerkit writes and reads, defined once (the rules in `resume` and the queries use them)."""

TAG_ENTRY_POINT = "steerkit.entry_point"
TAG_COMMIT = "steerkit.git_commit"
TAG_DIRTY = "steerkit.git_dirty"
TAG_CODE_VERSION = "steerkit.code_version"
TAG_RESUME_COUNT = "steerkit.resume_count"
TAG_RESUMED_INTO = "steerkit.resumed_into"
TAG_METRICS_NOT_COMPUTED = "steerkit.metrics_not_computed"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"  # = mlflow.utils.mlflow_tags.MLFLOW_RUN_NAME (search may not import mlflow)
TAG_OPTUNA_STUDY = "steerkit.optuna_study"
TAG_OPTUNA_STORAGE = "steerkit.optuna_storage"
TAG_WORKER = "steerkit.worker"
TAG_REFERENCE_SOURCE = "steerkit.reference_source"


def resume_tag(count: int, what: str) -> str:
    """`steerkit.resume_<count>.<what>`: what the `count`-th resume of a run found (status, code version)."""
    return f"steerkit.resume_{count}.{what}"


def reuse_key_tag(name: str) -> str:
    """`steerkit.<name>_key`: what decides that a reused arm is the same (e.g. `steerkit.baseline_key`)."""
    return f"steerkit.{name}_key"


def reuse_source_tag(name: str) -> str:
    """`steerkit.<name>_source_run`: the run a reused arm's records come from."""
    return f"steerkit.{name}_source_run"


TAG_BASELINE_KEY = reuse_key_tag("baseline")
TAG_BASELINE_SOURCE = reuse_source_tag("baseline")
