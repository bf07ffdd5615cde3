"""Prediction with a trained Mask R-CNN: instances of one image (tiled when it is larger than the model was
trained on), as a 16-bit label image, a per-instance table, COCO results and an overlay.

Instances keep their masks cropped to their own box (:class:`Instance`), so a large field with hundreds of
nuclei never holds hundreds of full-size masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from cellops.coco import cropped_mask_to_rle
from cellops.maskrcnn.data import network_picture
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.tiling import tile_starts
from cellops.uncertainty import DIHEDRAL, Dihedral, Uncertainty

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Instance:
    """One detected instance: ``mask`` (bool, cropped to rows ``y0:y0+h`` and columns ``x0:x0+w`` of the
    image), its category id and score.

    Attributes
    ----------
    y0 : int
        Top row of the crop in the image.
    x0 : int
        Left column of the crop in the image.
    mask : np.ndarray
        Boolean mask, cropped to the instance's box.
    category : int
        Category id.
    score : float
        Detection score.
    """

    y0: int
    x0: int
    mask: np.ndarray
    category: int
    score: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 (exclusive) of the mask's pixels."""
        return self.x0, self.y0, self.x0 + self.mask.shape[1], self.y0 + self.mask.shape[0]

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask placed in an image of ``shape``.

        Parameters
        ----------
        shape : tuple of int
            (height, width) of the image.

        Returns
        -------
        np.ndarray
            Boolean mask of ``shape``.

        Examples
        --------
        >>> Instance(1, 2, np.ones((1, 2), bool), 1, 0.9).full_mask((3, 4)).astype(int).tolist()
        [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
        """
        out = np.zeros(shape, bool)
        out[self.y0:self.y0 + self.mask.shape[0], self.x0:self.x0 + self.mask.shape[1]] = self.mask
        return out

    def shifted(self, dy: int, dx: int) -> "Instance":
        """The same instance moved by ``dy`` rows and ``dx`` columns (from a tile's frame to the image's).

        Parameters
        ----------
        dy : int
            Rows to add to ``y0``.
        dx : int
            Columns to add to ``x0``.

        Returns
        -------
        Instance
            The moved instance (its mask shared, not copied).

        Examples
        --------
        >>> Instance(1, 2, np.ones((1, 2), bool), 1, 0.9).shifted(10, 20).box
        (22, 11, 24, 12)
        """
        return Instance(self.y0 + dy, self.x0 + dx, self.mask, self.category, self.score)


def crop_instance(mask: np.ndarray, category: int, score: float) -> Instance | None:
    """An :class:`Instance` from a full-size bool mask; None when the mask is empty.

    Parameters
    ----------
    mask : np.ndarray
        Full-size boolean mask.
    category : int
        Category id.
    score : float
        Detection score.

    Returns
    -------
    Instance or None
        The instance with its mask cropped to its box.

    Examples
    --------
    >>> mask = np.zeros((4, 5), bool); mask[1:3, 2:4] = True
    >>> crop_instance(mask, 1, 0.9).box, crop_instance(np.zeros((4, 5), bool), 1, 0.9)
    ((2, 1, 4, 3), None)
    """
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.where(rows)[0][[0, -1]]
    x0, x1 = np.where(cols)[0][[0, -1]]
    return Instance(int(y0), int(x0), mask[y0:y1 + 1, x0:x1 + 1].copy(), int(category), float(score))


@torch.no_grad()
def predict_instances(model: torch.nn.Module, picture: np.ndarray, settings: MaskRCNNServing) -> list[Instance]:
    """Instances the model finds in ``picture``, already as the network sees it (:func:`network_picture`: float32
    (H, W, 3), normalised), whole picture at once.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision Mask R-CNN in eval mode.
    picture : np.ndarray
        float32 (H, W, 3), normalised.
    settings : MaskRCNNServing
        Score and mask thresholds.

    Returns
    -------
    list of Instance
        The instances scoring at least ``settings.score_threshold`` with a non-empty mask, in the model's order.
    """
    device = next(model.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(picture, -1, 0), dtype=np.float32)).to(device)
    if not all(hasattr(model, part) for part in ("transform", "backbone", "rpn", "roi_heads")):
        output = model([tensor])[0]  # not torchvision's two-stage layout: the model's own forward
        masks = (output["masks"][:, 0] >= settings.mask_threshold).cpu().numpy()
        instances = []
        for mask, category, score in zip(masks, output["labels"].tolist(), output["scores"].tolist()):
            if score >= settings.score_threshold and (instance := crop_instance(mask, category, score)) is not None:
                instances.append(instance)
        return instances
    # torchvision's forward, stopping before its full-image mask pasting (one float image per detection, zeroed,
    # stacked, then thresholded and cropped here): each mask is pasted into its own box instead (paste_in_box).
    images, _ = model.transform([tensor])
    features = model.backbone(images.tensors)
    proposals, _ = model.rpn(images, features)
    output = model.roi_heads(features, proposals, images.image_sizes)[0][0]
    from torchvision.models.detection.transform import resize_boxes

    boxes = resize_boxes(output["boxes"], images.image_sizes[0], tuple(picture.shape[:2]))
    instances = []
    for probabilities, box, category, score in zip(output["masks"][:, 0], boxes, output["labels"].tolist(),
                                                   output["scores"].tolist()):
        if score >= settings.score_threshold and (instance := paste_in_box(
                probabilities, box, picture.shape[:2], settings.mask_threshold, category, score)) is not None:
            instances.append(instance)
    return instances


def paste_in_box(probabilities: torch.Tensor, box: torch.Tensor, shape: tuple[int, int], threshold: float,
                 category: int, score: float) -> Instance | None:
    """The instance a mask head's (M, M) ``probabilities`` describe in ``box`` (image coordinates), pasted,
    thresholded and cropped as torchvision's ``paste_masks_in_image`` followed by :func:`crop_instance` would
    (the same padding by one pixel, box expansion, bilinear resize and clipping to the image), without the full-size
    mask; None when nothing reaches ``threshold``.

    Parameters
    ----------
    probabilities : torch.Tensor
        (M, M) mask probabilities in the box's frame.
    box : torch.Tensor
        x0, y0, x1, y1 in image coordinates.
    shape : tuple of int
        (height, width) of the image.
    threshold : float
        Least probability of a mask pixel.
    category : int
        Category id.
    score : float
        Detection score.

    Returns
    -------
    Instance or None
        The instance, its mask cropped to its pixels.

    Examples
    --------
    >>> from torchvision.models.detection.roi_heads import paste_masks_in_image
    >>> probabilities, box = torch.rand(28, 28), torch.tensor([3.2, -2.0, 40.7, 20.1])
    >>> full = paste_masks_in_image(probabilities[None, None], box[None], (30, 36))[0, 0].numpy() >= 0.5
    >>> ours, theirs = paste_in_box(probabilities, box, (30, 36), 0.5, 1, 0.9), crop_instance(full, 1, 0.9)
    >>> ours.box == theirs.box and bool((ours.mask == theirs.mask).all())
    True
    """
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    padded, scale = expand_masks(probabilities[None, None], padding=1)
    x0, y0, x1, y1 = expand_boxes(box[None].float(), scale).to(torch.int64)[0].tolist()
    height, width = shape
    pasted = F.interpolate(padded, size=(max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)), mode="bilinear",
                           align_corners=False)[0, 0]
    top, left = max(y0, 0), max(x0, 0)
    inside = pasted[top - y0:min(y1 + 1, height) - y0, left - x0:min(x1 + 1, width) - x0]
    found = crop_instance((inside >= threshold).numpy(), category, score)
    return None if found is None else found.shifted(top, left)


def mask_iou(a: Instance, b: Instance) -> float:
    """Intersection over union of two instances' masks (computed on their boxes' overlap only).

    Parameters
    ----------
    a : Instance
        One instance.
    b : Instance
        The other, in the same image.

    Returns
    -------
    float
        The IoU, 0 when the boxes do not overlap.

    Examples
    --------
    >>> a = Instance(0, 0, np.ones((2, 2), bool), 1, 0.9)
    >>> mask_iou(a, a.shifted(0, 1)), mask_iou(a, a.shifted(5, 5))
    (0.3333333333333333, 0.0)
    """
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box, b.box
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if x0 >= x1 or y0 >= y1:
        return 0.0
    inter = int(np.sum(a.mask[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0] & b.mask[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]))
    return inter / (a.area + b.area - inter)


def suppress_duplicates(instances: list[Instance], iou_threshold: float = 0.5) -> list[Instance]:
    """Greedy mask non-maximum suppression, highest score first: an instance overlapping a kept one of its category
    by more than ``iou_threshold`` is dropped (the same object seen by two tiles).

    Parameters
    ----------
    instances : list of Instance
        Instances of one image.
    iou_threshold : float, optional
        Mask IoU above which the lower-scoring instance is dropped.

    Returns
    -------
    list of Instance
        The instances kept, highest score first.

    Examples
    --------
    >>> a = Instance(0, 0, np.ones((4, 4), bool), 1, 0.9)
    >>> [i.score for i in suppress_duplicates([a, Instance(0, 1, np.ones((4, 4), bool), 1, 0.8)])]
    [0.9]
    """
    kept: list[Instance] = []
    for instance in sorted(instances, key=lambda i: -i.score):
        if all(k.category != instance.category or mask_iou(k, instance) <= iou_threshold for k in kept):
            kept.append(instance)
    return kept


def predict_tiled(predict: Callable[[np.ndarray], list[Instance]], image: np.ndarray, tile: int,
                  overlap: int) -> list[Instance]:
    """Run ``predict`` on tiles of side ``tile`` whose neighbours share at least ``overlap`` pixels
    (:func:`cellops.tiling.tile_starts`) and keep each instance from the one tile whose core holds the centre
    of its box (cores split each overlap in half), so nothing is counted twice and nothing near a seam is cut,
    as long as objects are at most about ``overlap`` across; an object seen by two tiles whose boxes' centres fall
    on either side of a seam is kept once (:func:`suppress_duplicates`). An image that fits one tile is predicted
    whole.

    Parameters
    ----------
    predict : callable
        Instances of one tile (in the tile's frame).
    image : np.ndarray
        The whole image, (H, W) or (H, W, C).
    tile : int
        Side of the tiles.
    overlap : int
        Least number of pixels neighbouring tiles share.

    Returns
    -------
    list of Instance
        The instances of the whole image, in its frame.

    Examples
    --------
    >>> def blobs(img):
    ...     from scipy import ndimage
    ...     labels, n = ndimage.label(img > 0)
    ...     return [crop_instance(labels == i, 1, 1.0) for i in range(1, n + 1)]
    >>> img = np.zeros((300, 300), np.uint8); img[10:20, 10:20] = 1; img[140:150, 140:150] = 1
    >>> sorted(i.box for i in predict_tiled(blobs, img, 160, 60)) == sorted(i.box for i in blobs(img))
    True
    """
    height, width = image.shape[:2]
    if height <= tile and width <= tile:
        return predict(image)
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)

    def core(starts: list[int], i: int, length: int) -> tuple[float, float]:
        low = 0 if i == 0 else (starts[i - 1] + tile + starts[i]) / 2
        high = length if i == len(starts) - 1 else (starts[i] + tile + starts[i + 1]) / 2
        return low, high

    kept: list[Instance] = []
    for r, y in enumerate(rows):
        for c, x in enumerate(cols):
            (ylo, yhi), (xlo, xhi) = core(rows, r, height), core(cols, c, width)
            for instance in predict(image[y:y + tile, x:x + tile]):
                moved = instance.shifted(y, x)
                x0, y0, x1, y1 = moved.box
                cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
                if ylo <= cy < yhi and xlo <= cx < xhi:
                    kept.append(moved)
    return suppress_duplicates(kept)


def predict_image(model: torch.nn.Module, image: np.ndarray, settings: MaskRCNNServing) -> list[Instance]:
    """Instances of ``image`` (2-D grey or channels-last colour; 8/16-bit or float), normalised as a whole by
    ``settings.normalization``, tiled when a side exceeds ``settings.tile_size``; highest score first.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision Mask R-CNN in eval mode.
    image : np.ndarray
        2-D grey or channels-last colour image.
    settings : MaskRCNNServing
        Normalisation, tiling and thresholds, as served.

    Returns
    -------
    list of Instance
        The instances, highest score first.
    """
    return predict_picture(model, network_picture(as_picture(image), settings.normalization), settings)


def predict_picture(model: torch.nn.Module, picture: np.ndarray, settings: MaskRCNNServing) -> list[Instance]:
    """Instances of a picture already as the network sees it (:func:`network_picture`), tiled when a side exceeds
    ``settings.tile_size``; highest score first.

    Every tile is shown to the model at ``tile_size`` (smaller images and edge tiles are padded with the picture's
    median): the model scales each input to its ``min_size``, so this keeps objects at the scale it was trained
    on (training images are ``tile_size`` across).

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision Mask R-CNN in eval mode.
    picture : np.ndarray
        float32 (H, W, 3), normalised.
    settings : MaskRCNNServing
        Tiling and thresholds, as served.

    Returns
    -------
    list of Instance
        The instances, highest score first.
    """
    image = picture
    tile = settings.tile_size
    fill: list[np.ndarray] = []  # the median, computed only once a tile needs padding (9 ms for 512 x 512 x 3)

    def padded(part: np.ndarray) -> list[Instance]:
        height, width = part.shape[:2]
        if (height, width) == (tile, tile):
            return predict_instances(model, part, settings)
        if not fill:
            fill.append(np.median(image, axis=(0, 1)).astype(image.dtype))
        canvas = np.empty((tile, tile, *part.shape[2:]), part.dtype)
        canvas[...] = fill[0]
        canvas[:height, :width] = part
        inside = []
        for instance in predict_instances(model, canvas, settings):
            mask = instance.full_mask((tile, tile))[:height, :width]
            if (cropped := crop_instance(mask, instance.category, instance.score)) is not None:
                inside.append(cropped)
        return inside

    return sorted(predict_tiled(padded, image, tile, settings.tile_overlap), key=lambda i: -i.score)


def _match(base: list[Instance], seen: list[Instance]) -> list[tuple[int, int, float]]:
    """One-to-one pairs (base index, seen index, mask IoU) of the same category, greedily by IoU, highest first;
    boxes that do not overlap are never paired (and their masks never compared)."""
    if not base or not seen:
        return []
    a_box, b_box = np.array([i.box for i in base]), np.array([i.box for i in seen])
    overlap = ((a_box[:, None, 0] < b_box[None, :, 2]) & (b_box[None, :, 0] < a_box[:, None, 2])
               & (a_box[:, None, 1] < b_box[None, :, 3]) & (b_box[None, :, 1] < a_box[:, None, 3])
               & (np.array([i.category for i in base])[:, None] == np.array([i.category for i in seen])[None, :]))
    pairs = [(mask_iou(base[i], seen[j]), i, j) for i, j in zip(*np.nonzero(overlap))]
    used_base, used_seen, matched = set(), set(), []
    for iou, i, j in sorted((p for p in pairs if p[0] > 0), reverse=True):
        if i not in used_base and j not in used_seen:
            used_base.add(i), used_seen.add(j)
            matched.append((i, j, iou))
    return matched


def instances_back(instances: list[Instance], view: Dihedral, shape: tuple[int, int]) -> list[Instance]:
    """Instances predicted on ``view.apply(picture)`` brought back to the picture's frame (crops moved, never
    made full size).

    Parameters
    ----------
    instances : list of Instance
        In the transformed picture's frame.
    view : Dihedral
        The symmetry the picture was seen through.
    shape : tuple of int
        (height, width) of the transformed picture.

    Returns
    -------
    list of Instance
        The same instances, in the original frame.

    Examples
    --------
    >>> from cellops.uncertainty import Dihedral
    >>> back = instances_back([Instance(0, 0, np.ones((1, 2), bool), 1, 0.9)], Dihedral(True, 0), (3, 5))
    >>> back[0].box
    (3, 0, 5, 1)
    """
    out = []
    for instance in instances:
        y0, x0, mask = view.invert_crop(instance.y0, instance.x0, instance.mask, shape)
        out.append(Instance(y0, x0, mask, instance.category, instance.score))
    return out


def tta_uncertainty(base: list[Instance], views: list[list[Instance]]) -> Uncertainty:
    """How much the instances of a picture agree with those of its test-time views (each in the picture's frame).

    Each base instance is matched one to one with the view's instances of its category by mask IoU (greedily,
    highest IoU first). Its agreement with one view is ``IoU * (1 - |score difference|)`` (0 when unmatched); its
    uncertainty is 1 - its mean agreement over the views. The image's is 1 - the mean over the views of a soft
    F1 between the two sets, ``2 * sum(agreements) / (base count + view count)``, so a view's detections that
    match nothing in the base (disagreement on what exists) raise it too; every view empty like the base: 0.

    Parameters
    ----------
    base : list of Instance
        The instances served (:func:`predict_image`).
    views : list of list of Instance
        The instances of each augmented view, in the picture's frame (:func:`instances_back`).

    Returns
    -------
    Uncertainty
        ``image`` and ``per_object`` (one per base instance, in their order) in [0, 1], method ``flip-tta``.

    Examples
    --------
    >>> a = Instance(0, 0, np.ones((4, 4), bool), 1, 0.9)
    >>> tta_uncertainty([a], [[a], [a]]).image, tta_uncertainty([a], [[a], []]).per_object
    (0.0, (0.5,))
    >>> tta_uncertainty([], [[], []]).image, tta_uncertainty([], [[a], []]).image
    (0.0, 0.5)
    """
    if not views:
        raise ValueError("at least one augmented view is needed")
    agreement = np.zeros((len(base), len(views)))
    image_agreement = []
    for v, seen in enumerate(views):
        for i, j, iou in _match(base, seen):
            agreement[i, v] = iou * (1.0 - abs(base[i].score - seen[j].score))
        total = len(base) + len(seen)
        image_agreement.append(2.0 * agreement[:, v].sum() / total if total else 1.0)
    per_object = tuple(float(np.clip(1.0 - a, 0.0, 1.0)) for a in agreement.mean(axis=1))
    return Uncertainty(float(np.clip(1.0 - np.mean(image_agreement), 0.0, 1.0)), "flip-tta", per_object=per_object)


def predict_with_uncertainty(model: torch.nn.Module, image: np.ndarray,
                             settings: MaskRCNNServing) -> tuple[list[Instance], Uncertainty]:
    """:func:`predict_image`'s instances (the same) and how sure the model is of each and of the image: the
    picture is also predicted under its seven other flips and quarter turns (:data:`cellops.uncertainty.DIHEDRAL`),
    the instances brought back, and the agreement measured by :func:`tta_uncertainty`. Costs eight predictions
    instead of one; :func:`predict_image` is unchanged.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision Mask R-CNN in eval mode.
    image : np.ndarray
        2-D grey or channels-last colour image, as :func:`predict_image` takes it.
    settings : MaskRCNNServing
        Normalisation, tiling and thresholds, as served.

    Returns
    -------
    instances : list of Instance
        What :func:`predict_image` returns, highest score first.
    uncertainty : Uncertainty
        ``image`` and ``per_object`` (in the order of ``instances``), method ``flip-tta``.
    """
    picture = network_picture(as_picture(image), settings.normalization)
    base = predict_picture(model, picture, settings)
    views = []
    for view in DIHEDRAL[1:]:
        seen = np.ascontiguousarray(view.apply(picture, axes=(0, 1)))
        views.append(instances_back(predict_picture(model, seen, settings), view, seen.shape[:2]))
    return base, tta_uncertainty(base, views)


def as_picture(image: np.ndarray, source: str = "") -> np.ndarray:
    """One picture as (H, W) or (H, W, C): a one-plane stack (1, H, W) is squeezed; stacks of planes and pictures
    with a side under 16 pixels are refused with an ``ImageInputError`` naming ``source``.

    Parameters
    ----------
    image : np.ndarray
        A decoded image.
    source : str, optional
        Named in error messages.

    Returns
    -------
    np.ndarray
        (H, W) or (H, W, C).

    Examples
    --------
    >>> as_picture(np.zeros((1, 20, 30), np.uint8)).shape
    (20, 30)
    """
    from cellops.io import ImageInputError, image_geometry

    height, width, _ = image_geometry(image, source=source)
    if image.ndim == 3 and image.shape[-1] > 4:
        image = image[0]
    if min(height, width) < 16:
        raise ImageInputError(f"{source or 'image'}: {width}x{height} pixels is too small to segment (16 at least)")
    return image


def label_image(instances: list[Instance], shape: tuple[int, int]) -> np.ndarray:
    """A uint16 label image (0 background; instance ``i`` of the list labelled ``i + 1``); where instances overlap,
    the earlier (higher-scoring) one keeps the pixel.

    Parameters
    ----------
    instances : list of Instance
        The instances, highest score first.
    shape : tuple of int
        (height, width) of the image.

    Returns
    -------
    np.ndarray
        uint16 label image of ``shape``.

    Examples
    --------
    >>> a, b = Instance(0, 0, np.ones((1, 2), bool), 1, 0.9), Instance(0, 1, np.ones((1, 2), bool), 1, 0.8)
    >>> label_image([a, b], (1, 4)).tolist()
    [[1, 1, 2, 0]]
    """
    if len(instances) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(instances)} instances do not fit a 16-bit label image")
    labels = np.zeros(shape, np.uint16)
    for i, instance in enumerate(instances, start=1):
        window = labels[instance.y0:instance.y0 + instance.mask.shape[0], instance.x0:instance.x0 + instance.mask.shape[1]]
        window[instance.mask & (window == 0)] = i
    return labels


def instance_table(instances: list[Instance], categories: dict[int, str]) -> "pd.DataFrame":
    """One row per instance: label (as in :func:`label_image`), category, score, area in pixels, box and centroid.

    Parameters
    ----------
    instances : list of Instance
        The instances, in label order.
    categories : dict of int to str
        Category id to name (an unknown id is written as its number).

    Returns
    -------
    pd.DataFrame
        Columns ``label``, ``category``, ``score``, ``area``, ``box_x0`` .. ``box_y1``, ``centroid_x``,
        ``centroid_y``.

    Examples
    --------
    >>> table = instance_table([Instance(1, 2, np.ones((2, 2), bool), 1, 0.9)], {1: "cell"})
    >>> table[["category", "area", "centroid_x"]].values.tolist()
    [['cell', 4, 2.5]]
    """
    import pandas as pd

    rows = []
    for i, instance in enumerate(instances, start=1):
        ys, xs = np.nonzero(instance.mask)
        x0, y0, x1, y1 = instance.box
        rows.append({"label": i, "category": categories.get(instance.category, str(instance.category)),
                     "score": round(instance.score, 4), "area": instance.area, "box_x0": x0, "box_y0": y0,
                     "box_x1": x1, "box_y1": y1, "centroid_x": round(float(xs.mean()) + x0, 2),
                     "centroid_y": round(float(ys.mean()) + y0, 2)})
    return pd.DataFrame(rows, columns=["label", "category", "score", "area", "box_x0", "box_y0", "box_x1", "box_y1",
                                       "centroid_x", "centroid_y"])


def instance_rle(instance: Instance, shape: tuple[int, int]) -> dict:
    """The instance's mask as COCO compressed RLE of the whole ``shape``, from its crop alone (no full-size mask:
    O(area), not O(image), per instance), with a JSON-ready ``counts`` string
    (:func:`cellops.coco.cropped_mask_to_rle`).

    Parameters
    ----------
    instance : Instance
        The instance.
    shape : tuple of int
        (height, width) of the image.

    Returns
    -------
    dict
        COCO RLE: ``size`` and ``counts`` (str).

    Examples
    --------
    >>> from cellops.coco import mask_to_rle
    >>> inst = crop_instance(np.pad(np.ones((2, 3), bool), ((1, 2), (2, 0))), 1, 0.9)
    >>> instance_rle(inst, (5, 5)) == mask_to_rle(inst.full_mask((5, 5)))
    True
    """
    return cropped_mask_to_rle(instance.mask, instance.y0, instance.x0, shape)


def coco_results(instances: list[Instance], image_id: int, shape: tuple[int, int]) -> list[dict]:
    """The instances as COCO result entries (mask RLE, box XYWH, score, category) for pycocotools.

    Parameters
    ----------
    instances : list of Instance
        Instances of one image.
    image_id : int
        The image's id in the ground truth.
    shape : tuple of int
        (height, width) of the image.

    Returns
    -------
    list of dict
        One entry per instance: ``image_id``, ``category_id``, ``score``, ``segmentation``, ``bbox``.

    Examples
    --------
    >>> coco_results([Instance(1, 2, np.ones((2, 3), bool), 1, 0.9)], 7, (5, 5))[0]["bbox"]
    [2.0, 1.0, 3.0, 2.0]
    """
    results = []
    for instance in instances:
        x0, y0, x1, y1 = instance.box
        results.append({"image_id": int(image_id), "category_id": int(instance.category), "score": instance.score,
                        "segmentation": instance_rle(instance, shape),
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
    return results


def overlay(image: np.ndarray, instances: list[Instance], categories: dict[int, str] | None = None) -> np.ndarray:
    """An RGB uint8 picture of ``image`` with each instance's outline, box and score drawn in its own colour.

    Parameters
    ----------
    image : np.ndarray
        Grey (H, W) or colour (H, W, C) image, any dtype (scaled by its 0.5 and 99.5 percentiles).
    instances : list of Instance
        The instances to draw.
    categories : dict of int to str or None, optional
        Category names written before the scores.

    Returns
    -------
    np.ndarray
        uint8 (H, W, 3).
    """
    import cv2

    grey = np.asarray(image, dtype=np.float64)
    grey = grey if grey.ndim == 2 else grey[..., :3].mean(axis=-1)
    low, high = np.percentile(grey, [0.5, 99.5])
    picture = np.clip((grey - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.repeat(picture[..., None], 3, axis=-1))
    palette = (np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                         [145, 30, 180], [70, 240, 240], [240, 50, 230]]))
    for i, instance in enumerate(instances):
        colour = tuple(int(v) for v in palette[i % len(palette)])
        contours, _ = cv2.findContours(instance.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, colour, 1, offset=(instance.x0, instance.y0))
        x0, y0, x1, y1 = instance.box
        cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), colour, 1)
        name = (categories or {}).get(instance.category, "")
        cv2.putText(rgb, f"{name} {instance.score:.2f}".strip(), (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, colour, 1, cv2.LINE_AA)
    return rgb


def timing_picture(size: int, seed: int = 0, blobs: int = 12) -> np.ndarray:
    """A uint8 field of textured bright discs on a noisy background, ``size`` square: one unit of served work to time
    runtimes on (:mod:`cellops.host_runtime`). Its heads' cost depends on how many objects a detector proposes, so
    a blank image would time the backbone only.

    Examples
    --------
    >>> picture = timing_picture(64)
    >>> picture.shape, picture.dtype, bool(picture.max() > picture.mean())
    ((64, 64), dtype('uint8'), True)
    """
    import cv2

    rng = np.random.default_rng(seed)
    field = rng.normal(90, 12, (size, size)).astype(np.float32)
    discs = np.zeros((size, size), np.uint8)
    for _ in range(blobs):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(discs, centre, int(rng.integers(size // 40 + 4, size // 10 + 8)), 255, -1)
    field += cv2.GaussianBlur(discs.astype(np.float32), (0, 0), 2) * 0.35 * rng.uniform(0.8, 1.2, (size, size))
    return np.clip(field, 0, 255).astype(np.uint8)


def timing_unit(settings: MaskRCNNServing, seed: int = 0) -> Callable[[torch.nn.Module], list[Instance]]:
    """One unit of served work to time runtimes on (:mod:`cellops.host_runtime`): :func:`predict_image` of a
    :func:`timing_picture` of one tile.

    Examples
    --------
    >>> callable(timing_unit(MaskRCNNServing(tile_size=64, tile_overlap=16)))
    True
    """
    picture = timing_picture(settings.tile_size, seed)
    return lambda module: predict_image(module, picture, settings)
