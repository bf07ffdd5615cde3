"""Steps that train and evaluate the U-Net mitochondria segmenter, logging to MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
import torch
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cellops.inference import prepare_for_inference, sliding_window_predict
from cellops.io import to_unit_range
from cellops.metrics import binary_segmentation_scores
from cellops.plots import segmentation_overlay, training_curves
from cellops.training import TrainingConfig, fit
from models.unet import UNet
from steps.tracking import lineage_tags, log_png, log_run_config

logger = get_logger(__name__)


@step
def train_unet(
    patch_images: np.ndarray,
    patch_masks: np.ndarray,
    val_image: np.ndarray,
    val_mask: np.ndarray,
    lineage: dict,
    architecture: dict | None = None,
    training: dict | None = None,
    checkpoint_dir: str = "outputs/checkpoints/unet",
) -> Annotated[torch.nn.Module, "model"]:
    """Train a U-Net on the augmented patches, validating on whole slices; returns the best weights."""
    config = TrainingConfig(**(training or {}))
    model = UNet(**(architecture or {}))
    log_run_config()
    mlflow.set_tags(lineage_tags(lineage))
    mlflow.set_tag("zenml.run_id", str(get_step_context().pipeline_run.id))
    run_dir = Path(checkpoint_dir) / str(get_step_context().pipeline_run.id)
    logger.info("training %s parameters on %d patches, checkpoints in %s",
                sum(p.numel() for p in model.parameters()), len(patch_images), run_dir)
    history = fit(
        model,
        (torch.from_numpy(patch_images), torch.from_numpy(patch_masks)),
        (val_image, val_mask),
        config,
        run_dir,
        on_epoch_end=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch),
    )
    with tempfile.TemporaryDirectory() as tmp:
        curves = training_curves(
            {"train loss": history.train_loss, "val foreground IoU": history.val_foreground_iou}, Path(tmp) / "curves.png"
        )
        mlflow.log_artifact(str(curves), artifact_path="training")
    mlflow.log_metric("best_epoch", history.best_epoch)
    log_metadata(metadata={"best_epoch": history.best_epoch, "train_loss": history.train_loss,
                           "val_foreground_iou": history.val_foreground_iou})
    return model


@step
def evaluate_unet(
    model: torch.nn.Module,
    test_image: np.ndarray,
    test_mask: np.ndarray,
    tile_size: int = 128,
    tile_overlap: float = 0.25,
    batch_size: int = 8,
    threshold: float = 0.5,
    overlay_slices: int = 3,
    device: str = "cpu",
) -> Annotated[dict, "test_metrics"]:
    """Sliding-window segmentation of the whole test volume; IoU and Dice over all its voxels."""
    probabilities = sliding_window_predict(
        prepare_for_inference(model), to_unit_range(test_image), tile_size=tile_size, overlap=tile_overlap, batch_size=batch_size, device=device
    )
    prediction = probabilities > threshold
    scores = binary_segmentation_scores(prediction, test_mask > 0).as_dict()
    mlflow.log_metrics({f"test_{name}": value for name, value in scores.items()})
    for z in np.linspace(0, len(test_image) - 1, overlay_slices).round().astype(int):
        overlay = segmentation_overlay(test_image[z], test_mask[z] > 0, prediction[z])
        log_png(overlay, "test_overlays", f"slice_{z:03d}.png")
    log_metadata(metadata={"test_metrics": scores})
    logger.info("test volume: %s", ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    return scores
