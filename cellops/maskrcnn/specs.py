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
from cellops.registered_init import check_init, check_same
from models.maskrcnn import MaskRCNNSettings

INITS = ("scratch", "source", "imagenet", "coco")


@dataclass(frozen=True)
class AnnotationSource(FromMapping):
    """Where the instance annotations are (see :func:`cellops.maskrcnn.annotations.load_annotations`).

    Attributes
    ----------
    format : str
        ``coco``, ``via``, ``labelme`` or ``label_images``.
    images_dir : str
        The folder the annotations' file names are relative to.
    path : str, optional
        The COCO or VIA JSON file, or the folder of LabelMe files (unused for label images).
    category : str, optional
        Category name of label images and of VIA regions without a label attribute.
    label_suffix : str, optional
        Label images are ``<image stem><label_suffix>`` next to their image.
    label_attribute : str or None, optional
        VIA: the region attribute holding the category (needed when regions have several).
    categories : list of str or None, optional
        VIA and LabelMe: the allowed category names, in id order (others are refused); by default, in
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
        """The annotations as COCO (see :func:`cellops.maskrcnn.annotations.load_annotations`).

        Returns
        -------
        dict
            A COCO dataset (``images``, ``annotations``, ``categories``), file names relative to ``images_dir``.
        """
        from cellops.maskrcnn.annotations import load_annotations

        return load_annotations(self.format, self.path, self.images_dir, label_suffix=self.label_suffix,
                                category=self.category, categories=self.categories,
                                label_attribute=self.label_attribute)


@dataclass(frozen=True)
class SourceSettings(FromMapping):
    """The source dataset models with ``init: source`` are pretrained on, and its overrides of the shared model,
    training and augmentation settings; ``expectations`` are its annotation suite's thresholds.

    Attributes
    ----------
    annotations : dict
        :class:`AnnotationSource` fields of the source dataset.
    split : dict
        Its image split settings.
    expectations : dict
        Thresholds of its annotation suite.
    model : dict, optional
        Overrides of the shared model settings.
    training : dict, optional
        Overrides of the shared training settings.
    augmentation : dict, optional
        Overrides of the shared augmentation settings.
    """

    annotations: dict
    split: dict
    expectations: dict
    model: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    augmentation: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MaskRCNNModelSpec(FromMapping):
    """One model of the comparison: how it starts (``init``: scratch, source = pretrained on the source dataset
    in this run, imagenet or coco = a local weights file, or a registered version ``models:/NAME@ALIAS`` /
    ``models:/NAME/VERSION`` of the same architecture and categories) and its overrides of the shared settings.

    Attributes
    ----------
    init : str, optional
        One of :data:`INITS`, or a registered version.
    weights_file : str or None, optional
        The local weights file of ``imagenet`` and ``coco``.
    model : dict, optional
        Overrides of the shared model settings.
    training : dict, optional
        Overrides of the shared training settings.
    """

    init: str = "scratch"
    weights_file: str | None = None
    model: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_init(self.init, INITS)

    def settings(self, shared_model: dict) -> MaskRCNNSettings:
        """The model settings of this entry: the shared ones with its overrides merged in.

        Parameters
        ----------
        shared_model : dict
            The config's shared model settings.

        Returns
        -------
        MaskRCNNSettings
            The merged settings (unknown keys are named).
        """
        return from_mapping(MaskRCNNSettings, deep_merge(shared_model, self.model))


def parse_models(models: dict, shared_model: dict) -> dict[str, MaskRCNNModelSpec]:
    """Every configured model, checked before anything runs (unknown keys, backbones and inits are named).

    Parameters
    ----------
    models : dict
        Model name to its :class:`MaskRCNNModelSpec` fields.
    shared_model : dict
        The shared model settings each entry overrides.

    Returns
    -------
    dict of str to MaskRCNNModelSpec
        The specs, by model name.

    Raises
    ------
    ValueError
        When ``models`` is empty or an entry is invalid (the message starts with ``models.<name>``).
    """
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


def check_parent_model(parent: str, architecture: str | None, categories: Mapping | None,
                       settings: MaskRCNNSettings, configured_categories: Mapping[int, str]) -> None:
    """Raise a ``ValueError`` naming both when a registered Mask R-CNN has another backbone or other categories
    than the model the config builds (the other shapes are checked tensor by tensor when its weights load,
    :func:`cellops.registered_init.load_parent_state`).

    Parameters
    ----------
    parent : str
        The registered version, ``NAME:VERSION``.
    architecture : str or None
        Its ``architecture`` tag (``maskrcnn_<backbone>_fpn``); None when it records none.
    categories : Mapping or None
        Its serving record's categories (id to name); None when it records none.
    settings : MaskRCNNSettings
        The config's model settings.
    configured_categories : Mapping of int to str
        The training annotations' categories.

    Examples
    --------
    >>> settings = MaskRCNNSettings(backbone="resnet18", anchor_sizes=(8, 16, 32, 64, 128))
    >>> check_parent_model("cellops-maskrcnn:2", "maskrcnn_resnet18_fpn", {"1": "colony"}, settings, {1: "colony"})
    >>> check_parent_model("cellops-maskrcnn:2", "maskrcnn_resnet50_fpn", {"1": "colony"}, settings, {1: "colony"})
    Traceback (most recent call last):
    ValueError: cellops-maskrcnn:2 is a Mask R-CNN with backbone resnet50; this config builds one with backbone resnet18: ...
    """
    backbone = architecture.removeprefix("maskrcnn_").removesuffix("_fpn") if architecture else None
    registered = {"backbone": backbone,
                  "categories": {str(k): str(v) for k, v in categories.items()} if categories is not None else None}
    configured = {"backbone": settings.backbone,
                  "categories": {str(k): str(v) for k, v in configured_categories.items()}}
    check_same(parent, registered, configured, "Mask R-CNN")


def instance_test_fingerprint(coco: dict, index: dict) -> str:
    """A hash of the test split by content: each test image's bytes (md5) with its annotations (categories and
    segmentations). Two runs scored on the same fingerprint are comparable; otherwise the champion is re-scored.

    Parameters
    ----------
    coco : dict
        The COCO dataset.
    index : dict
        ``image_ids``, ``md5`` and ``splits``, one entry per image.

    Returns
    -------
    str
        16 hexadecimal digits.

    Examples
    --------
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
    epochs : int, optional
        Passes over the training images.
    batch_size : int, optional
        Images per step.
    learning_rate : float, optional
        Peak SGD learning rate, reached after the warm-up, then decayed by a cosine to 1 %.
    momentum : float, optional
        SGD's momentum.
    weight_decay : float, optional
        SGD's weight decay.
    warmup_iterations : int, optional
        Linear warm-up from 1/1000 of the peak (torchvision's references use up to 1000).
    clip_grad_norm : float, optional
        Largest gradient norm (0: no clipping); keeps the first steps from scratch stable.
    amp : bool, optional
        Mixed precision when training on a GPU (ignored on a CPU).
    device : str, optional
        ``cpu``, ``cuda``, or ``auto`` (cuda when available).
    threads : int, optional
        CPU threads (0: torch's default).
    seed : int, optional
        Seeds the weights, the augmentation and the batch order.
    validate_every : int, optional
        Epochs between validations (the best validated epoch's weights are kept).
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
        """The torch device to train on, ``auto`` resolved.

        Returns
        -------
        torch.device
            ``cuda`` when configured (or ``auto``) and available, else ``cpu``.

        Raises
        ------
        RuntimeError
            When a CUDA device is configured and no GPU is available.

        Examples
        --------
        >>> MaskRCNNTraining(device="cpu").resolved_device()
        device(type='cpu')
        """
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
    score_threshold : float, optional
        Instances scoring below it are dropped.
    mask_threshold : float, optional
        A pixel belongs to an instance where its mask probability is at least this.
    tile_size : int, optional
        Images with a side above this are predicted in tiles of this side (the training image size).
    tile_overlap : int, optional
        Overlap of neighbouring tiles; objects up to about half of it across are never cut.
    normalization : Normalization, optional
        How intensities are scaled, over the whole picture before it is tiled
        (:class:`cellops.intensity.Normalization`; versions registered before it was a setting used dtype scaling).
    max_detections : int, optional
        The most instances an image may have (the model's ``detections_per_img``; COCO scoring's maximum).
    categories : Mapping of int to str, optional
        Category id to name, as in the training annotations.
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
        """The record as stored: JSON types (category ids as strings), with ``family``.

        Returns
        -------
        dict
            The mapping :meth:`from_dict` reads back.

        Examples
        --------
        >>> record = MaskRCNNServing(categories={1: "colony"}).as_dict()
        >>> record["categories"], MaskRCNNServing.from_dict(record).categories
        ({'1': 'colony'}, {1: 'colony'})
        """
        return {**super().as_dict(), "categories": {str(k): v for k, v in self.categories.items()}}

    def category_name(self, category: int) -> str:
        """The name of category id ``category`` (its number when the record names no such category).

        Parameters
        ----------
        category : int
            A category id.

        Returns
        -------
        str
            Its name.

        Examples
        --------
        >>> serving = MaskRCNNServing(categories={1: "colony"})
        >>> serving.category_name(1), serving.category_name(2)
        ('colony', '2')
        """
        return self.categories.get(int(category), str(category))
