"""Steps that export the model a training run registered to the faster CPU runtimes (:mod:`cellops.runtimes`),
check each on the run's test data against torch fp32, and keep the graphs and the verdict beside the torch model in
the registry (same version: ``runtimes/`` artifacts of its run, ``runtime`` and ``runtime_checks`` tags). The
deployment puts the chosen runtime in the bento; ``/metadata`` says which runs.

Thin adapters: the measuring is in ``cellops.{unet,classifier,maskrcnn}.runtime``, the recording in
:func:`tracking.registry.record_runtimes`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Annotated

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.runtimes import RuntimeCheck, choose_runtime, cpu_info, runtime_files
from tracking import tags
from tracking.registry import record_runtimes

logger = get_logger(__name__)


def _measure_and_record(registered_model_name: str, version: str | None,
                        measure: Callable[[str], list[RuntimeCheck]]) -> dict:
    """Run ``measure(folder)`` for a registered ``version`` and record its checks, the graphs and the choice."""
    if version is None:
        logger.info("no version was registered (a duplicate of the champion): no runtime to measure")
        return {"version": None, "runtime": None, "checks": []}
    with tempfile.TemporaryDirectory() as folder:
        checks = measure(folder)
        runtime = choose_runtime(checks)
        rows = [check.as_dict() for check in checks]
        record_runtimes(MlflowClient(), registered_model_name, version, runtime, rows,
                        [str(path) for path in runtime_files(folder)])
    machine = cpu_info()
    mlflow.log_metrics({f"runtime_speedup_{c.runtime.replace('-', '_')}": c.speedup for c in checks if c.speedup})
    mlflow.set_tags({"serving_runtime": runtime, "runtime_cpu": machine["cpu_model"],
                     "runtime_isa": " ".join(machine["isa_flags"])})
    summary = {"version": version, "runtime": runtime, "checks": rows,
               "cpu": {k: machine[k] for k in ("cpu_model", "isa_flags", "torch_threads", "torch_cpu_capability")}}
    log_metadata(metadata={"runtime": summary})
    logger.info("%s v%s will be served with %s: %s", registered_model_name, version, runtime,
                "; ".join(f"{c.runtime} {c.speedup}x {'ok' if c.passed else c.note}" for c in checks))
    return summary


def _run_best(registration: dict) -> tuple[str, str | None]:
    """The registered model and the version of the run's best model (registrations are best first; None where it
    was not registered)."""
    best = (registration.get("versions") or [{}])[0]
    return best.get("registered_model", ""), best.get("version")


@step(enable_cache=False)  # records in the registry: a cache hit would skip it
def optimise_unet_runtime(
    model: torch.nn.Module,
    registration: dict,
    calibration_image: np.ndarray,
    test_image: np.ndarray,
    test_mask: np.ndarray,
    inference: dict,
    runtimes: list[str],
    iou_tolerance: float,
    repeats: int,
) -> Annotated[dict, "runtime"]:
    """Export the registered U-Net, calibrate int8 on training slices, and keep the fastest runtime whose test
    foreground IoU is within ``iou_tolerance`` of torch fp32's."""
    from cellops.unet.specs import UNetServing
    from cellops.unet.runtime import unet_runtime_checks

    settings = UNetServing.from_dict(inference)
    name = registration["registered_model"]
    return _measure_and_record(name, registration.get("version"), lambda folder: unet_runtime_checks(
        model, calibration_image, test_image, test_mask, settings, folder, runtimes=tuple(runtimes),
        tolerance=iou_tolerance, repeats=repeats))


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
    from cellops.classifier.runtime import classifier_runtime_checks

    name, version = _run_best(registration)
    if version is None:
        return _measure_and_record(name, None, lambda folder: [])
    record = MlflowClient().get_model_version(name, version)
    settings = ClassifierServing.from_dict(tags.inference_from_tags(record.tags))
    model = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu").eval()
    splits = np.asarray(dataset_index["splits"])
    return _measure_and_record(name, version, lambda folder: classifier_runtime_checks(
        model, images[splits == "train"][:calibration_images], images[splits == "test"], labels[splits == "test"],
        settings.positive, folder, runtimes=tuple(runtimes), tolerance=accuracy_tolerance,
        batch_size=settings.batch_size, repeats=repeats, threshold=settings.decision_threshold))


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
    from cellops.maskrcnn.train import runtime_checks

    name, version = _run_best(registration)
    if version is None:
        return _measure_and_record(name, None, lambda folder: [])
    record = MlflowClient().get_model_version(name, version)
    inference = tags.inference_from_tags(record.tags) or {}
    settings = MaskRCNNServing.from_dict(inference)
    model = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu").eval()
    test = load_instance_samples(annotations, dataset_index, "test", settings.normalization)
    test_ids = [i for i, s in zip(dataset_index["image_ids"], dataset_index["splits"]) if s == "test"]
    train = load_instance_samples(annotations, dataset_index, "train", settings.normalization)
    calibration = [image for image, _ in train[:calibration_images]]
    return _measure_and_record(name, version, lambda folder: runtime_checks(
        model, calibration, test, subset_coco(annotations, test_ids), settings, folder,
        runtimes=tuple(runtimes),
        tolerance=ap50_tolerance, repeats=repeats))
