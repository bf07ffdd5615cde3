"""The step that exports the registered classifier to the faster CPU runtimes and keeps the fastest that holds its
accuracy."""

from __future__ import annotations

from typing import Annotated

import mlflow
import numpy as np
from mlflow import MlflowClient
from zenml import step
from zenml.logger import get_logger

from steps.runtimes import measure_and_record, run_best
from tracking import tags

logger = get_logger(__name__)


@step(enable_cache=False)
def optimise_classifier_runtime(
    registration: dict,
    images: np.ndarray,
    labels: np.ndarray,
    dataset_index: dict,
    runtimes: list[str],
    accuracy_tolerance: float,
    calibration_images: int,
    repeats: int,
) -> Annotated[dict, "runtime"]:
    """Export the run's best registered classifier (its trunk), calibrate int8 on training images, and keep the
    fastest runtime whose test accuracy is within ``accuracy_tolerance`` (a fraction) of torch fp32's."""
    from cellops.classifier.specs import ClassifierServing
    from cellops.classifier.runtime import runtime_checks

    name, version = run_best(registration)
    if version is None:
        return measure_and_record(name, None, lambda folder: [])
    record = MlflowClient().get_model_version(name, version)
    settings = ClassifierServing.from_dict(tags.inference_from_tags(record.tags))
    model = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu").eval()
    splits = np.asarray(dataset_index["splits"])
    return measure_and_record(name, version, lambda folder: runtime_checks(
        model, images[splits == "train"][:calibration_images], images[splits == "test"], labels[splits == "test"],
        settings.positive, folder, runtimes=tuple(runtimes), tolerance=accuracy_tolerance,
        batch_size=settings.batch_size, repeats=repeats, threshold=settings.decision_threshold))
