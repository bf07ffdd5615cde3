"""The step that registers a trained U-Net in the MLflow registry and promotes it when it is better (thin
adapter over tracking.registry); ZenML's Model Control Plane follows the same decision."""

from __future__ import annotations

from typing import Annotated

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cellops.distributed import weights_digest
from cellops.unet.predict import load_for_inference, score
from cellops.unet.specs import UNetServing
from cellops.model_robustness import perturb
from steps.registry import follow_in_model_control_plane, record_sweep, record_training_run
from tracking import tags
from tracking.registry import register_and_maybe_promote
from tracking.runs import active_run_id, log_pytorch_model

logger = get_logger(__name__)


@step(enable_cache=False)  # a side effect: a cache hit would silently skip the registration
def register_unet(
    model: torch.nn.Module,
    test_metrics: dict,
    lineage: dict,
    test_image: np.ndarray,
    test_mask: np.ndarray,
    inference: dict,
    registered_model_name: str,
    promotion_metric: str,
    alias: str,
    min_improvement: float,
    code_paths: list[str],
    robustness: dict,
) -> Annotated[dict, "registration"]:
    """Log the model to the step's MLflow run, register it with its metrics, lineage and inference settings,
    and move ``alias`` to it if it beats the champion on the same test data. A registered version keeps the run
    config that trained it and its robustness sweep (``robustness``: the test volume perturbed each way it lists,
    before the served normalisation)."""
    run_id = active_run_id()
    zenml_run_id = str(get_step_context().pipeline_run.id)

    def rescore(champion) -> dict[str, float]:
        # The champion's own inference settings: it is judged as it is served.
        settings = UNetServing.from_dict(tags.inference_from_tags(champion.tags) or inference)
        old = mlflow.pytorch.load_model(f"models:/{registered_model_name}/{champion.version}", map_location="cpu")
        return score(load_for_inference(old), test_image, test_mask, settings)[0].as_dict()

    # The input example: one tile of the test volume as the network takes it (1, 1, tile, tile), normalised.
    settings = UNetServing.from_dict(inference)
    tile = settings.tile_size
    example = settings.normalization.apply(test_image)[:1, :tile, :tile][:, None]
    model_info = log_pytorch_model(model, example, code_paths)
    decision = register_and_maybe_promote(
        MlflowClient(), model_info.model_uri, registered_model_name, test_metrics,
        {**tags.lineage_to_tags(lineage), **tags.inference_to_tags(UNetServing.from_dict(inference).as_dict()),
         tags.MLFLOW_RUN_ID: run_id, tags.ZENML_RUN_ID: zenml_run_id, tags.WEIGHTS_SHA256: weights_digest(model)},
        promotion_metric=promotion_metric, alias=alias, min_improvement=min_improvement, rescore=rescore,
    )
    mlflow.set_tags({"registered_model_version": str(decision["version"]), "registered": str(decision["registered"]),
                     "registration_reason": decision["reason"], f"promoted_to_{alias}": str(decision["promoted"])})
    mlflow.log_metric("promoted", float(decision["promoted"]))
    for key in ("champion_recorded_score", "champion_rescored_score"):
        if decision[key] is not None:
            mlflow.log_metric(f"{key.removesuffix('_score')}_{promotion_metric}", decision[key])
    follow_in_model_control_plane(decision)
    if decision["version"] is not None:
        record_training_run(registered_model_name, [decision["version"]])
        served = load_for_inference(model)
        record_sweep(registered_model_name, decision["version"],
                     lambda perturbation, rng: score(served, perturb(test_image, perturbation, rng), test_mask,
                                                     settings)[0].as_dict(), test_metrics, robustness)
    log_metadata(metadata={"registration": {k: v for k, v in decision.items() if v is not None}})
    logger.info("registration: %s", decision)
    return decision
