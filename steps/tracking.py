"""MLflow helpers shared by the steps: the stack's tracking URI, the active run, artifact logging."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
from zenml.client import Client

from cellops.plots import save_png


def stack_tracking_uri() -> str:
    """The MLflow tracking URI of the active stack's experiment tracker, so every step uses one store."""
    tracker = Client().active_stack.experiment_tracker
    if tracker is None or not hasattr(tracker, "get_tracking_uri"):
        raise RuntimeError(
            "the active ZenML stack has no MLflow experiment tracker: run `make setup` to register the "
            "'cellops' stack and activate it"
        )
    return tracker.get_tracking_uri()


def lineage_tags(lineage: dict) -> dict[str, str]:
    """MLflow tags (``lineage.<key>``) for a run or a model version, from the ``record_lineage`` output."""
    return {f"lineage.{key}": str(value) for key, value in lineage.items()}


def active_run_id() -> str:
    """The MLflow run ZenML opened for this step (steps need ``experiment_tracker`` set in the config)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(
            "no active MLflow run: set `experiment_tracker: mlflow_tracker` for this step in the pipeline config"
        )
    return run.info.run_id


def log_png(array: np.ndarray, artifact_path: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(save_png(array, Path(tmp) / name)), artifact_path=artifact_path)


def _flatten(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = str(value)[:6000]  # MLflow's limit on a parameter value


def log_run_config() -> dict[str, str]:
    """Log every step parameter of the running pipeline as MLflow params (``<step>.<name>``)."""
    from zenml import get_step_context

    snapshot = get_step_context().pipeline_run.snapshot
    params: dict[str, str] = {}
    for name, step_config in (snapshot.step_configurations if snapshot else {}).items():
        _flatten(name, dict(step_config.config.parameters), params)
    # MLflow takes at most 100 params per call.
    items = list(params.items())
    for first in range(0, len(items), 100):
        mlflow.log_params(dict(items[first : first + 100]))
    return params
