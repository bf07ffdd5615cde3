"""The step that keeps the registered U-Net's out-of-distribution reference with it (cellops.unet.ood, cellops.ood):
random crops of the training block describe what it knows, crops of the validation block calibrate the threshold."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from zenml import step
from zenml.logger import get_logger

from steps.registry import log_ood_references, record_reference, registered_versions

logger = get_logger(__name__)


@step(enable_cache=False)  # records in the registry: a cache hit would skip it
def record_unet_ood(
    model: torch.nn.Module,
    registration: dict,
    fit_image: np.ndarray,
    val_image: np.ndarray,
    inference: dict,
    false_alarm_rate: float,
    reference_crops: int,
    calibration_crops: int,
    crop_sizes: list[int],
    seed: int,
) -> Annotated[dict, "ood_reference"]:
    """Segment ``reference_crops`` random 2-D crops of the training block and ``calibration_crops`` of the
    validation block as served (sides ``crop_sizes`` in turn), fit the reference on the first and set the
    threshold on the second to flag ``false_alarm_rate`` of in-distribution images; keep it with the registered
    version (artifact ``ood/reference.json`` and ``cellops.ood.*`` tags)."""
    from cellops.ood import fit_reference
    from cellops.unet.ood import FEATURE_NAMES, reference_rows
    from cellops.unet.predict import load_for_inference
    from cellops.unet.specs import UNetServing

    versions = registered_versions(registration)
    if not versions:
        logger.info("no version was registered (a duplicate of the champion): no OOD reference to fit")
        return {"versions": []}
    settings = UNetServing.from_dict(inference)
    network = load_for_inference(model)
    sizes = tuple(int(s) for s in crop_sizes)
    reference = fit_reference(
        "unet", reference_rows(network, fit_image, settings, count=reference_crops, sizes=sizes, seed=seed),
        reference_rows(network, val_image, settings, count=calibration_crops, sizes=sizes, seed=seed + 1),
        FEATURE_NAMES, false_alarm_rate=false_alarm_rate, seed=seed,
        notes={"reference": f"{reference_crops} crops of the training block {list(fit_image.shape)}",
               "calibration": f"{calibration_crops} crops of the validation block {list(val_image.shape)}",
               "crop_sizes": list(sizes)})
    return log_ood_references([record_reference(v["registered_model"], v["version"], reference) for v in versions])
