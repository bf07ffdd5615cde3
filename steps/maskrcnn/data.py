"""Steps that read the annotations (COCO, VIA, LabelMe or label images) as COCO and split the images (thin
adapters over cellops.maskrcnn.data and cellops.maskrcnn.annotations)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.io import read_image_file
from cellops.lineage import data_dir_for
from cellops.corrections import corrections_in_lineage
from cellops.maskrcnn.data import ImageSplitSettings, SPLITS, add_corrections, model_image, split_images
from cellops.maskrcnn.specs import AnnotationSource, MaskRCNNServing

logger = get_logger(__name__)


#: Scores in the comparison table, in this order.
SCORE_COLUMNS = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "f1_50", "f1_50_ci_low", "f1_50_ci_high",
                 "precision_50", "recall_50")


def input_example(index: dict, settings: MaskRCNNServing) -> np.ndarray:
    """A (1, 3, 64, 64) corner of the dataset's first image as the network takes it: the model's input example
    (small, since MLflow stores it as JSON)."""
    return model_image(read_image_file(index["files"][0]), settings.normalization)[None, :, :64, :64].numpy()


def no_output_schema(model, output) -> None:
    """Mask R-CNN returns a list of dicts of varying length, which no MLflow tensor schema describes."""
    return None


def at_revision(annotations: dict, lineage: dict) -> dict:
    """The annotation source's folders and file as they are in the lineage's ``data_rev`` (unchanged without one)."""
    if not lineage.get("data_rev"):
        return annotations
    moved = {**annotations, "images_dir": str(data_dir_for(annotations["images_dir"], lineage))}
    if annotations.get("path"):
        path = Path(annotations["path"])
        moved["path"] = str(data_dir_for(path.parent, lineage) / path.name if path.suffix else data_dir_for(path, lineage))
    return moved


def read_annotations(annotations: dict, split: dict, lineage: dict) -> tuple[dict, dict]:
    source = AnnotationSource.from_dict(at_revision(annotations, lineage))
    coco = source.load()
    return coco, split_images(coco, source.images_dir, ImageSplitSettings.from_dict(split))


def content_key(coco: dict) -> str:
    """A hash of the annotations (a rerun after fixing labels must not resume from a checkpoint of the old ones)."""
    return hashlib.sha256(json.dumps(coco, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_ids(index: dict, split: str) -> list[int]:
    return [i for i, s in zip(index["image_ids"], index["splits"]) if s == split]


def serving_settings(coco: dict, prediction: dict, max_detections: int) -> MaskRCNNServing:
    """The served settings of a model trained on ``coco``: the config's prediction settings, its detection limit
    and the annotations' categories."""
    return MaskRCNNServing.from_dict({**prediction, "max_detections": int(max_detections),
                                      "categories": {c["id"]: c["name"] for c in coco["categories"]}})


@step
def load_instance_annotations(lineage: dict, annotations: dict, split: dict) -> tuple[Annotated[dict, "annotations"],
                                                                      Annotated[dict, "dataset_index"]]:
    """Read the annotations (COCO, VIA, LabelMe or label images) as COCO, and split the images (not the
    instances) into train, val and test; identical pictures stay in one split. The dataset's corrected images
    (the lineage's corrections) are added to training."""
    coco, index = read_annotations(annotations, split, lineage)
    corrections = corrections_in_lineage(lineage, "maskrcnn")
    if corrections:  # to the split each was imported for (training): the test images stay as they were
        coco, index = add_corrections(coco, index, corrections)
        logger.info("%d corrected images added", len(corrections))
    counts = {s: index["splits"].count(s) for s in SPLITS}
    instances = {s: sum(1 for a in coco["annotations"] if a["image_id"] in set(split_ids(index, s))) for s in SPLITS}
    log_metadata(metadata={"images": counts, "instances": instances,
                           "categories": [c["name"] for c in coco["categories"]]})
    logger.info("%d images %s, %d instances %s", len(index["files"]), counts, len(coco["annotations"]), instances)
    return coco, index
