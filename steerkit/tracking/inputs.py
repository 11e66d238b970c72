"""What a run reads: its experiment by default, and its prompt corpus as an MLflow dataset input.

Design note: the corpus a run reads is an *input* (`mlflow.log_input`, context `eval`), logged by `tracked_run`
from the entry point's corpus param (`INPUT_PARAMS`), so no script has to: its source is the file's path and its
digest the file's sha256 (the `corpus_sha256` the runs already log), and the UI's Datasets column shows which
runs read the same prompts. Results are outputs (tables and artifacts), never dataset inputs.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import mlflow

from steerkit.corpora.loader import RECORD_KEYS, CorpusFile, read_file, read_json, read_records
from steerkit.errors import SteerkitError

DEFAULT_EXPERIMENT = "steerkit"
EXPERIMENT_KIND = "mlflow.experimentKind"
INPUT_PARAMS = ("corpus", "problems")  # entry-point params that name a prompt file the run reads


def default_experiment() -> str:
    """`MLFLOW_EXPERIMENT_NAME` when set (MLflow's own knob, which `mlflow run` also reads), else `steerkit`."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def mark_experiment_kind(experiment_id: str) -> None:
    """Tag an experiment as model development (unless already tagged), so MLflow 3's UI opens it on its runs
    table (names, datasets, the artifact compare view) rather than on the GenAI traces overview."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    if EXPERIMENT_KIND in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, "custom_model_development")
    except MlflowException:
        # Workers starting at once all see no tag; MLflow's SQL store inserts it without a lock, and every insert
        # but the first fails its unique constraint (seen in CI against PostgreSQL). The first one's tag stands.
        if EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
            raise


def log_dataset(data: Any, name: str, context: str) -> None:
    """Log a table (a DataFrame or a list of row dicts) as an MLflow dataset input of the active run."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    mlflow.log_input(from_pandas(frame, name=name), context=context)


def log_corpus_input(path: str | Path, context: str = "eval") -> bool:
    """Log a prompt file (JSON object with a list of records, JSON list, JSONL or CSV) as a dataset input.

    Source: the file's absolute path; digest: its sha256 (first 32 hex digits, MLflow's column holds 36);
    name: the file's `name` field, else its stem. A path that is not such a file logs nothing (returns False):
    the loader that reads it reports the problem in its own words.
    """
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    try:
        source, name, records = _records(path)
    except (SteerkitError, UnicodeDecodeError, csv.Error):
        return False
    if not records:
        return False
    frame = pd.DataFrame([{k: _cell(v) for k, v in row.items()} for row in records])
    dataset = from_pandas(frame, source=str(source.file.resolve()), name=name, digest=source.sha256[:32])
    tags = {"steerkit.sha256": source.sha256}
    _log_input_retrying(dataset, context, tags)
    return True


def _log_input_retrying(dataset: Any, context: str, tags: dict[str, str], attempts: int = 5) -> None:
    """`mlflow.log_input`, retried when workers log the same dataset at the same moment.

    Hand-written because MLflow's SQL store looks a dataset up and then inserts it, without a lock: two
    concurrent runs logging one corpus (workers of one Optuna study on a shared server) can both miss it, and the
    second insert fails its unique constraint. Once the first insert has committed, a retry finds the row.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _records(path: str | Path) -> tuple[CorpusFile, str, list[dict[str, Any]]]:
    """The file, its dataset name and its rows, read by the one corpus loader (`corpora.loader`)."""
    file = Path(path)
    if file.suffix == ".csv":
        source = read_file(path, "corpus")
        return source, file.stem, list(csv.DictReader(source.raw.decode().splitlines()))
    if file.suffix == ".jsonl":
        source, found = read_records(path, "corpus")
        return source, file.stem, [row for _, row in found]
    source, data = read_json(path, "corpus")
    if isinstance(data, list):
        return source, file.stem, [row for row in data if isinstance(row, dict)]
    if isinstance(data, dict):
        rows: list[Any] = next((data[k] for k in RECORD_KEYS if isinstance(data.get(k), list)), [])
        return source, str(data.get("name") or file.stem), [row for row in rows if isinstance(row, dict)]
    return source, file.stem, []


def _cell(value: Any) -> Any:
    """Nested values as JSON text: a dataset's schema holds scalar columns."""
    return json.dumps(value) if isinstance(value, dict | list) else value
