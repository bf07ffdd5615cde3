"""Instance-segmentation data for Mask R-CNN: an image-level split that keeps identical pictures together, images
with their instances as torchvision tv_tensors, and seeded torchvision.transforms.v2 augmentation that moves
boxes and masks together with the image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from cellops.classifier.data import SPLITS, photometric_transforms, stratified_split
from cellops.config import FromMapping
from cellops.data_version import file_md5
from cellops.intensity import Normalization
from cellops.io import image_geometry, read_image_file
from cellops.coco import annotation_masks


@dataclass(frozen=True)
class ImageSplitSettings(FromMapping):
    """Fractions of the images held out for validation and test, and the seed that picks them.

    Attributes
    ----------
    val_fraction : float, optional
        Fraction of the images held out for validation.
    test_fraction : float, optional
        Fraction of the images held out for test.
    seed : int, optional
        Seed of the split.
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0


def split_images(coco: dict, images_dir: str | Path, settings: ImageSplitSettings) -> dict:
    """The dataset index: every image of ``coco`` with its path, content hash and split.

    Images are split, never instances, so no test image has instances in training; the same picture under two
    names stays in one split.

    Parameters
    ----------
    coco : dict
        The COCO dataset.
    images_dir : str or Path
        The folder its file names are relative to.
    settings : ImageSplitSettings
        Fractions and seed of the split.

    Returns
    -------
    dict
        ``images_dir``, and one entry per image in ``files``, ``md5`` (``missing:<path>`` for a missing file),
        ``splits`` and ``image_ids``.
    """
    images_dir = Path(images_dir)
    files = [images_dir / img["file_name"] for img in coco["images"]]
    hashes = [file_md5(f) if f.is_file() else f"missing:{f}" for f in files]
    split = stratified_split([0] * len(files), hashes, val_fraction=settings.val_fraction,
                             test_fraction=settings.test_fraction, seed=settings.seed)
    return {"images_dir": str(images_dir), "files": [str(f) for f in files], "md5": hashes, "splits": split.tolist(),
            "image_ids": [int(img["id"]) for img in coco["images"]]}


def subset_coco(coco: dict, image_ids: list[int]) -> dict:
    """The images ``image_ids`` of ``coco`` and their annotations (e.g. one split, as its own ground truth).

    Parameters
    ----------
    coco : dict
        The COCO dataset.
    image_ids : list of int
        The images to keep.

    Returns
    -------
    dict
        A COCO dataset with those images, their annotations and every category.

    Examples
    --------
    >>> coco = {"images": [{"id": 1}, {"id": 2}], "annotations": [{"id": 7, "image_id": 2}], "categories": []}
    >>> part = subset_coco(coco, [2])
    >>> [img["id"] for img in part["images"]], [a["id"] for a in part["annotations"]]
    ([2], [7])
    """
    keep = set(int(i) for i in image_ids)
    return {"images": [img for img in coco["images"] if int(img["id"]) in keep],
            "annotations": [a for a in coco["annotations"] if int(a["image_id"]) in keep],
            "categories": coco["categories"]}


def network_picture(image: np.ndarray, normalization: Normalization, source: str = "") -> np.ndarray:
    """A picture as Mask R-CNN sees it: float32 (H, W, 3), scaled by ``normalization`` over the whole picture (all
    its channels together). Grey (and grey + alpha) is repeated into three channels, alpha dropped before scaling;
    stacks of planes are refused with an ``ImageInputError`` naming ``source``.

    Parameters
    ----------
    image : np.ndarray
        Grey (H, W), colour (H, W, 3 or 4) or a one-plane stack.
    normalization : Normalization
        How intensities are scaled, as served.
    source : str, optional
        Named in error messages.

    Returns
    -------
    np.ndarray
        float32 (H, W, 3).

    Examples
    --------
    >>> network_picture(np.arange(20, dtype=np.uint16).reshape(4, 5), Normalization()).shape
    (4, 5, 3)
    """
    image_geometry(image, source=source)
    if image.ndim == 3 and image.shape[-1] > 4:  # a one-plane stack (1, H, W)
        image = image[0]
    if image.ndim == 3:
        image = image[..., :3] if image.shape[-1] >= 3 else image[..., 0]
    pixels = normalization.apply(image, source=source)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def model_image(image: np.ndarray, normalization: Normalization, source: str = "") -> torch.Tensor:
    """:func:`network_picture` as the network's input tensor, float32 (3, H, W).

    Parameters
    ----------
    image : np.ndarray
        Grey (H, W), colour (H, W, 3 or 4) or a one-plane stack.
    normalization : Normalization
        How intensities are scaled, as served.
    source : str, optional
        Named in error messages.

    Returns
    -------
    torch.Tensor
        float32 (3, H, W).

    Examples
    --------
    >>> model_image(np.arange(20, dtype=np.uint8).reshape(4, 5), Normalization()).shape
    torch.Size([3, 4, 5])
    """
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(network_picture(image, normalization, source), -1, 0)))


