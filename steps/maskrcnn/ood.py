"""The step that keeps every registered Mask R-CNN's out-of-distribution reference with it (cellops.maskrcnn.ood,
cellops.ood): random crops of the training images describe what a model knows, crops of the validation images
calibrate the threshold."""

from __future__ import annotations

from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import step
from zenml.logger import get_logger

from steps.registry import log_ood_references, record_reference, registered_versions
from tracking import tags

logger = get_logger(__name__)


@step(enable_cache=False)  # records in the registry: a cache hit would skip it
def record_maskrcnn_ood(
    registration: dict,
    dataset_index: dict,
    false_alarm_rate: float,
    reference_crops: int,
    calibration_crops: int,
    crop_sizes: list[int],
    seed: int,
) -> Annotated[dict, "ood_references"]:
    """For every Mask R-CNN the run registered: segment ``reference_crops`` random square crops of the training
    images and ``calibration_crops`` of the validation images as served (sides ``crop_sizes`` in turn, whole
    pictures when smaller), fit the reference on the first and set the threshold on the second to flag
    ``false_alarm_rate`` of in-distribution images; keep it with the version (artifact ``ood/reference.json`` and
    ``cellops.ood.*`` tags)."""
    from cellops.io import read_image_file
    from cellops.maskrcnn.ood import FEATURE_NAMES, reference_rows
    from cellops.maskrcnn.specs import MaskRCNNServing
    from cellops.ood import fit_reference

    versions = registered_versions(registration)
    if not versions:
        logger.info("no Mask R-CNN was registered: no OOD reference to fit")
        return {"versions": []}
    pictures = {split: [read_image_file(f) for f, s in zip(dataset_index["files"], dataset_index["splits"])
                        if s == split] for split in ("train", "val")}
    empty = [split for split, found in pictures.items() if not found]
    if empty:
        raise ValueError(f"no {' or '.join(empty)} images to fit the OOD reference on: give the split a "
                         "val_fraction that leaves at least one image in each")
    sizes = tuple(int(s) for s in crop_sizes)
    client = MlflowClient()
    summaries = []
    for decision in versions:
        name, version = decision["registered_model"], decision["version"]
        settings = MaskRCNNServing.from_dict(tags.inference_from_tags(client.get_model_version(name, version).tags))
        model = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu").eval()
        reference = fit_reference(
            "maskrcnn",
            reference_rows(model, pictures["train"], settings, count=reference_crops, sizes=sizes, seed=seed),
            reference_rows(model, pictures["val"], settings, count=calibration_crops, sizes=sizes, seed=seed + 1),
            FEATURE_NAMES, false_alarm_rate=false_alarm_rate, seed=seed,
            notes={"reference": f"{reference_crops} crops of {len(pictures['train'])} training images",
                   "calibration": f"{calibration_crops} crops of {len(pictures['val'])} validation images",
                   "crop_sizes": list(sizes)})
        summaries.append(record_reference(name, version, reference, label=decision.get("model_name", "")))
    return log_ood_references(summaries)
