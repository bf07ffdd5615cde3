"""COCO segmentations: the one encoder and decoder of the project's instance masks.

A COCO segmentation comes in three forms, all read everywhere (training data, validation, scoring, evaluation):

- polygons: a list of ``[x0, y0, x1, y1, ...]`` lists, one instance possibly in several parts;
- compressed RLE: ``{"size": [height, width], "counts": "<string>"}`` (what pycocotools and CVAT write);
- uncompressed RLE: ``{"size": [height, width], "counts": [run, run, ...]}`` (iscrowd regions, some exporters):
  the lengths of alternating background and foreground runs, down the columns.

What the project writes is compressed RLE with a JSON-ready ``counts`` string (:func:`mask_to_rle`,
:func:`labels_to_coco`). Every conversion goes through ``pycocotools.mask``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Segmentation = list | dict


def to_rle(segmentation: Segmentation, height: int, width: int) -> dict:
    """Any COCO segmentation as compressed RLE, ``counts`` as bytes (the form ``pycocotools.mask`` computes on).

    Parameters
    ----------
    segmentation : list or dict
        Polygons, compressed RLE (``counts`` a string or bytes) or uncompressed RLE (``counts`` a list of ints).
    height, width : int
        Size of the image the segmentation belongs to (polygons carry none).

    Returns
    -------
    dict
        ``{"size": [height, width], "counts": bytes}``; several polygons are merged into one mask.

    Examples
    --------
    >>> to_rle({"size": [2, 2], "counts": [1, 2, 1]}, 2, 2)
    {'size': [2, 2], 'counts': b'121'}
    >>> to_rle({"size": [2, 2], "counts": "121"}, 2, 2) == to_rle({"size": [2, 2], "counts": [1, 2, 1]}, 2, 2)
    True
    """
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def segmentation_mask(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, compressed or uncompressed RLE) as a boolean mask.

    Parameters
    ----------
    segmentation : list or dict
        Any of the three forms; an empty polygon list is an empty mask.
    height, width : int
        Size of the image.

    Returns
    -------
    np.ndarray
        ``(height, width)`` bool.

    Examples
    --------
    >>> segmentation_mask({"size": [2, 2], "counts": [1, 2, 1]}, 2, 2).tolist()
    [[False, True], [True, False]]
    >>> int(segmentation_mask([[0, 0, 4, 0, 4, 4, 0, 4]], 8, 8).sum())
    16
    """
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list) and not segmentation:
        return np.zeros((height, width), bool)
    return coco_mask.decode(to_rle(segmentation, height, width)).astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """A boolean mask as COCO compressed RLE with a JSON-ready ``counts`` string.

    Parameters
    ----------
    mask : np.ndarray
        ``(H, W)``, bool or 0/1 integers.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": str}``.

    Examples
    --------
    >>> mask_to_rle(np.array([[0, 1], [1, 0]], bool))
    {'size': [2, 2], 'counts': '121'}
    """
    from pycocotools import mask as coco_mask

    return _json_ready(coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))))


def cropped_mask_to_rle(mask: np.ndarray, y0: int, x0: int, shape: tuple[int, int]) -> dict:
    """COCO compressed RLE of an image of ``shape`` holding ``mask`` at rows ``y0:`` and columns ``x0:``, computed
    from the crop alone (O(area), not O(image): no full-size mask is made).

    Parameters
    ----------
    mask : np.ndarray
        ``(h, w)`` bool, the object's pixels within its box.
    y0, x0 : int
        Where the crop's top-left pixel lies in the image.
    shape : tuple of int
        ``(height, width)`` of the image.

    Returns
    -------
    dict
        ``{"size": [height, width], "counts": str}``, equal to :func:`mask_to_rle` of the full-size mask.

    Examples
    --------
    >>> crop = np.ones((2, 3), bool)
    >>> full = np.zeros((5, 5), bool); full[1:3, 2:5] = True
    >>> cropped_mask_to_rle(crop, 1, 2, (5, 5)) == mask_to_rle(full)
    True
    """
    from pycocotools import mask as coco_mask

    height, width = shape
    columns, rows = np.nonzero(mask.T)  # column-major order, as COCO's runs go down the columns
    if not len(rows):
        return mask_to_rle(np.zeros(shape, bool))
    linear = (columns + x0) * height + rows + y0
    breaks = np.flatnonzero(np.diff(linear) != 1)
    starts = np.r_[linear[0], linear[breaks + 1]]
    ends = np.r_[linear[breaks] + 1, linear[-1] + 1]
    counts = np.empty(2 * len(starts) + 1, np.int64)
    counts[0::2] = np.r_[starts, height * width] - np.r_[0, ends]  # background runs, the last to the end
    counts[1::2] = ends - starts
    return _json_ready(coco_mask.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width))