def load_instance_samples(coco: dict, index: dict, split: str,
                          normalization: Normalization) -> list[tuple[torch.Tensor, dict]]:
    """The images of ``split``, each normalised as a whole as it will be served, with their targets (boxes XYXY,
    masks, labels and image id), as tv_tensors.

    Parameters
    ----------
    coco : dict
        The COCO dataset.
    index : dict
        The dataset index of :func:`split_images`.
    split : str
        One of :data:`SPLITS`.
    normalization : Normalization
        How intensities are scaled, as served.

    Returns
    -------
    list of tuple of (torch.Tensor, dict)
        ``(image, target)`` pairs: a tv_tensors ``Image`` (3, H, W) and ``boxes``, ``masks``, ``labels``,
        ``image_id``.
    """
    samples = []
    for file, split_of, image_id in zip(index["files"], index["splits"], index["image_ids"]):
        if split_of != split:
            continue
        image = tv_tensors.Image(model_image(read_image_file(file), normalization, source=str(file)))
        masks, categories, _ = annotation_masks(coco, image_id)
        masks_t = torch.from_numpy(masks.astype(np.uint8))
        boxes = masks_to_boxes(masks_t) if len(masks_t) else torch.zeros((0, 4))
        height, width = image.shape[-2:]
        samples.append((image, {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "masks": tv_tensors.Mask(masks_t), "labels": torch.from_numpy(categories), "image_id": image_id}))
    return samples


@dataclass(frozen=True)
class InstanceAugmentation(FromMapping):
    """Training-set augmentation (from the YAML config); geometric ones move image, boxes and masks together.

    Attributes
    ----------
    flip : bool, optional
        Random horizontal and vertical flips.
    rotate90 : bool, optional
        Random multiples of 90 degrees.
    scale : tuple of float, optional
        Range of random zoom (e.g. [0.8, 1.25]; [1, 1] disables it).
    crop : int, optional
        Side of a random crop taken after zooming (0: none); smaller crops are faster steps.
    brightness : float, optional
        ColorJitter brightness strength.
    contrast : float, optional
        ColorJitter contrast strength.
    blur_sigma : float, optional
        Upper bound of a random Gaussian blur (0: none).
    noise_sigma : float, optional
        Standard deviation of added Gaussian noise (0: none).
    """

    flip: bool = True
    rotate90: bool = True
    scale: tuple[float, float] = (1.0, 1.0)
    crop: int = 0
    brightness: float = 0.0
    contrast: float = 0.0
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0


class RandomRotate90(v2.Transform):
    """Rotate by a random multiple of 90 degrees (exact: no interpolation, no cropping; a non-square image swaps
    its height and width)."""

    def make_params(self, flat_inputs: list) -> dict:
        """Draw the angle shared by every input of one call.

        Parameters
        ----------
        flat_inputs : list
            The call's inputs (image, boxes, masks), flattened.

        Returns
        -------
        dict
            ``angle``: 0, 90, 180 or 270.
        """
        return {"angle": 90 * int(torch.randint(0, 4, ()))}

    def transform(self, inpt, params: dict):
        """Rotate one input by the drawn angle.

        Parameters
        ----------
        inpt : Any
            An image, boxes or masks (tv_tensors).
        params : dict
            From :meth:`make_params`.

        Returns
        -------
        Any
            The input rotated, its canvas expanded to hold it.
        """
        if params["angle"] == 0:
            return inpt
        return self._call_kernel(v2.functional.rotate, inpt, angle=params["angle"], expand=True)


def build_instance_augmentation(settings: InstanceAugmentation) -> v2.Compose:
    """The v2 pipeline for (image, target) pairs. Boxes are recomputed from the masks afterwards
    (:func:`tidy_target`), so they stay tight around each instance after any geometric change.

    Parameters
    ----------
    settings : InstanceAugmentation
        Which changes to apply, and how strongly.

    Returns
    -------
    v2.Compose
        The pipeline, called as ``transform(image, target)``.
    """
    steps: list = []
    if settings.flip:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if settings.rotate90:
        steps.append(RandomRotate90())
    if tuple(settings.scale) != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=0, scale=tuple(settings.scale)))
    if settings.crop:
        steps.append(v2.RandomCrop(settings.crop, pad_if_needed=True))
    steps += photometric_transforms(settings.brightness, settings.contrast, settings.blur_sigma,
                                    settings.noise_sigma)
    return v2.Compose(steps)


