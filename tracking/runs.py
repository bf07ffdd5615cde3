"""MLflow run helpers for the steps: the stack's store (and that it belongs to this checkout), the active run,
logging a pipeline's whole config and PNG artifacts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlparse

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


#: Folder of a checkout's own MLflow store (SQLite database + artifacts), as `make setup` creates it.
PROJECT_STORE = "mlruns"


def project_tracking_uri(root: str | Path, store: str = PROJECT_STORE) -> str:
    """The tracking URI of the MLflow store that belongs to the checkout at ``root``.

    >>> project_tracking_uri("/lab/cellops")
    'sqlite:////lab/cellops/mlruns/mlflow.db'
    """
    return f"sqlite:///{Path(root).resolve() / store / 'mlflow.db'}"


def local_store_path(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` or ``file:`` tracking URI; None for a server (``http(s)://``, databases)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        return Path(tracking_uri.removeprefix("sqlite:///"))
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def check_store_belongs_to(tracking_uri: str, project_root: str | Path) -> None:
    """Raise when ``tracking_uri`` is a local store outside ``project_root`` (a server is always fine).

    A copied or moved checkout would otherwise log into the original's MLflow store: the URI written by
    ``make setup`` is absolute.
    """
    root = Path(project_root).resolve()
    store = local_store_path(tracking_uri)
    if store is not None and not store.resolve().is_relative_to(root):
        raise RuntimeError(
            f"this checkout ({root}) would log into the MLflow store of another one ({store}): run `make setup` "
            "here to point the stack at this checkout's own store"
        )


def require_own_store() -> str:
    """The active stack's tracking URI, after :func:`check_store_belongs_to` the ZenML repository's root."""
    uri = stack_tracking_uri()
    check_store_belongs_to(uri, Client().root or Path.cwd())
    return uri


def current_zenml_model():
    """The ZenML Model of the running step's pipeline (its config's ``model:`` block), or None without one."""
    from zenml import get_step_context

    context = get_step_context()
    return context.model if context.model_version is not None else None


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
    items = list(params.items())
    for first in range(0, len(items), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(items[first : first + 100]))
    return params
