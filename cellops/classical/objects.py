"""Operations on binary and label images done object by object, on each object's own crop, or in one pass over
the pixels: the same results as the whole-image scikit-image and SciPy functions they replace, at a fraction of
their cost on large fields (where a few hundred objects cover a small share of a 2048 x 2048 image).

* :func:`fill_holes`, :func:`remove_small_objects`, :func:`remove_small_labels`, :func:`relabel_in_order`:
  ``scipy.ndimage.binary_fill_holes``, ``skimage.morphology.remove_small_objects`` (4-connected) and
  ``skimage.segmentation.relabel_sequential``, through OpenCV's connected components and look-up tables.
* :func:`reconstruct_by_dilation`, :func:`h_maxima`, :func:`h_maxima_by_object`: ``skimage.morphology``'s
  reconstruction and h-maxima by repeated 3 x 3 dilations, object by object (scikit-image sorts every pixel).
* :func:`label_maximum`, :func:`touching_other_label`: per-label maxima and the pixels beside another label.
* :func:`object_shapes`: ``skimage.measure.regionprops`` area, perimeter, inertia axes, orientation,
  eccentricity, solidity and maximum Feret diameter, with the minimum-area rectangle and minimum Feret diameter
  of the pixel corners, from one loop over the objects' crops (convex hulls from each row's end pixels).
* :func:`map_in_threads`: work that releases the GIL, in OpenCV's number of threads.

Every result is computed in a fixed order: the same with one thread or several.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cv2
import numpy as np
from scipy import ndimage

T = TypeVar("T")
R = TypeVar("R")


def map_in_threads(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[function(item) for item in items]``, in as many threads as OpenCV uses (``cv2.setNumThreads``; one:
    no threads), results in the order of ``items``: for work that releases the GIL (OpenCV, NumPy on large
    arrays).

    >>> map_in_threads(abs, [-2, 3, -4])
    [2, 3, 4]
    """
    workers = min(len(items), max(1, cv2.getNumThreads()))
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: the background regions (4-connected) that do not reach the image border.

    The same as ``scipy.ndimage.binary_fill_holes(mask)``.

    Examples
    --------
    >>> ring = np.zeros((5, 5), bool); ring[1:4, 1:4] = True; ring[2, 2] = False
    >>> bool(fill_holes(ring)[2, 2]), int(fill_holes(ring).sum())
    (True, 9)
    """
    background = (~mask).astype(np.uint8)
    count, regions, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4, ltype=cv2.CV_32S)
    left, top, width, height = (stats[:, i] for i in range(4))
    reaches_border = (left == 0) | (top == 0) | (left + width == mask.shape[1]) | (top + height == mask.shape[0])
    is_hole = ~reaches_border
    is_hole[0] = False  # label 0 of the background image is the mask itself
    return mask | is_hole[regions]


def remove_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` without its 4-connected objects of at most ``max_size`` pixels.

    The same as ``skimage.morphology.remove_small_objects(mask, max_size=max_size)``.

    Examples
    --------
    >>> mask = np.zeros((6, 6), bool); mask[0, 0] = True; mask[2:5, 2:5] = True
    >>> int(remove_small_objects(mask, 1).sum())
    9
    """
    count, regions, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4,
                                                                ltype=cv2.CV_32S)
    keep = stats[:, cv2.CC_STAT_AREA] > max_size
    keep[0] = False
    return keep[regions]


def remove_small_labels(labels: np.ndarray, max_size: int) -> np.ndarray:
    """``labels`` with the labels of at most ``max_size`` pixels set to 0.

    The same as ``skimage.morphology.remove_small_objects(labels, max_size=max_size)`` on a label image.

    >>> remove_small_labels(np.array([[1, 1, 2], [0, 0, 0]], np.int32), 1).tolist()
    [[1, 1, 0], [0, 0, 0]]
    """
    sizes = np.bincount(labels.ravel())
    return np.where(sizes[labels] <= max_size, 0, labels).astype(labels.dtype, copy=False)


def relabel_in_order(labels: np.ndarray) -> np.ndarray:
    """``labels`` (non-negative) renumbered 1, 2, ... in the order of their values, as int32:
    ``skimage.segmentation.relabel_sequential(labels)[0]`` through one look-up table.

    >>> relabel_in_order(np.array([[0, 7, 7], [3, 0, 12]])).tolist()
    [[0, 2, 2], [1, 0, 3]]
    """
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    table = (np.cumsum(present) * present).astype(np.int32)
    return table[labels]


