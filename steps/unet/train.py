"""Steps that train the U-Net, choose its threshold on validation and evaluate it on the test volume, logging to
MLflow (thin adapters over cellops.unet)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
import torch
from PIL import Image
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.distributed import DistributedSettings
from cellops.plots import segmentation_overlay, training_curves
from cellops.registered_init import load_parent_state, registered_init
from cellops.thresholds import choose_probability_threshold
from cellops.unet.distributed_train import fit_distributed
from cellops.unet.predict import load_for_inference, predict_probabilities, score_with_interval
from cellops.unet.specs import Architecture, check_parent_architecture, check_unet_init, UNetServing, UNetTraining
from cellops.unet.train import build_model, fit
from tracking import tags
from tracking.registry import load_init_weights
from tracking.runs import (
    training_run,
    active_run_id,
    current_zenml_model,
    log_dataset,
    log_png,
)

logger = get_logger(__name__)


def initial_model(architecture: Architecture, init: str, seed: int,
                  distributed: bool) -> tuple[torch.nn.Module, str | None]:
    """The U-Net the config builds, seeded, or with the weights of the registered version ``init`` names once they
    are checked against ``architecture``; and that version's ``NAME:VERSION`` (None from scratch)."""
    check_unet_init(init)
    model = build_model(architecture, seed=seed)
    if not registered_init(init):
        return model, None
    if distributed:  # each rank builds its model from the seed again (cellops.unet.distributed_train)
        raise ValueError(f"init {init}: starting from a registered version is not supported under distributed "
                         "training yet; train in one process (distributed.nproc_per_node: 1, nnodes: 1)")
    start = load_init_weights(mlflow.get_tracking_uri(), init, "unet")
    check_parent_architecture(start.parent, start.state_dict, architecture)
    load_parent_state(model, start.parent, start.state_dict)
    logger.info("starting from %s (%s)", start.parent, init)
    return model, start.parent


@step
def train_unet(
    patch_images: np.ndarray,
    patch_masks: np.ndarray,
    val_image: np.ndarray,
    val_mask: np.ndarray,
    lineage: dict,
    architecture: dict,
    init: str,
    training: dict,
    inference: dict,
    checkpoint_dir: str,
    resume: bool,
    distributed: dict,
) -> Annotated[torch.nn.Module, "model"]:
    """Train a U-Net on the augmented patches, validating on whole slices; returns the best weights.

    ``init``: ``scratch`` (seeded random weights) or a registered version, ``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``, of the same architecture (checked before training); its ``NAME:VERSION`` is recorded
    as the run's ``lineage.parent_model``, which the registered version inherits.

    With ``distributed`` naming more than one process, training runs under DDP: ``torchrun`` is started as a
    subprocess of this step (the step keeps its ZenML context, MLflow run and artifacts; the ranks only compute).
    Rank 0 logs each epoch to this step's MLflow run."""
    config = UNetTraining.from_dict(training)
    parallel = DistributedSettings.from_dict(distributed)
    model, parent = initial_model(Architecture.from_dict(architecture), init, config.seed, parallel.enabled)
    # Checkpoints go to a folder of checkpoint_dir named after what must match to resume (not after the run): the
    # same command after a kill finds it.
    checkpoint_key = {"architecture": architecture, "training": training, "inference": inference,
                      "data_version": lineage["data_version"], "patches": list(patch_images.shape),
                      **({tags.PARENT_MODEL: parent} if parent else {})}
    logger.info("training %s parameters on %d patches, checkpoints in %s",
                sum(p.numel() for p in model.parameters()), len(patch_images), checkpoint_dir)
    run_lineage = {**lineage, tags.PARENT_MODEL: parent} if parent else lineage
    with training_run(run_lineage, {tags.INIT: init, tags.INIT_USED: parent or init}) as run:
        log_dataset("em-training-patches", patch_images, lineage, source="data/em", context="training",
                    targets=patch_masks)
        if parallel.enabled:
            mlflow.set_tags({"distributed.world_size": parallel.world_size, "distributed.backend": parallel.backend})
            with tempfile.TemporaryDirectory(prefix="ddp-", dir=Path(checkpoint_dir).parent) as work:
                history, digests = fit_distributed(
                    model, (patch_images, patch_masks), (val_image, val_mask), architecture=architecture,
                    training=training, inference=inference, checkpoint_dir=Path(checkpoint_dir), resume=resume,
                    checkpoint_key=checkpoint_key, settings=parallel, work_dir=Path(work),
                    epoch_logger="tracking.runs:epoch_logger",
                    epoch_logger_args={"tracking_uri": mlflow.get_tracking_uri(), "run_id": active_run_id()})
            mlflow.set_tag("distributed.weights_sha256", digests[0])
        else:
            history = fit(model, (torch.from_numpy(patch_images), torch.from_numpy(patch_masks)), (val_image, val_mask),
                          config, UNetServing.from_dict(inference), Path(checkpoint_dir),
                          on_epoch_end=run.log_epoch, resume=resume, checkpoint_key=checkpoint_key)
        run.record_resume(history.resumed_from_epoch)
    with tempfile.TemporaryDirectory() as tmp:
        curves = training_curves({"train loss": history.train_loss, "val foreground IoU": history.val_foreground_iou,
                                  "val Dice": history.val_dice}, Path(tmp) / "curves.png")
        mlflow.log_artifact(str(curves), artifact_path="training")
    mlflow.log_metrics({"best_epoch": history.best_epoch, "best_val_foreground_iou": history.best_val_foreground_iou})
    log_metadata(metadata={"best_epoch": history.best_epoch, "train_loss": history.train_loss,
                           "val_foreground_iou": history.val_foreground_iou, "val_dice": history.val_dice})
    return model