def _json_ready(rle: dict) -> dict:
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def segmentation_area(segmentation: Segmentation, height: int, width: int) -> float:
    """Pixels of a COCO segmentation (any form), as COCO's ``area``.

    Parameters
    ----------
    segmentation : list or dict
        Polygons, uncompressed or compressed RLE.
    height : int
        Height of the image.
    width : int
        Width of the image.

    Returns
    -------
    float
        Number of pixels.

    Examples
    --------
    >>> segmentation_area([[0, 0, 4, 0, 4, 4, 0, 4]], 8, 8)
    16.0
    """
    from pycocotools import mask as coco_mask

    return float(coco_mask.area(to_rle(segmentation, height, width)))


def segmentation_bbox(segmentation: Segmentation, height: int, width: int) -> list[float]:
    """The box ``[x, y, width, height]`` of a COCO segmentation's pixels (any form), as COCO's ``bbox``.

    Parameters
    ----------
    segmentation : list or dict
        Polygons, uncompressed or compressed RLE.
    height : int
        Height of the image.
    width : int
        Width of the image.

    Returns
    -------
    list of float
        ``[x, y, width, height]``.

    Examples
    --------
    >>> segmentation_bbox({"size": [3, 3], "counts": [4, 2, 3]}, 3, 3)
    [1.0, 1.0, 1.0, 2.0]
    """
    from pycocotools import mask as coco_mask

    return [float(v) for v in coco_mask.toBbox(to_rle(segmentation, height, width))]


def segmentation_ious(found: list[Segmentation], truth: list[Segmentation], height: int, width: int) -> np.ndarray:
    """Intersection over union of every pair of ``found`` and ``truth`` segmentations (any forms) of one image.

    Parameters
    ----------
    found, truth : list
        COCO segmentations of an image of ``height`` x ``width`` pixels.
    height, width : int
        Size of the image.

    Returns
    -------
    np.ndarray
        ``(len(found), len(truth))`` float64.

    Examples
    --------
    >>> square = [[0, 0, 2, 0, 2, 2, 0, 2]]
    >>> segmentation_ious([square], [square, mask_to_rle(np.ones((4, 4), bool))], 4, 4).tolist()
    [[1.0, 0.25]]
    """
    from pycocotools import mask as coco_mask

    if not found or not truth:
        return np.zeros((len(found), len(truth)))
    ious = coco_mask.iou([to_rle(s, height, width) for s in found], [to_rle(s, height, width) for s in truth],
                         [0] * len(truth))
    return np.asarray(ious, np.float64).reshape(len(found), len(truth))


