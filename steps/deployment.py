"""Steps that take the champion from the MLflow registry into the BentoML store and build a bento."""

from __future__ import annotations

from typing import Annotated

import bentoml
import mlflow
from mlflow import MlflowClient
from zenml import log_metadata, step
from zenml.logger import get_logger

from steps.tracking import stack_tracking_uri

logger = get_logger(__name__)


@step(enable_cache=False)
def import_champion(
    registered_model_name: str,
    bento_model_name: str,
    alias: str = "champion",
    service_settings: dict | None = None,
) -> Annotated[str, "bento_model_tag"]:
    """Import ``models:/<name>@<alias>`` into the BentoML model store with its lineage as metadata."""
    mlflow.set_tracking_uri(stack_tracking_uri())
    version = MlflowClient().get_model_version_by_alias(registered_model_name, alias)
    metadata = {
        "registered_model": registered_model_name,
        "model_version": version.version,
        "alias": alias,
        "mlflow_run_id": version.run_id,
        "zenml_run_id": version.tags.get("zenml_run_id", "unknown"),
        "data_version": version.tags.get("lineage.data_version", "unknown"),
        "git_commit": version.tags.get("lineage.git_commit", "unknown"),
        "metrics": {k.removeprefix("metric."): float(v) for k, v in version.tags.items() if k.startswith("metric.")},
        "service_settings": service_settings or {},
    }
    bento_model = bentoml.mlflow.import_model(
        bento_model_name,
        f"models:/{registered_model_name}@{alias}",
        labels={"registered_model": registered_model_name, "model_version": str(version.version)},
        metadata=metadata,
    )
    log_metadata(metadata={"bento_model": str(bento_model.tag), "model_version": version.version})
    logger.info("imported %s v%s as %s", registered_model_name, version.version, bento_model.tag)
    return str(bento_model.tag)


@step(enable_cache=False)
def build_bento(bento_model_tag: str, bentofile: str, build_ctx: str = ".") -> Annotated[str, "bento_tag"]:
    """Build the service's bento; fails if the bento does not embed the model just imported."""
    bento = bentoml.bentos.build_bentofile(bentofile, build_ctx=build_ctx)
    embedded = [str(model.tag) for model in bento.info.all_models]
    if bento_model_tag not in embedded:
        raise RuntimeError(f"bento {bento.tag} embeds {embedded}, not the champion {bento_model_tag}")
    log_metadata(metadata={"bento": str(bento.tag), "models": embedded})
    logger.info("built bento %s with %s; serve it with `bentoml serve %s`", bento.tag, embedded, bento.tag)
    return str(bento.tag)
