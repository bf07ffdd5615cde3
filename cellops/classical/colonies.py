"""hiPSC colony recognition in phase-contrast images with OpenCV.

Colonies are textured and haloed, the medium around them is smooth: Canny edges are dense inside and on
the rim of a colony and sparse elsewhere. Blur, Canny, dilation (merging a colony's edges into one
region), hole filling, erosion (undoing the dilation) and external contours give one outline per colony;
objects smaller than ``min_area`` (single cells, debris) are dropped. Each outline is then measured:
upright and rotated boxes, convex hull, moments (area, centroid, Hu), perimeter, solidity, circularity,
equivalent diameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from cellops.classical.common import to_uint8_gray


@dataclass(frozen=True)
class ColonyParams:
    """Every tunable of the colony detector (all set from the YAML config).

    Attributes
    ----------
    blur_sigma : Gaussian blur before Canny, in pixels.
    canny_low, canny_high : Canny hysteresis thresholds on the 8-bit gradient magnitude.
    kernel_size : side of the elliptical structuring element for dilation and erosion.
    dilate_iterations, erode_iterations : how far edges are grown into regions and shrunk back.
    min_area : smallest colony kept, in pixels (single cells and debris are smaller).
    """

    blur_sigma: float = 2.0
    canny_low: float = 30.0
    canny_high: float = 80.0
    kernel_size: int = 5
    dilate_iterations: int = 2
    # More erosion than dilation: the edges found lie on the halo, just outside the colony.
    erode_iterations: int = 5
    min_area: float = 1500.0


@dataclass
class ColonyResult:
    """Outlines, label image and per-colony table of one image.

    Attributes
    ----------
    contours : one (N, 1, 2) int32 OpenCV contour per colony, in the table's order.
    labels : int32 image, colony ``i`` (1-based, table row ``i - 1``) labelled ``i``.
    table : one row per colony (see :func:`colony_properties`).
    """

    contours: list[np.ndarray]
    labels: np.ndarray
    table: pd.DataFrame


def detect_colony_contours(image: np.ndarray, params: ColonyParams = ColonyParams()) -> list[np.ndarray]:
    """External contours of the colonies in a phase-contrast image, largest first."""
    gray = to_uint8_gray(image)
    blurred = cv2.GaussianBlur(gray, (0, 0), params.blur_sigma)
    edges = cv2.Canny(blurred, params.canny_low, params.canny_high)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (params.kernel_size, params.kernel_size))
    grown = cv2.dilate(edges, kernel, iterations=params.dilate_iterations)
    outer, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(grown)
    cv2.drawContours(filled, outer, -1, 255, thickness=cv2.FILLED)
    shrunk = cv2.erode(filled, kernel, iterations=params.erode_iterations)
    contours, _ = cv2.findContours(shrunk, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    kept = [c for c in contours if cv2.contourArea(c) >= params.min_area]
    return sorted(kept, key=cv2.contourArea, reverse=True)


def colony_properties(contour: np.ndarray) -> dict[str, float]:
    """Shape measures of one colony outline (pixel units).

    Examples
    --------
    >>> square = np.array([[[0, 0]], [[0, 9]], [[9, 9]], [[9, 0]]], np.int32)
    >>> p = colony_properties(square)
    >>> p["area"], p["bbox_width"], p["solidity"], round(p["circularity"], 3)
    (81.0, 10, 1.0, 0.785)
    """
    moments = cv2.moments(contour)
    area = float(moments["m00"])
    perimeter = float(cv2.arcLength(contour, closed=True))
    x, y, w, h = cv2.boundingRect(contour)
    (rcx, rcy), (rw, rh), angle = cv2.minAreaRect(contour)
    hull = cv2.convexHull(contour)
    hull_area = float(cv2.contourArea(hull))
    hu = cv2.HuMoments(moments).ravel()
    row: dict[str, float] = {
        "area": area,
        "centroid_x": moments["m10"] / area if area else float(x + w / 2),
        "centroid_y": moments["m01"] / area if area else float(y + h / 2),
        "perimeter": perimeter,
        "bbox_x": x, "bbox_y": y, "bbox_width": w, "bbox_height": h,
        "rotated_center_x": rcx, "rotated_center_y": rcy,
        "rotated_width": max(rw, rh), "rotated_height": min(rw, rh), "rotated_angle": angle,
        "hull_area": hull_area,
        "hull_vertices": int(len(hull)),
        "solidity": area / hull_area if hull_area else 0.0,
        "circularity": 4 * np.pi * area / perimeter**2 if perimeter else 0.0,
        "equivalent_diameter": float(np.sqrt(4 * area / np.pi)),
        "aspect_ratio": max(rw, rh) / min(rw, rh) if min(rw, rh) else float("inf"),
    }
    row.update({f"hu_{i + 1}": float(v) for i, v in enumerate(hu)})
    return row


def measure_colonies(image: np.ndarray, params: ColonyParams = ColonyParams()) -> ColonyResult:
    """Detect and measure the colonies of one phase-contrast image.

    Examples
    --------
    >>> from cellops.synthetic.colonies import generate_colony_image
    >>> sample = generate_colony_image((256, 256), seed=2, n_colonies=(2, 2), radius=(40, 50))
    >>> result = measure_colonies(sample.image)
    >>> len(result.contours), int(result.labels.max())
    (2, 2)
    """
    contours = detect_colony_contours(image, params)
    labels = np.zeros(image.shape[:2], np.int32)
    for i, contour in enumerate(contours, start=1):
        cv2.drawContours(labels, [contour], -1, i, thickness=cv2.FILLED)
    rows = [{"colony": i, **colony_properties(c)} for i, c in enumerate(contours, start=1)]
    table = pd.DataFrame(rows, columns=["colony", *colony_properties(_UNIT_SQUARE).keys()])
    return ColonyResult(contours=contours, labels=labels, table=table)


_UNIT_SQUARE = np.array([[[0, 0]], [[0, 1]], [[1, 1]], [[1, 0]]], np.int32)


def colony_overlay(image: np.ndarray, contours: list[np.ndarray], thickness: int = 2) -> np.ndarray:
    """The lab's figure: upright box red, rotated box green, convex hull white, contour blue (RGB)."""
    rgb = cv2.cvtColor(to_uint8_gray(image), cv2.COLOR_GRAY2RGB)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        cv2.rectangle(rgb, (x, y), (x + w - 1, y + h - 1), (255, 0, 0), thickness)
        box = np.round(cv2.boxPoints(cv2.minAreaRect(contour))).astype(np.int32)
        cv2.drawContours(rgb, [box], -1, (0, 255, 0), thickness)
        cv2.drawContours(rgb, [cv2.convexHull(contour)], -1, (255, 255, 255), thickness)
        cv2.drawContours(rgb, [contour], -1, (0, 0, 255), thickness)
    return rgb
