"""The step that exports the registered U-Net to the faster CPU runtimes and keeps the fastest that holds its IoU."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from zenml import step
from zenml.logger import get_logger

from steps.runtimes import measure_and_record

logger = get_logger(__name__)


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
    from cellops.unet.runtime import runtime_checks

    settings = UNetServing.from_dict(inference)
    name = registration["registered_model"]
    return measure_and_record(name, registration.get("version"), lambda folder: runtime_checks(
        model, calibration_image, test_image, test_mask, settings, folder, runtimes=tuple(runtimes),
        tolerance=iou_tolerance, repeats=repeats))
