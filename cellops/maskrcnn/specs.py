"""Typed settings of a Mask R-CNN run, parsed from the YAML config: where the annotations are, and each model to
train (its initialisation and its overrides of the shared model and training settings)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from cellops.config import FromMapping, ServingRecord, deep_merge, from_mapping
from cellops.intensity import LEGACY, Normalization
from models.maskrcnn import MaskRCNNSettings

INITS = ("scratch", "source", "imagenet", "coco")


@dataclass(frozen=True)
class AnnotationSource(FromMapping):
    """Where the instance annotations are (see :func:`cellops.maskrcnn.annotations.load_annotations`).

    Attributes
    ----------
    format : coco, via, labelme or label_images.
    images_dir : the folder the annotations' file names are relative to.
    path : the COCO or VIA JSON file, or the folder of LabelMe files (unused for label images).
    category : category name of label images and of VIA regions without a label attribute.
    label_suffix : label images are ``<image stem><label_suffix>`` next to their image.
    label_attribute : VIA: the region attribute holding the category (needed when regions have several).
    categories : VIA and LabelMe: the allowed category names, in id order (others are refused); by default, in
        order of first appearance.
    """

    format: str
    images_dir: str
    path: str = ""
    category: str = "object"
    label_suffix: str = "_labels.tif"
    label_attribute: str | None = None
    categories: list[str] | None = None

    def load(self) -> dict:
        """The annotations as COCO (see :func:`cellops.maskrcnn.annotations.load_annotations`)."""
        from cellops.maskrcnn.annotations import load_annotations

        return load_annotations(self.format, self.path, self.images_dir, label_suffix=self.label_suffix,
                                category=self.category, categories=self.categories,
                                label_attribute=self.label_attribute)


@dataclass(frozen=True)
class SourceSettings(FromMapping):
    """The source dataset models with ``init: source`` are pretrained on, and its overrides of the shared model,
    training and augmentation settings; ``expectations`` are its annotation suite's thresholds."""

    annotations: dict
    split: dict
    expectations: dict
    model: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    augmentation: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MaskRCNNModelSpec(FromMapping):
    """One model of the comparison: how it starts (``init``: scratch, source = pretrained on the source dataset
    in this run, imagenet or coco = a local weights file) and its overrides of the shared settings."""

    init: str = "scratch"
    weights_file: str | None = None
    model: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r}: choose one of {list(INITS)}")

    def settings(self, shared_model: dict) -> MaskRCNNSettings:
        return from_mapping(MaskRCNNSettings, deep_merge(shared_model, self.model))


def parse_models(models: dict, shared_model: dict) -> dict[str, MaskRCNNModelSpec]:
    """Every configured model, checked before anything runs (unknown keys, backbones and inits are named)."""
    if not models:
        raise ValueError("no models configured: add at least one entry under parameters.models")
    specs = {}
    for name, values in models.items():
        try:
            specs[name] = MaskRCNNModelSpec.from_dict(values)
            specs[name].settings(shared_model)
        except (ValueError, TypeError) as error:
            raise ValueError(f"models.{name}: {error}") from None
    return specs


def instance_test_fingerprint(coco: dict, index: dict) -> str:
    """A hash of the test split by content: each test image's bytes (md5) with its annotations (categories and
    segmentations). Two runs scored on the same fingerprint are comparable; otherwise the champion is re-scored.

    >>> coco = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "colony"}]}
    >>> len(instance_test_fingerprint(coco, {"image_ids": [1], "md5": ["abc"], "splits": ["test"]}))
    16
    """
    test = {i: md5 for i, md5, s in zip(index["image_ids"], index["md5"], index["splits"]) if s == "test"}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    content = sorted(
        (test[a["image_id"]], names.get(a["category_id"], str(a["category_id"])), json.dumps(a["segmentation"],
                                                                                            sort_keys=True))
        for a in coco["annotations"] if a["image_id"] in test)
    payload = json.dumps({"images": sorted(test.values()), "annotations": content})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MaskRCNNTraining(FromMapping):
    """Optimisation settings (from the YAML config).

    Attributes
    ----------
    epochs : passes over the training images.
    batch_size : images per step.
    learning_rate : peak SGD learning rate, reached after the warm-up, then decayed by a cosine to 1 %.
    momentum, weight_decay : SGD's.
    warmup_iterations : linear warm-up from 1/1000 of the peak (torchvision's references use up to 1000).
    clip_grad_norm : largest gradient norm (0: no clipping); keeps the first steps from scratch stable.
    amp : mixed precision when training on a GPU (ignored on a CPU).
    device : cpu, cuda, or auto (cuda when available).
    threads : CPU threads (0: torch's default).
    seed : seeds the weights, the augmentation and the batch order.
    validate_every : epochs between validations (the best validated epoch's weights are kept).
    """

    epochs: int = 20
    batch_size: int = 2
    learning_rate: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iterations: int = 50
    clip_grad_norm: float = 10.0
    amp: bool = True
    device: str = "cpu"
    threads: int = 0
    seed: int = 0
    validate_every: int = 1

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r} configured but no GPU is available; use cpu or auto")
        return torch.device(self.device)


@dataclass(frozen=True)
class MaskRCNNServing(ServingRecord):
    """How a trained model is applied (stored with the registered model; the CLI and the service use them).

    Attributes
    ----------
    score_threshold : instances scoring below it are dropped.
    mask_threshold : a pixel belongs to an instance where its mask probability is at least this.
    tile_size : images with a side above this are predicted in tiles of this side (the training image size).
    tile_overlap : overlap of neighbouring tiles; objects up to about half of it across are never cut.
    normalization : how intensities are scaled, over the whole picture before it is tiled
        (:class:`cellops.intensity.Normalization`; versions registered before it was a setting used dtype scaling).
    max_detections : the most instances an image may have (the model's ``detections_per_img``; COCO scoring's
        maximum).
    categories : category id to name, as in the training annotations.
    """

    family: ClassVar[str] = "maskrcnn"

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    tile_size: int = 512
    tile_overlap: int = 128
    normalization: Normalization = LEGACY
    max_detections: int = 100
    categories: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalization", Normalization.coerce(self.normalization))
        object.__setattr__(self, "categories", {int(k): str(v) for k, v in dict(self.categories).items()})
        if not 0 <= self.tile_overlap < self.tile_size:
            raise ValueError(f"tile_overlap {self.tile_overlap} must be in [0, tile_size {self.tile_size})")

    def as_dict(self) -> dict:
        return {**super().as_dict(), "categories": {str(k): v for k, v in self.categories.items()}}

    def category_name(self, category: int) -> str:
        """The name of category id ``category`` (its number when the record names no such category)."""
        return self.categories.get(int(category), str(category))