def annotation_masks(coco: dict, image_id: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The instances of one image of a COCO dataset; crowd regions are left out (they are not instances).

    Parameters
    ----------
    coco : dict
        COCO instance annotations (``images`` with ``height`` and ``width``).
    image_id : int
        The image's id.

    Returns
    -------
    masks : np.ndarray
        ``(N, H, W)`` bool.
    categories : np.ndarray
        ``(N,)`` int64 category ids.
    ids : list
        The annotations' ids.
    """
    info = next(img for img in coco["images"] if img["id"] == image_id)
    height, width = int(info["height"]), int(info["width"])
    masks, categories, ids = [], [], []
    for ann in coco["annotations"]:
        if ann["image_id"] != image_id or ann.get("iscrowd", 0):
            continue
        masks.append(segmentation_mask(ann["segmentation"], height, width))
        categories.append(int(ann["category_id"]))
        ids.append(ann["id"])
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), bool)
    return stacked, np.asarray(categories, np.int64), ids


def labels_to_coco(labels_per_image: dict[str, np.ndarray], category: str = "colony") -> dict:
    """COCO instance annotations (compressed RLE masks, boxes, areas) of label images keyed by file name.

    Parameters
    ----------
    labels_per_image : dict
        File name -> ``(H, W)`` integer label image (0 background, one value per instance; ids may be sparse).
    category : str
        Name of the one category every instance gets.

    Returns
    -------
    dict
        COCO ``images``, ``annotations`` and ``categories``; images numbered from 1 in file-name order.

    Examples
    --------
    >>> coco = labels_to_coco({"a.png": np.array([[0, 1], [2, 2]])})
    >>> [a["area"] for a in coco["annotations"]], coco_to_labels(coco, "a.png").tolist()
    ([1.0, 2.0], [[0, 1], [2, 2]])
    """
    images, annotations = [], []
    for image_id, (file_name, labels) in enumerate(sorted(labels_per_image.items()), start=1):
        images.append({"id": image_id, "file_name": file_name, "height": int(labels.shape[0]),
                       "width": int(labels.shape[1])})
        annotations += label_annotations(labels, image_id, first_id=len(annotations) + 1)
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": category}]}


def label_annotations(labels: np.ndarray, image_id: int, *, first_id: int = 1,
                      category_of: Mapping[int, int] | None = None, default_category: int = 1) -> list[dict]:
    """COCO annotations (compressed RLE mask, box, area) of every instance of one label image, in label order.

    Parameters
    ----------
    labels : np.ndarray
        ``(H, W)`` integer label image (0 background, one value per instance; ids may be sparse).
    image_id : int
        The COCO image the instances belong to.
    first_id : int
        The first annotation's id (the next ones follow).
    category_of : Mapping of int to int, optional
        Label -> category id; labels it lacks get ``default_category``.
    default_category : int
        The category id of the other labels.

    Returns
    -------
    list of dict
        One annotation per label present, in increasing label order.

    Examples
    --------
    >>> [(a["id"], a["category_id"], a["area"]) for a in label_annotations(np.array([[0, 3], [5, 5]]), 7,
    ...                                                                    first_id=4, category_of={5: 2})]
    [(4, 1, 1.0), (5, 2, 2.0)]
    """
    height, width = int(labels.shape[0]), int(labels.shape[1])
    annotations = []
    for label in np.unique(labels[labels > 0]):  # only the labels present: ids may be sparse (32-bit)
        rle = mask_to_rle(labels == label)
        annotations.append({
            "id": first_id + len(annotations), "image_id": image_id,
            "category_id": int((category_of or {}).get(int(label), default_category)), "segmentation": rle,
            "area": segmentation_area(rle, height, width), "bbox": segmentation_bbox(rle, height, width),
            "iscrowd": 0,
        })
    return annotations


def coco_to_labels(coco: dict, file_name: str) -> np.ndarray:
    """The label image of ``file_name`` rebuilt from COCO annotations in any segmentation form.

    Parameters
    ----------
    coco : dict
        COCO instance annotations.
    file_name : str
        The ``file_name`` of one of its images.

    Returns
    -------
    np.ndarray
        ``(H, W)`` int32: the image's ``i``-th annotation labelled ``i`` (from 1), later ones drawn over earlier.

    Raises
    ------
    KeyError
        When no image of ``coco`` has that file name.

    Examples
    --------
    >>> coco = {"images": [{"id": 7, "file_name": "a.png", "height": 2, "width": 2}],
    ...         "annotations": [{"image_id": 7, "segmentation": {"size": [2, 2], "counts": [1, 2, 1]}}]}
    >>> coco_to_labels(coco, "a.png").tolist()
    [[0, 1], [1, 0]]
    """
    matches = [img for img in coco["images"] if img["file_name"] == file_name]
    if not matches:
        raise KeyError(f"{file_name} is not among the images of the annotation file")
    info = matches[0]
    height, width = int(info["height"]), int(info["width"])
    labels = np.zeros((height, width), np.int32)
    for i, ann in enumerate(a for a in coco["annotations"] if a["image_id"] == info["id"]):
        labels[segmentation_mask(ann["segmentation"], height, width)] = i + 1
    return labels
