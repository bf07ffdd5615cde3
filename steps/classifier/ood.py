"""The step that keeps every registered classifier's out-of-distribution reference with it (cellops.classifier.ood,
cellops.ood): the training split describes what a model knows, the validation split calibrates the threshold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
from mlflow import MlflowClient
from zenml import step
from zenml.logger import get_logger

from cellops.classifier.specs import ClassifierServing
from steps.registry import log_ood_references, record_reference, registered_versions
from tracking import tags

logger = get_logger(__name__)


def sampled_pictures(pictures: Sequence[np.ndarray], count: int, min_crop: float, seed: int) -> list[np.ndarray]:
    """``count`` pictures of a split: each whole picture once (a random ``count`` of them when there are more),
    then random square crops of them in turn, of a side between ``min_crop`` and all of the shorter side, until
    ``count`` are drawn (a small validation split still calibrates a threshold).

    Examples
    --------
    >>> pictures = [np.zeros((64, 64)), np.zeros((64, 80))]
    >>> [p.shape for p in sampled_pictures(pictures, 4, 0.5, 0)][:2]
    [(64, 64), (64, 80)]
    >>> all(32 <= p.shape[0] == p.shape[1] <= 64 for p in sampled_pictures(pictures, 4, 0.5, 0)[2:])
    True
    >>> len(sampled_pictures(pictures * 3, 2, 0.5, 0))
    2
    """
    if not pictures:
        raise ValueError("no pictures in this split to describe")
    if not 0.0 < min_crop <= 1.0:
        raise ValueError(f"min_crop must be in (0, 1], got {min_crop}")
    rng = np.random.default_rng(seed)
    if count <= len(pictures):
        return [pictures[i] for i in np.sort(rng.permutation(len(pictures))[:count])]
    chosen = list(pictures)
    for i in range(count - len(pictures)):
        picture = pictures[i % len(pictures)]
        height, width = picture.shape[:2]
        side = max(1, int(round(min(height, width) * rng.uniform(min_crop, 1.0))))
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        chosen.append(picture[y:y + side, x:x + side])
    return chosen


def model_inputs(pictures: Sequence[np.ndarray], settings: ClassifierServing) -> np.ndarray:
    """The pictures as a classifier's inputs (N, C, H, W) (:func:`cellops.classifier.data.to_model_input`); a crop
    that cannot be one (uniform, so no percentiles to scale by) is left out."""
    from cellops.classifier.data import to_model_input
    from cellops.io import ImageInputError

    inputs = []
    for picture in pictures:
        try:
            inputs.append(to_model_input(picture, channels=settings.channels, size=settings.size,
                                         normalization=settings.normalization))
        except ImageInputError as error:
            logger.info("a picture left out of the OOD reference: %s", error)
    return np.stack(inputs) if inputs else np.zeros((0, settings.channels, settings.size, settings.size), np.float32)


@step(enable_cache=False)  # records in the registry: a cache hit would skip it
def record_classifier_ood(
    registration: dict,
    dataset_index: dict,
    false_alarm_rate: float,
    reference_images: int,
    calibration_images: int,
    min_crop: float,
    seed: int,
) -> Annotated[dict, "ood_references"]:
    """For every classifier the run registered: classify ``reference_images`` pictures of the training split and
    ``calibration_images`` of the validation split as served (each picture whole, then random crops of at least
    ``min_crop`` of its side when the split has fewer), fit the reference on the first and set the threshold on
    the second to flag ``false_alarm_rate`` of in-distribution images; keep it with the version (artifact
    ``ood/reference.json`` and ``cellops.ood.*`` tags)."""
    from cellops.classifier.ood import FEATURE_NAMES, reference_rows
    from cellops.io import read_image_file
    from cellops.ood import fit_reference

    versions = registered_versions(registration)
    if not versions:
        logger.info("no classifier was registered: no OOD reference to fit")
        return {"versions": []}
    splits = np.asarray(dataset_index["splits"])
    files = [Path(f) for f in dataset_index["files"]]
    pictures = {split: sampled_pictures([read_image_file(f) for f, s in zip(files, splits) if s == split], count,
                                        min_crop, seed + offset)
                for offset, (split, count) in enumerate((("train", reference_images), ("val", calibration_images)))}
    client = MlflowClient()
    summaries = []
    for decision in versions:
        name, version = decision["registered_model"], decision["version"]
        settings = ClassifierServing.from_dict(tags.inference_from_tags(client.get_model_version(name, version).tags))
        model = mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu").eval()
        train, val = (reference_rows(model, model_inputs(pictures[split], settings), settings)
                      for split in ("train", "val"))
        reference = fit_reference(
            "classifier", train, val, FEATURE_NAMES, false_alarm_rate=false_alarm_rate, seed=seed,
            notes={"reference": f"{len(train)} pictures of the training split",
                   "calibration": f"{len(val)} pictures of the validation split", "min_crop": min_crop})
        summaries.append(record_reference(name, version, reference, label=decision.get("model_name", "")))
    return log_ood_references(summaries)