@step
def choose_unet_threshold(
    model: torch.nn.Module,
    val_image: np.ndarray,
    val_mask: np.ndarray,
    inference: dict,
    device: str,
) -> Annotated[dict, "served_inference"]:
    """The probability threshold with the best foreground IoU on the validation block (never the test volume),
    chosen among fixed candidates: the run's inference settings with that threshold are what is tested, registered
    and served."""
    settings = UNetServing.from_dict(inference)
    probabilities = predict_probabilities(load_for_inference(model), val_image, settings, device)
    choice = choose_probability_threshold(probabilities, val_mask > 0)
    mlflow.log_metrics({"chosen_threshold": choice.value, "val_foreground_iou_at_chosen_threshold": choice.metric_value})
    mlflow.log_dict(choice.as_dict(), "thresholds/probability_threshold.json")
    log_metadata(metadata={"chosen_threshold": choice.value, "threshold_curve": choice.as_dict()["curve"]})
    logger.info("threshold %.2f chosen on validation (foreground IoU %.4f; configured %.2f)", choice.value,
                choice.metric_value, settings.threshold)
    return {**settings.as_dict(), "threshold": float(choice.value)}


@step
def evaluate_unet(
    model: torch.nn.Module,
    test_image: np.ndarray,
    test_mask: np.ndarray,
    inference: dict,
    overlay_slices: int,
    device: str,
) -> tuple[Annotated[dict, "test_metrics"], Annotated[Image.Image, "test_overlay"]]:
    """Sliding-window segmentation of the whole test volume with the run's inference settings; IoU and Dice
    over all its voxels. The middle slice's overlay (green hit, red false positive, blue missed) is an artifact the
    dashboard shows; ``overlay_slices`` evenly spaced ones go to MLflow."""
    # The promotion metric with its bootstrap 95 % interval over test slices (their intersections and unions).
    metrics, prediction = score_with_interval(load_for_inference(model), test_image, test_mask,
                                              UNetServing.from_dict(inference), device)
    mlflow.log_metrics({f"test_{name}": value for name, value in metrics.items()})
    for z in np.linspace(0, len(test_image) - 1, overlay_slices).round().astype(int):
        log_png(segmentation_overlay(test_image[z], test_mask[z] > 0, prediction[z]), "test_overlays", f"slice_{z:03d}.png")
    log_metadata(metadata={"test_metrics": metrics})
    if current_zenml_model() is not None:  # the run's ZenML model version carries its test metrics too
        log_metadata(metadata={"test_metrics": metrics}, infer_model=True)
    logger.info("test volume: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    middle = len(test_image) // 2
    return metrics, Image.fromarray(segmentation_overlay(test_image[middle], test_mask[middle] > 0, prediction[middle]))
