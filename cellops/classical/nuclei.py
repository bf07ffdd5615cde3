"""Nucleus segmentation and per-nucleus shape of fluorescence nuclear-stain images.

Nothing here is tuned to a particular dataset: the foreground threshold adapts to each image (Otsu, or a
local threshold for uneven illumination), and every size is derived from ``nucleus_diameter_px``, the typical
nucleus diameter in pixels (give it in micrometres with ``pixel_size_um`` through
:func:`nucleus_diameter_in_pixels`). Touching nuclei are split by a marker-controlled watershed on the
distance transform, markers being the h-maxima of the smoothed distance (one per convex nucleus, even an
elongated one).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import filters, measure, morphology, segmentation

from cellops.classical.common import to_gray_float


@dataclass(frozen=True)
class NucleusParams:
    """Every tunable of the nucleus segmenter (set from the YAML config).

    Attributes
    ----------
    nucleus_diameter_px : typical nucleus diameter in pixels; smoothing, minimum size and the watershed
        marker depth scale with it.
    threshold : ``"otsu"`` (global) or ``"local"`` (Gaussian-weighted, for uneven illumination).
    smoothing_fraction : Gaussian sigma as a fraction of the diameter.
    min_area_fraction : smallest object kept, as a fraction of the typical nucleus area.
    marker_depth_fraction : h of the h-maxima, as a fraction of the diameter: a neck between two nuclei must
        be at least this much narrower than their radii for them to be split.
    exclude_border : drop nuclei touching the image border (their shape is cut).
    nucleus_diameter_um, pixel_size_um : the diameter in micrometres and the pixel size; when given, they
        replace ``nucleus_diameter_px`` (see :attr:`diameter_px`).
    """

    nucleus_diameter_px: float = 30.0
    threshold: str = "otsu"
    smoothing_fraction: float = 0.04
    min_area_fraction: float = 0.15
    marker_depth_fraction: float = 0.06
    exclude_border: bool = False
    nucleus_diameter_um: float | None = None
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        if (self.nucleus_diameter_um is None) != (self.pixel_size_um is None):
            raise ValueError("give nucleus_diameter_um and pixel_size_um together (or neither, and nucleus_diameter_px)")
        if self.diameter_px <= 0:
            raise ValueError(f"the nucleus diameter must be positive, got {self.diameter_px} px")

    @property
    def diameter_px(self) -> float:
        """The typical nucleus diameter in pixels, from micrometres when those are given.

        >>> NucleusParams(nucleus_diameter_um=12.0, pixel_size_um=0.4).diameter_px
        30.0
        """
        if self.nucleus_diameter_um is not None and self.pixel_size_um is not None:
            return nucleus_diameter_in_pixels(self.nucleus_diameter_um, self.pixel_size_um)
        return float(self.nucleus_diameter_px)


def nucleus_diameter_in_pixels(diameter_um: float, pixel_size_um: float) -> float:
    """Convert a nucleus diameter from micrometres to pixels.

    >>> nucleus_diameter_in_pixels(12.0, 0.4)
    30.0
    """
    if pixel_size_um <= 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
    return diameter_um / pixel_size_um


def segment_nuclei(image: np.ndarray, params: NucleusParams = NucleusParams()) -> np.ndarray:
    """Instance label image (int32, 0 background) of the nuclei in a fluorescence image.

    Examples
    --------
    >>> from cellops.synthetic.nuclei import generate_nuclei_image
    >>> sample = generate_nuclei_image("Control", (160, 160), seed=3, n_nuclei=6)
    >>> labels = segment_nuclei(sample.image)
    >>> labels.shape == sample.image.shape, bool(labels.max() >= 4)
    (True, True)
    """
    gray = to_gray_float(image)
    diameter = params.diameter_px
    smooth = ndimage.gaussian_filter(gray, max(0.5, params.smoothing_fraction * diameter))
    if params.threshold == "otsu":
        foreground = smooth > filters.threshold_otsu(smooth)
    elif params.threshold == "local":
        block = int(4 * diameter) | 1
        foreground = smooth > filters.threshold_local(smooth, block_size=block, method="gaussian") + 0.0
        foreground &= smooth > filters.threshold_otsu(smooth) * 0.5
    else:
        raise ValueError(f"unknown threshold method {params.threshold!r}: expected 'otsu' or 'local'")
    min_area = params.min_area_fraction * np.pi * (diameter / 2) ** 2
    foreground = ndimage.binary_fill_holes(morphology.remove_small_objects(foreground, max_size=int(min_area)))
    distance = ndimage.distance_transform_edt(foreground)
    distance = ndimage.gaussian_filter(distance, max(0.5, 0.05 * diameter))
    markers = measure.label(morphology.h_maxima(distance, params.marker_depth_fraction * diameter))
    labels = segmentation.watershed(-distance, markers, mask=foreground)
    labels = morphology.remove_small_objects(labels, max_size=int(min_area))
    if params.exclude_border:
        labels = segmentation.clear_border(labels)
    relabelled, _, _ = segmentation.relabel_sequential(labels)
    return relabelled.astype(np.int32)


def _min_feret(coords: np.ndarray) -> float:
    """Smallest caliper width of a point set: the minimum over convex-hull edges of the farthest point."""
    hull = cv2.convexHull(coords.astype(np.float32)).reshape(-1, 2)
    if len(hull) < 3:
        return 0.0
    widths = []
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):
        edge = b - a
        length = float(np.hypot(*edge))
        if length == 0:
            continue
        widths.append(float(np.max(np.abs(np.cross(edge, hull - a)) / length)))
    return min(widths) if widths else 0.0


def nucleus_table(labels: np.ndarray, image: np.ndarray | None = None) -> pd.DataFrame:
    """One row per nucleus: area, perimeter, fitted-ellipse axes and aspect ratio, minimum-area-rectangle
    aspect ratio, circularity, solidity, eccentricity, Feret diameters, centroid (and mean intensity).

    Examples
    --------
    >>> labels = np.zeros((40, 40), np.int32)
    >>> labels[10:20, 5:35] = 1
    >>> row = nucleus_table(labels).iloc[0]
    >>> round(float(row.aspect_ratio_ellipse), 1), round(float(row.aspect_ratio_rectangle), 1)
    (3.0, 3.0)
    """
    rows = []
    for region in measure.regionprops(labels, intensity_image=image):
        # Pixel corners, not centres: a 1-pixel-wide object has width 1, as in Fiji.
        corners = np.concatenate([region.coords[:, ::-1] + d for d in ([0, 0], [1, 0], [0, 1], [1, 1])])
        corners = corners.astype(np.float32)
        _, (rw, rh), _ = cv2.minAreaRect(corners)
        major, minor = region.axis_major_length, region.axis_minor_length
        perimeter = region.perimeter
        row = {
            "label": region.label,
            "area": float(region.area),
            "perimeter": float(perimeter),
            "major_axis": float(major),
            "minor_axis": float(minor),
            "aspect_ratio_ellipse": float(major / minor) if minor > 0 else float("inf"),
            "aspect_ratio_rectangle": float(max(rw, rh) / min(rw, rh)) if min(rw, rh) > 0 else float("inf"),
            "circularity": float(4 * np.pi * region.area / perimeter**2) if perimeter > 0 else 0.0,
            "solidity": float(region.solidity),
            "eccentricity": float(region.eccentricity),
            "feret_max": float(region.feret_diameter_max),
            "feret_min": _min_feret(corners),
            "orientation_rad": float(region.orientation),
            "centroid_y": float(region.centroid[0]),
            "centroid_x": float(region.centroid[1]),
        }
        if image is not None:
            row["mean_intensity"] = float(region.intensity_mean)
        rows.append(row)
    return pd.DataFrame(rows)
