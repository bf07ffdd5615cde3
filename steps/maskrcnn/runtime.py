"""The step that exports the registered Mask R-CNN's backbone to the faster CPU runtimes and keeps the fastest
that holds its mask AP50."""

from __future__ import annotations

from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import step
from zenml.logger import get_logger

from steps.runtimes import measure_and_record, run_best
from tracking import tags

logger = get_logger(__name__)


@step(enable_cache=False)
def optimise_maskrcnn_runtime(
    registration: dict,
    annotations: dict,
    dataset_index: dict,
    runtimes: list[str],
    ap50_tolerance: float,
    calibration_images: int,
    repeats: int,
) -> Annotated[dict, "runtime"]:
    """Export the backbone of the run's best registered Mask R-CNN, calibrate int8 on training images, and keep the
    fastest runtime whose test mask AP50 is within ``ap50_tolerance`` of torch fp32's."""
    from cellops.maskrcnn.data import load_instance_samples, subset_coco
    from cellops.maskrcnn.specs import MaskRCNNServing
    from cellops.maskrcnn.runtime import runtime_checks

    name, version = run_best(registration)
    if version is None:
        return measure_and_record(name, None, lambda folder: [])
    record = MlflowClient().get_model_version(name, version)
    inference = tags.inference_from_tags(record.tags) or {}
    settings = MaskRCNNServing.from_dict(inference)
    model = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu").eval()
    test = load_instance_samples(annotations, dataset_index, "test", settings.normalization)
    test_ids = [i for i, s in zip(dataset_index["image_ids"], dataset_index["splits"]) if s == "test"]
    train = load_instance_samples(annotations, dataset_index, "train", settings.normalization)
    calibration = [image for image, _ in train[:calibration_images]]
    return measure_and_record(name, version, lambda folder: runtime_checks(
        model, calibration, test, subset_coco(annotations, test_ids), settings, folder,
        runtimes=tuple(runtimes),
        tolerance=ap50_tolerance, repeats=repeats))
