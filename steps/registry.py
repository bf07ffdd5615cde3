"""Register a trained model in the MLflow registry and move the champion alias only when it is better."""

from __future__ import annotations

from typing import Annotated

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cellops.promotion import should_promote
from steps.tracking import active_run_id, lineage_tags

logger = get_logger(__name__)


def champion_score(client: MlflowClient, name: str, alias: str, metric: str) -> tuple[str | None, float | None]:
    """Version and recorded ``metric`` of the model holding ``alias``; (None, None) when there is none."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None  # no registered model or no champion yet
    value = version.tags.get(f"metric.{metric}")
    return version.version, (float(value) if value is not None else None)


def register_and_maybe_promote(
    client: MlflowClient,
    model_uri: str,
    registered_model_name: str,
    metrics: dict[str, float],
    tags: dict[str, str],
    *,
    promotion_metric: str,
    alias: str = "champion",
    min_improvement: float = 0.0,
) -> dict:
    """Register ``model_uri`` as a new version (tagged with its metrics) and move ``alias`` if it is better.

    The comparison reads the champion's own recorded metric, so it holds across runs, data versions and
    machines that share the registry.
    """
    if promotion_metric not in metrics:
        raise KeyError(f"promotion metric {promotion_metric!r} is not among the metrics {sorted(metrics)}")
    champion_version, champion_value = champion_score(client, registered_model_name, alias, promotion_metric)
    version = mlflow.register_model(model_uri, registered_model_name).version
    # Full precision: the next run compares against this very number, and a rounded tag would let an equal
    # retrain look better than the champion.
    all_tags = {**{f"metric.{k}": repr(float(v)) for k, v in metrics.items()}, **tags}
    for key, value in all_tags.items():
        client.set_model_version_tag(registered_model_name, version, key, value)
    candidate = float(metrics[promotion_metric])
    promoted = should_promote(candidate, champion_value, min_improvement=min_improvement)
    if promoted:
        client.set_registered_model_alias(registered_model_name, alias, version)
    return {
        "registered_model": registered_model_name,
        "version": version,
        "promoted": promoted,
        "promotion_metric": promotion_metric,
        "candidate_score": candidate,
        "champion_version_before": champion_version,
        "champion_score_before": champion_value,
        "champion_version": version if promoted else champion_version,
    }


@step(enable_cache=False)  # a side effect: a cache hit would silently skip the registration
def register_and_promote(
    model: torch.nn.Module,
    test_metrics: dict,
    lineage: dict,
    registered_model_name: str,
    promotion_metric: str = "foreground_iou",
    alias: str = "champion",
    min_improvement: float = 0.0,
    code_paths: list[str] | None = None,
) -> Annotated[dict, "registration"]:
    """Log the model to the step's MLflow run, register it, and promote it if it beats the champion."""
    run_id = active_run_id()
    # Pickle + bundled source (code_paths): loads anywhere the architecture's module ships, without the
    # input example and export constraints of MLflow 3's default pt2 format.
    model_info = mlflow.pytorch.log_model(
        model.cpu().eval(), name="model", serialization_format="pickle", code_paths=code_paths or ["models"]
    )
    decision = register_and_maybe_promote(
        MlflowClient(),
        model_info.model_uri,
        registered_model_name,
        test_metrics,
        {
            **lineage_tags(lineage),
            "mlflow_run_id": run_id,
            "zenml_run_id": str(get_step_context().pipeline_run.id),
        },
        promotion_metric=promotion_metric,
        alias=alias,
        min_improvement=min_improvement,
    )
    mlflow.set_tags({"registered_model_version": decision["version"], f"promoted_to_{alias}": str(decision["promoted"])})
    mlflow.log_metric("promoted", float(decision["promoted"]))
    log_metadata(metadata={"registration": decision})
    logger.info("registration: %s", decision)
    return decision