def tidy_target(target: dict, min_pixels: int = 4) -> dict:
    """Drop instances with fewer than ``min_pixels`` mask pixels left (e.g. cropped away) and make every box the
    tight box of its mask (XYXY, exclusive right/bottom edge as torchvision's detection models expect).

    Parameters
    ----------
    target : dict
        ``masks`` (N, H, W), ``labels`` (N,) and other keys (kept).
    min_pixels : int, optional
        Fewest mask pixels an instance must keep.

    Returns
    -------
    dict
        The target with the small instances dropped and ``boxes`` recomputed.

    Examples
    --------
    >>> masks = torch.zeros(2, 6, 6, dtype=torch.uint8); masks[0, 1:3, 2:5] = 1; masks[1, 0, 0] = 1
    >>> tidy = tidy_target({"masks": masks, "labels": torch.tensor([1, 1])})
    >>> tidy["boxes"].tolist(), len(tidy["labels"])
    ([[2.0, 1.0, 5.0, 3.0]], 1)
    """
    masks = target["masks"]
    keep = masks.flatten(1).sum(1) >= min_pixels if len(masks) else torch.zeros(0, dtype=torch.bool)
    masks = masks[keep]
    boxes = masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1]) if len(masks) else torch.zeros((0, 4))
    return {**target, "masks": tv_tensors.Mask(masks), "labels": target["labels"][keep],
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(masks.shape[-2:]))}


class InstanceDataset(torch.utils.data.Dataset):
    """Samples from :func:`load_instance_samples` with an optional augmentation, as (image, target) pairs for
    torchvision's detection models.

    Parameters
    ----------
    samples : list of tuple of (torch.Tensor, dict)
        The ``(image, target)`` pairs.
    augmentation : v2.Transform or None, optional
        Applied to each pair when it is read; targets are tidied (:func:`tidy_target`) in any case.
    """

    def __init__(self, samples: list[tuple[torch.Tensor, dict]], augmentation: v2.Transform | None = None) -> None:
        self.samples = samples
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image, target = self.samples[i]
        if self.augmentation is not None:
            if not len(target["masks"]):
                # No instances: an empty box list would keep its canvas size through a rotation of a non-square
                # image and then disagree with it; tidy_target rebuilds the boxes from the masks anyway.
                target = {k: v for k, v in target.items() if k != "boxes"}
            image, target = self.augmentation(image, target)
        return image.as_subclass(torch.Tensor), tidy_target(target)


def collate(batch: list) -> tuple:
    """Detection batches are lists (images differ in size and instance count).

    Parameters
    ----------
    batch : list
        ``(image, target)`` pairs.

    Returns
    -------
    tuple
        The tuple of images and the tuple of targets.

    Examples
    --------
    >>> collate([("a", {"id": 1}), ("b", {"id": 2})])
    (('a', 'b'), ({'id': 1}, {'id': 2}))
    """
    return tuple(zip(*batch))


__all__ = ["SPLITS", "ImageSplitSettings", "split_images", "subset_coco", "model_image", "network_picture", "load_instance_samples",
           "InstanceAugmentation", "build_instance_augmentation", "tidy_target", "InstanceDataset", "collate"]


def add_corrections(coco: dict, index: dict, corrections: Sequence) -> tuple[dict, dict]:
    """The dataset with corrected images (:func:`cellops.corrections.stored_corrections`) added to the split each
    was imported for (training by default): the test split stays exactly as it was.

    Each correction's label image becomes COCO annotations (RLE, exactly as drawn) of a new image; its file name
    is relative to the dataset's images folder, so the validation suite reads it like any other image (and
    refuses a corrected picture that is also a test picture).

    Parameters
    ----------
    coco : dict
        The dataset's COCO annotations.
    index : dict
        Its index (:func:`split_images`).
    corrections : sequence of cellops.corrections.StoredCorrection
        The corrected images with their label images.

    Returns
    -------
    coco, index : dict
        New dicts (the arguments are not changed).

    Raises
    ------
    ValueError
        For a correction naming a category the dataset does not have.
    """
    import os

    from cellops.coco import label_annotations

    coco = {**coco, "images": list(coco["images"]), "annotations": list(coco["annotations"])}
    index = {key: list(value) if isinstance(value, list) else value for key, value in index.items()}
    category_ids = {c["name"]: int(c["id"]) for c in coco["categories"]}
    default_category = min(category_ids.values())
    next_image = max([int(img["id"]) for img in coco["images"]] + [0]) + 1
    next_annotation = max([int(a["id"]) for a in coco["annotations"]] + [0]) + 1
    for correction in corrections:
        labels = correction.read_labels()
        names = {int(k): v for k, v in (correction.categories or {}).items()}
        unknown = sorted(set(names.values()) - set(category_ids))
        if unknown:
            raise ValueError(f"correction {correction.id}: categories {unknown} are not the dataset's "
                             f"({', '.join(category_ids)})")
        coco["images"].append({"id": next_image, "file_name": os.path.relpath(correction.image, index["images_dir"]),
                               "height": int(labels.shape[0]), "width": int(labels.shape[1])})
        found = label_annotations(labels, next_image, first_id=next_annotation, default_category=default_category,
                                  category_of={label: category_ids[name] for label, name in names.items()})
        coco["annotations"] += found
        next_annotation += len(found)
        index["files"].append(str(correction.image))
        index["md5"].append(file_md5(correction.image))
        index["splits"].append(correction.split)
        index["image_ids"].append(next_image)
        next_image += 1
    return coco, index
