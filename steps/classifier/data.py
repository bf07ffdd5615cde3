"""Steps that index the class folders, split them and load the images (thin adapters over cellops.classifier.data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.classifier.data import SPLITS, SplitSettings, add_corrections, index_class_folder, load_class_images
from cellops.corrections import corrections_in_lineage
from cellops.classifier.specs import ClassifierServing
from cellops.intensity import Normalization
from cellops.lineage import data_dir_for

logger = get_logger(__name__)


#: Scores in the comparison table, in this order.
SCORE_COLUMNS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "loss")


def serving_settings(dataset_index: dict, input: dict, positive_class: str) -> ClassifierServing:
    return ClassifierServing.from_dict({**input, "classes": dataset_index["classes"], "positive_class": positive_class})


def split_subset(images: np.ndarray, labels: np.ndarray, dataset_index: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.asarray(dataset_index["splits"]) == split
    return images[chosen], labels[chosen]


@step
def index_class_folders(lineage: dict, data_dir: str, split: dict) -> Annotated[dict, "dataset_index"]:
    """Every image of ``data_dir/<class>/`` (of the lineage's ``data_rev`` when it names one), its label, content
    hash and split (stratified per class; identical pictures stay in one split). The dataset's corrected images
    (the lineage's corrections) are added to training; the test split stays as it was."""
    index = index_class_folder(data_dir_for(data_dir, lineage), SplitSettings.from_dict(split))
    corrections = corrections_in_lineage(lineage, "classifier")
    if corrections:
        index = add_corrections(index, corrections)
        logger.info("%d corrected images added", len(corrections))
    labels, splits = np.asarray(index["labels"]), np.asarray(index["splits"])
    counts = {name: {s: int(np.sum((labels == i) & (splits == s))) for s in SPLITS}
              for i, name in enumerate(index["classes"])}
    log_metadata(metadata={"classes": index["classes"], "images": len(labels), "split_counts": counts})
    logger.info("%d images in %d classes: %s", len(labels), len(index["classes"]), counts)
    return index


@step
def load_classifier_images(
    dataset_index: dict, input: dict,
) -> tuple[Annotated[np.ndarray, "images"], Annotated[np.ndarray, "labels"]]:
    """The images as model inputs (N, channels, size, size) float32, normalised as they will be served, and their
    labels."""
    images, failures = load_class_images([Path(p) for p in dataset_index["files"]], channels=int(input["channels"]),
                                         size=int(input["size"]),
                                         normalization=Normalization.from_dict(input["normalization"]))
    if failures:  # validation passed, so this means a file changed in between
        raise ValueError("unreadable images: " + "; ".join(f"{p}: {why}" for p, why in failures))
    return images, np.asarray(dataset_index["labels"], dtype=np.int64)