def label_maximum(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The maximum of ``values`` over each label: entry ``i`` for label ``i`` (entry 0 and absent labels: -inf).

    The same as ``scipy.ndimage.maximum(values, labels, index)`` for every label, in one pass over the labelled
    pixels.

    >>> label_maximum(np.array([[1.0, 5.0], [3.0, 2.0]]), np.array([[1, 1], [0, 2]])).tolist()
    [-inf, 5.0, 2.0]
    """
    inside = labels > 0
    peaks = np.full(int(labels.max(initial=0)) + 1, -np.inf, np.float64)
    np.maximum.at(peaks, labels[inside], values[inside].astype(np.float64))
    return peaks


def touching_other_label(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label with a different non-zero label among their eight neighbours.

    >>> touching_other_label(np.array([[1, 1, 0, 2], [1, 1, 0, 0], [0, 0, 0, 3], [0, 0, 3, 3]])).astype(int).tolist()
    [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    >>> touching_other_label(np.array([[1, 2], [0, 0]])).astype(int).tolist()
    [[1, 1], [0, 0]]
    """
    # Labels as float32 (exact below 2 ** 24): OpenCV's fast 3 x 3 max and min filters do not take int32.
    as_float = labels.astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    highest = cv2.dilate(as_float, kernel)
    lowest = cv2.erode(np.where(labels > 0, as_float, np.float32(np.inf)), kernel)
    return (labels > 0) & ((highest > as_float) | (lowest < as_float))


def reconstruct_by_dilation(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Morphological reconstruction by dilation (8-connected) of ``seed`` under ``mask`` (``seed <= mask``): the
    seed dilated again and again, capped by the mask, until it no longer changes.

    The same as ``skimage.morphology.reconstruction(seed, mask, method="dilation")``, which sorts every pixel
    twice: on the small crops of single objects, where the dilation settles in a few tens of steps, these
    steps are several times faster.

    Examples
    --------
    >>> from skimage.morphology import reconstruction
    >>> mask = np.array([[0, 3, 3, 0, 5], [0, 3, 1, 0, 5], [2, 2, 1, 0, 0]], float)
    >>> seed = np.where(mask == 3, 2.0, 0.0)
    >>> reconstruct_by_dilation(seed, mask).tolist()
    [[0.0, 2.0, 2.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0, 0.0], [2.0, 2.0, 1.0, 0.0, 0.0]]
    >>> bool((reconstruct_by_dilation(seed, mask) == reconstruction(seed, mask)).all())
    True
    """
    kernel = np.ones((3, 3), np.uint8)
    current = np.minimum(seed, mask)
    grown = np.empty_like(current)
    while True:
        # Two steps between checks: a step on a settled image changes nothing, and checking costs a step.
        for _ in range(2):
            cv2.dilate(current, kernel, dst=grown)
            np.minimum(grown, mask, out=grown)
            current, grown = grown, current
        if np.array_equal(current, grown):
            return current


def h_maxima(image: np.ndarray, h: float) -> np.ndarray:
    """``skimage.morphology.h_maxima(image, h)`` (8-connected) as a boolean mask, through
    :func:`reconstruct_by_dilation`: the maxima at least ``h`` above every path to a higher one, and the global
    maximum.

    >>> image = np.array([[0, 1, 0, 0, 0], [0, 0, 0, 3, 0], [0, 2.5, 2, 2.4, 0]])
    >>> h_maxima(image, 1.5).astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    """
    image = np.asarray(image, np.float64)
    if h > np.ptp(image):
        return np.zeros(image.shape, bool)
    # As scikit-image: h and a hair more, so that rounding never leaves the seed above image - h.
    seed = image - h - 2 * np.finfo(np.float64).resolution * np.abs(image)
    return image - reconstruct_by_dilation(seed, image) >= h


def h_maxima_by_object(image: np.ndarray, h: float) -> np.ndarray:
    """The h-maxima (maxima at least ``h`` above every path to a higher one) of a non-negative image that is zero
    between its objects, computed on each object's crop.

    The same as ``skimage.morphology.h_maxima(image, h)`` (8-connected): a path from one object to another
    passes through zero, so what an object's reconstruction receives from the others is at most zero, and only
    when some other object rises above ``h`` (the global-maximum rule).

    Examples
    --------
    >>> from skimage.morphology import h_maxima as whole_image_h_maxima
    >>> yy, xx = np.mgrid[:40, :60]
    >>> image = np.zeros((40, 60))
    >>> for cy, cx, r in ((10, 10, 6), (12, 22, 7), (30, 45, 5), (30, 10, 1)):
    ...     image = np.maximum(image, r - np.hypot(yy - cy, xx - cx))
    >>> bool((h_maxima_by_object(image, 1.5) == whole_image_h_maxima(image, 1.5).astype(bool)).all())
    True
    """
    image = np.asarray(image, np.float64)
    if image.min() < 0 or not (image == 0).any():
        return h_maxima(image, h)
    maxima = np.zeros(image.shape, bool)
    if h > np.ptp(image):
        return maxima
    count, objects, stats, _ = cv2.connectedComponentsWithStats((image > 0).astype(np.uint8), connectivity=8,
                                                                ltype=cv2.CV_32S)
    peaks = label_maximum(image, objects)[1:]
    # What reaches each object from the others through the zero level: the highest other object's peak less h,
    # capped at zero.
    order = np.argsort(-peaks, kind="stable")
    highest_other = np.full(len(peaks), peaks[order[0]])
    highest_other[order[0]] = peaks[order[1]] if len(peaks) > 1 else -np.inf
    inflow = np.minimum(highest_other - h, 0.0)
    height, width = image.shape
    for index in range(1, count):
        left, top, w, ht = stats[index, :4]
        box = (slice(max(0, top - 1), min(height, top + ht + 1)), slice(max(0, left - 1), min(width, left + w + 1)))
        inside = objects[box] == index
        crop = np.where(inside, image[box], 0.0)
        seed = crop - h - 2 * np.finfo(np.float64).resolution * np.abs(crop)
        rebuilt = np.maximum(reconstruct_by_dilation(seed, crop), inflow[index - 1])
        maxima[box] |= inside & (crop - rebuilt >= h)
    return maxima


#: The corners of a pixel as offsets from its index: pixel (row r, column c) covers [r, r + 1] x [c, c + 1].
_CORNERS = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
#: The mid-points of a pixel's edges (scikit-image's convex hull of pixels: ``offset_coordinates``), (row, col).
_EDGE_MIDPOINTS = np.array([[-0.5, 0], [0.5, 0], [0, -0.5], [0, 0.5]])
_PERIMETER_KERNEL = np.array([[10, 2, 10], [2, 1, 2], [10, 2, 10]], np.float32)
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def convex_image(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask``'s frame whose centre lies in the convex hull of the mid-points of the edges of its
    pixels, borders included: ``skimage.morphology.convex_hull_image(mask)``.

    >>> mask = np.zeros((5, 5), bool); mask[1, 1] = mask[3, 3] = mask[1, 3] = True
    >>> convex_image(mask).astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    """
    first, last = convex_rows(mask)
    columns = np.arange(mask.shape[1])
    return (columns >= first[:, None]) & (columns <= last[:, None])


def convex_rows(mask: np.ndarray, ends: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``mask``'s frame, the first and last column of :func:`convex_image` (first > last: none), from
    where each row crosses the hull; ``ends``: :func:`row_ends` of ``mask`` when already known.

    The hull's vertices are pixel edge mid-points (halves), so a pixel centre on the hull's outline lies on it
    exactly, and counts as inside (as in scikit-image's ``grid_points_in_poly``).

    >>> first, last = convex_rows(np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], bool))
    >>> first.tolist(), last.tolist()
    ([1, 2, 3], [1, 2, 3])
    """
    ends = row_ends(mask) if ends is None else ends
    hull = cv2.convexHull(_around(ends, _EDGE_MIDPOINTS)).reshape(-1, 2).astype(np.float64)
    start, stop = hull, np.roll(hull, -1, axis=0)
    rows = np.arange(mask.shape[0], dtype=np.float64)[:, None]
    low_row, high_row = np.minimum(start[:, 0], stop[:, 0]), np.maximum(start[:, 0], stop[:, 0])
    crosses = (rows >= low_row) & (rows <= high_row) & (high_row > low_row)
    rise = np.where(high_row > low_row, stop[:, 0] - start[:, 0], 1.0)
    at = start[:, 1] + (rows - start[:, 0]) * (stop[:, 1] - start[:, 1]) / rise
    left = np.where(crosses, at, np.inf).min(axis=1)
    right = np.where(crosses, at, -np.inf).max(axis=1)
    # A hair of tolerance for the division: an exact crossing of a pixel centre stays inside.
    first = np.maximum(np.ceil(left - 1e-9), 0)
    last = np.minimum(np.floor(right + 1e-9), mask.shape[1] - 1)
    empty = ~np.isfinite(left) | (first > last)
    return np.where(empty, 1, first).astype(np.int64), np.where(empty, 0, last).astype(np.int64)


def row_ends(mask: np.ndarray) -> np.ndarray:
    """(row, col) of the first and last pixel of ``mask`` in each of its rows: the pixels that can lie on its
    convex hull (along a row, any linear function is largest at one end).

    >>> row_ends(np.array([[0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)).tolist()
    [[0, 1], [2, 0], [0, 3], [2, 0]]
    """
    occupied = np.flatnonzero(mask.any(axis=1))
    first = mask[occupied].argmax(axis=1)
    last = mask.shape[1] - 1 - mask[occupied, ::-1].argmax(axis=1)
    return np.concatenate([np.stack([occupied, first], axis=1), np.stack([occupied, last], axis=1)])


def _around(pixels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Every pixel position plus every offset, as float32 points (what OpenCV's convex hull takes)."""
    return (pixels[:, None, :].astype(np.float32) + offsets.astype(np.float32)).reshape(-1, 2)


def perimeter_4(mask: np.ndarray) -> float:
    """``skimage.measure.perimeter(mask, 4)``: the border pixels (those with a 4-neighbour outside), each weighted
    by how its border neighbours run (1, sqrt(2) or their mean).

    >>> square = np.zeros((6, 6), bool); square[1:5, 1:5] = True
    >>> perimeter_4(square)
    12.0
    """
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    border = padded - cv2.erode(padded, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    codes = cv2.filter2D(border.astype(np.float32), -1, _PERIMETER_KERNEL, borderType=cv2.BORDER_CONSTANT)
    histogram = np.bincount(codes.astype(np.int64).ravel(), minlength=50)[:50]
    return float(histogram @ _PERIMETER_WEIGHTS)


def min_feret(hull: np.ndarray) -> float:
    """Smallest caliper width of a convex polygon ((n, 2) vertices in order): over its edges, the largest distance
    of a vertex from the edge's line, the smallest.

    >>> min_feret(np.array([[0, 0], [4, 0], [4, 2], [0, 2]], np.float32))
    2.0
    """
    hull = np.asarray(hull, np.float64).reshape(-1, 2)
    if len(hull) < 3:
        return 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    valid = lengths > 0
    edges, starts, lengths = edges[valid], hull[valid], lengths[valid]
    if len(edges) == 0:
        return 0.0
    offsets = hull[None, :, :] - starts[:, None, :]
    cross = np.abs(edges[:, None, 0] * offsets[:, :, 1] - edges[:, None, 1] * offsets[:, :, 0])
    return float(np.min(cross.max(axis=1) / lengths))


def object_shapes(labels: np.ndarray, image: np.ndarray | None = None, *, full: bool = True) -> dict[str, np.ndarray]:
    """Per-object measurements of a label image, one entry per label present, in label order.

    Always: ``label``, ``area``, ``solidity`` (area over the pixel count of :func:`convex_image`, as
    scikit-image's regionprops). With ``full``: ``perimeter`` (:func:`perimeter_4`), ``major_axis`` and
    ``minor_axis`` (4 sqrt of the eigenvalues of the inertia tensor), ``eccentricity``, ``orientation`` (radians,
    scikit-image's convention), ``centroid_y``/``centroid_x``, ``feret_max`` (of the convex image's outline),
    ``rect_long``/``rect_short`` (sides of the minimum-area rectangle around the pixel corners), ``feret_min``
    (smallest caliper width of those corners), ``bbox`` (min row, min col, max row + 1, max col + 1) and, with
    ``image``, ``mean_intensity``.

    Examples
    --------
    >>> labels = np.zeros((40, 40), np.int32); labels[10:20, 5:35] = 1
    >>> shapes = object_shapes(labels)
    >>> float(shapes["area"][0]), float(shapes["rect_long"][0]), float(shapes["rect_short"][0])
    (300.0, 30.0, 10.0)
    """
    boxes = ndimage.find_objects(labels)
    present = [i for i, box in enumerate(boxes, start=1) if box is not None]
    columns: dict[str, list] = {name: [] for name in ("label", "area", "solidity")}
    if full:
        for name in ("perimeter", "major_axis", "minor_axis", "eccentricity", "orientation", "centroid_y",
                     "centroid_x", "feret_max", "rect_long", "rect_short", "feret_min", "bbox"):
            columns[name] = []
        if image is not None:
            columns["mean_intensity"] = []
    for index in present:
        box = boxes[index - 1]
        mask = labels[box] == index
        area = int(np.count_nonzero(mask))
        ends = row_ends(mask)
        first, last = convex_rows(mask, ends)
        columns["label"].append(index)
        columns["area"].append(float(area))
        columns["solidity"].append(area / int(np.sum(last - first + 1)))
        if not full:
            continue
        top, left = box[0].start, box[1].start
        moments = cv2.moments(mask.astype(np.uint8), binaryImage=True)
        # scikit-image's inertia tensor [[a, b], [b, c]]: a the column variance, c the row variance.
        a, b, c = moments["mu20"] / area, -moments["mu11"] / area, moments["mu02"] / area
        spread = np.sqrt(((a - c) / 2) ** 2 + b**2)
        major = max((a + c) / 2 + spread, 0.0)
        minor = max((a + c) / 2 - spread, 0.0)
        columns["major_axis"].append(4 * np.sqrt(major))
        columns["minor_axis"].append(4 * np.sqrt(minor))
        columns["eccentricity"].append(0.0 if major == 0 else float(np.sqrt(1 - minor / major)))
        if a - c == 0:
            orientation = np.pi / 4 if b < 0 else -np.pi / 4
        else:
            orientation = 0.5 * np.arctan2(-2 * b, c - a)
        columns["orientation"].append(float(orientation))
        columns["centroid_y"].append(top + moments["m01"] / area)
        columns["centroid_x"].append(left + moments["m10"] / area)
        columns["perimeter"].append(perimeter_4(mask))
        columns["feret_max"].append(_feret_max(first, last))
        # Pixel corners, not centres: a 1-pixel-wide object has width 1, as in Fiji.
        hull = cv2.convexHull(_around(ends, _CORNERS) + np.float32([top, left]))
        _, (rw, rh), _ = cv2.minAreaRect(hull)
        columns["rect_long"].append(float(max(rw, rh)))
        columns["rect_short"].append(float(min(rw, rh)))
        columns["feret_min"].append(min_feret(hull.reshape(-1, 2)))
        columns["bbox"].append((top, left, box[0].stop, box[1].stop))
        if image is not None:
            columns["mean_intensity"].append(float(np.mean(image[box][mask])))
    return {name: np.asarray(values) for name, values in columns.items()}


def _feret_max(first: np.ndarray, last: np.ndarray) -> float:
    """Largest distance between two points of the outline (marching squares at 0.5) of a convex image given by
    its rows' first and last columns (:func:`convex_rows`), as scikit-image's regionprops ``feret_diameter_max``.
    The outline's points are the mid-points of the edges between the image's pixels and the background, and its
    convex hull is that of the mid-points of all the pixels' edges, where the farthest pair lies.

    >>> round(_feret_max(np.zeros(3, int), np.full(3, 3)), 3)  # a 3 x 4 block: from (0, -0.5) to (2, 3.5)
    4.472
    """
    rows = np.flatnonzero(first <= last)
    ends = np.concatenate([np.stack([rows, first[rows]], axis=1), np.stack([rows, last[rows]], axis=1)])
    hull = cv2.convexHull(_around(ends, _EDGE_MIDPOINTS)).reshape(-1, 2).astype(np.float64)
    gaps = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt(np.max(gaps[..., 0] ** 2 + gaps[..., 1] ** 2)))
