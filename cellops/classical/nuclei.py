"""Nucleus segmentation and per-nucleus shape of fluorescence nuclear-stain images.

Nothing here is tuned to a particular dataset. Every size derives from the typical nucleus diameter, which by
default (``nucleus_diameter_px="auto"``) is measured in each image from its scale-space blob response
(:func:`cellops.classical.scale.estimate_blob_diameter`); give it in pixels, or in micrometres with the pixel
size, to override. A measured diameter is checked on the nuclei the first segmentation separated and, when
they disagree by more than a fifth (dense clusters bias the blob response), the image is segmented again
at theirs. The foreground threshold is global (Otsu) or local (above a rolling-ball-like background, for
uneven light or dim nuclei beside bright ones); ``threshold="auto"`` picks one per image from the measured
background unevenness and the share of nuclei a global threshold would lose. Touching nuclei are split by a
marker-controlled watershed on shape and intensity (:func:`split_touching`); objects larger than one and a
half nuclei are split again along the dark seams inside them (confluent clusters, where the foreground is one
sheet and shape alone cannot part it), and fragments with no brightness peak of their own go back to their
neighbours. Each nucleus is then cut at a quarter of its own peak contrast, so a dim nucleus keeps its whole
area and a loose foreground (a bright neighbour's halo, a blotchy background) does not widen it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import filters, measure, morphology, segmentation

from cellops.classical.common import to_gray_float
from cellops.errors import ImageInputError
from cellops.classical.scale import (ThresholdingMethod, background_map, choose_threshold, estimate_blob_diameter,
                                    noise_sigma, normalise_intensity)
from cellops.units import check_pixel_size_um

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NucleusParams:
    """Every tunable of the nucleus segmenter (set from the YAML config).

    Attributes
    ----------
    nucleus_diameter_px : typical nucleus diameter in pixels, or ``"auto"`` to measure it in each image;
        smoothing, minimum size, local-threshold window and the watershed marker depth scale with it.
    threshold : ``"otsu"`` (global), ``"local"`` (Gaussian-weighted, for uneven illumination or dim nuclei
        beside bright ones) or ``"auto"`` (chosen per image, see :func:`cellops.classical.scale.choose_threshold`).
    smoothing_fraction : Gaussian sigma as a fraction of the diameter.
    min_area_fraction : smallest object kept, as a fraction of the typical nucleus area.
    marker_depth_fraction : h of the h-maxima, as a fraction of the diameter: a neck between two nuclei must
        be at least this much narrower than their radii for them to be split.
    exclude_border : drop nuclei touching the image border (their shape is cut).
    nucleus_diameter_um : the diameter in micrometres; when given it replaces ``nucleus_diameter_px`` and is
        converted with each file's own pixel size (:meth:`at_pixel_size`), so one config serves every objective.
    pixel_size_um : the pixel size used for files whose metadata has none (a file's own pixel size wins).
    """

    nucleus_diameter_px: float | str = "auto"
    threshold: str = "auto"
    smoothing_fraction: float = 0.04
    min_area_fraction: float = 0.15
    marker_depth_fraction: float = 0.06
    exclude_border: bool = False
    nucleus_diameter_um: float | None = None
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        if self.pixel_size_um is not None:
            check_pixel_size_um(self.pixel_size_um, source="pixel_size_um")
        if self.nucleus_diameter_um is not None and not self.nucleus_diameter_um > 0:
            raise ValueError(f"nucleus_diameter_um must be positive, got {self.nucleus_diameter_um}")
        if isinstance(self.nucleus_diameter_px, str) and self.nucleus_diameter_px != "auto":
            raise ValueError(f"nucleus_diameter_px must be a number of pixels or 'auto', got {self.nucleus_diameter_px!r}")
        if self.nucleus_diameter_um is None and self.diameter_px is not None and self.diameter_px <= 0:
            raise ValueError(f"the nucleus diameter must be positive, got {self.diameter_px} px")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"unknown threshold method {self.threshold!r}: expected one of {list(THRESHOLDS)}")

    @property
    def diameter_px(self) -> float | None:
        """The typical nucleus diameter in pixels, from micrometres when those are given; None for ``"auto"``.

        >>> NucleusParams(nucleus_diameter_um=12.0, pixel_size_um=0.4).diameter_px
        30.0
        >>> NucleusParams().diameter_px is None
        True

        Raises
        ------
        ImageInputError
            If the diameter is in µm and no pixel size is known (neither the file's nor ``pixel_size_um``).
        """
        if self.nucleus_diameter_um is not None:
            if self.pixel_size_um is None:
                raise ImageInputError(f"nucleus_diameter_um is {self.nucleus_diameter_um:g} µm but the image states "
                                      "no pixel size: give pixel_size_um in the config (or nucleus_diameter_px)")
            return nucleus_diameter_in_pixels(self.nucleus_diameter_um, self.pixel_size_um)
        if self.nucleus_diameter_px == "auto":
            return None
        return float(self.nucleus_diameter_px)


    def at_pixel_size(self, pixel_size_um: float | None) -> "NucleusParams":
        """These settings for a file whose pixel size is ``pixel_size_um`` (None: the file states none, and
        ``pixel_size_um`` of the config, if any, is used).

        >>> NucleusParams(nucleus_diameter_um=12.0).at_pixel_size(0.4).diameter_px
        30.0
        >>> NucleusParams(nucleus_diameter_um=12.0, pixel_size_um=0.2).at_pixel_size(None).diameter_px
        60.0
        """
        return self if pixel_size_um is None else replace(self, pixel_size_um=pixel_size_um)


THRESHOLDS = ("auto", "otsu", "local")


@dataclass(frozen=True)
class NucleusSegmentation:
    """Labels of one image and the settings it was segmented with (measured or given).

    Attributes
    ----------
    labels : int32 instance labels, 0 background.
    diameter_px : nucleus diameter used.
    diameter_source : ``"measured"`` or ``"given"``.
    threshold : ``"otsu"`` or ``"local"``: the method used.
    threshold_reason : why (the measurements behind an automatic choice, or ``"given"``).
    """

    labels: np.ndarray
    diameter_px: float
    diameter_source: str
    threshold: str
    threshold_reason: str


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
    return segment_nuclei_with_settings(image, params).labels


def segment_nuclei_with_settings(image: np.ndarray, params: NucleusParams = NucleusParams()) -> NucleusSegmentation:
    """:func:`segment_nuclei`, also returning the diameter and threshold used and why (logged too).

    The diameter is measured twice when it is not given: first from the scale-space blob response, which
    dense clusters bias (a cluster answers like one big blob, or its seams make the nuclei look smaller),
    then from the nuclei this first segmentation separated (the median equivalent diameter of the convex
    ones); when the two differ by more than a fifth, the image is segmented again at the second.

    Examples
    --------
    >>> from cellops.synthetic.nuclei import generate_nuclei_image
    >>> sample = generate_nuclei_image("Control", (256, 256), seed=3, n_nuclei=12, diameter_scale=0.5)
    >>> result = segment_nuclei_with_settings(sample.image)
    >>> result.diameter_source, 10 < result.diameter_px < 18
    ('measured', True)
    """
    gray = normalise_intensity(to_gray_float(image))
    blobs = None
    if params.diameter_px is None:
        blobs = estimate_blob_diameter(gray)
        diameter, source = blobs.diameter_px, "measured"
    else:
        diameter, source = params.diameter_px, "given"
    labels, method, reason = _segment_at(gray, diameter, params, blobs)
    if source == "measured":
        separated = separated_diameter(labels)
        if separated is not None and abs(np.log(separated / diameter)) > np.log(_REMEASURE_RATIO):
            log.info("nucleus diameter %.1f px from the blob response, %.1f px from the separated nuclei: "
                     "segmenting again", diameter, separated)
            diameter = separated
            labels, method, reason = _segment_at(gray, diameter, params, None)
    if params.exclude_border:
        labels = segmentation.clear_border(labels)
    relabelled, _, _ = segmentation.relabel_sequential(labels)
    log.info("nucleus diameter %.1f px (%s), %s: %d nuclei", diameter, source,
             method if reason == "given" else reason, int(relabelled.max()))
    return NucleusSegmentation(labels=relabelled.astype(np.int32), diameter_px=float(diameter),
                               diameter_source=source, threshold=method, threshold_reason=reason)


#: A second segmentation when the blob-response diameter and the separated nuclei's differ by more than this.
_REMEASURE_RATIO = 1.2
#: Each nucleus keeps the pixels brighter than this share of its own peak contrast (above the background):
#: its edge, whatever its brightness, so a dim nucleus is as whole as a bright one.
_EDGE_FRACTION = 0.25


def separated_diameter(labels: np.ndarray, min_objects: int = 8) -> float | None:
    """Median equivalent diameter of the convex (solidity >= 0.9, so likely single) objects of ``labels``;
    None when fewer than ``min_objects`` are.

    >>> yy, xx = np.mgrid[:100, :100]
    >>> labels = sum((i + 1) * (((yy - 12 - 25 * (i // 4)) ** 2 + (xx - 12 - 25 * (i % 4)) ** 2) <= 10 ** 2)
    ...              for i in range(16))
    >>> round(separated_diameter(labels.astype(np.int32)))
    20
    """
    regions = measure.regionprops(labels)
    sizes = [r.equivalent_diameter_area for r in regions if r.area >= 9 and r.solidity >= 0.9]
    return float(np.median(sizes)) if len(sizes) >= min_objects else None


def _segment_at(gray: np.ndarray, diameter: float, params: NucleusParams, blobs) -> tuple[np.ndarray, str, str]:
    """Labels of ``gray`` (normalised) at nucleus ``diameter``, the threshold method used and why."""
    sigma = max(0.5, params.smoothing_fraction * diameter)
    smooth = cv2.GaussianBlur(gray, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    method, reason = params.threshold, "given"
    if method == "auto":
        if blobs is None:
            blobs = estimate_blob_diameter(gray, min_diameter=diameter / 2, max_diameter=diameter * 2)
        choice: ThresholdingMethod = choose_threshold(smooth, blobs)
        method, reason = choice.method, choice.describe()
    background = background_map(smooth, diameter)
    noise = noise_sigma(gray) / (2 * np.sqrt(np.pi) * sigma)
    if method == "otsu":
        foreground = smooth > filters.threshold_otsu(smooth)
    else:
        foreground = _local_foreground(smooth, diameter, noise, background)
    min_area = params.min_area_fraction * np.pi * (diameter / 2) ** 2
    foreground = ndimage.binary_fill_holes(morphology.remove_small_objects(foreground, max_size=int(min_area)))
    labels = split_touching(foreground, smooth, diameter, params.marker_depth_fraction)
    labels = _split_on_seams(labels, gray, background, diameter, noise)
    labels = _trim_to_own_edge(labels, smooth - background, diameter, 4.0 * noise)
    labels = morphology.remove_small_objects(labels, max_size=int(min_area))
    return labels, method, reason


def split_touching(foreground: np.ndarray, smooth: np.ndarray, diameter: float, depth_fraction: float) -> np.ndarray:
    """Marker-controlled watershed that separates touching nuclei.

    Markers are the h-maxima (h = ``depth_fraction * diameter``) of the smoothed distance transform of each
    nucleus's *core*: the foreground pixels brighter than their surroundings at half a nucleus diameter. The
    dim seam between two touching nuclei is not core, so the cores come apart even where blur has fused the
    foreground; the distance transform keeps one marker per convex nucleus, even an elongated one. The
    flooded landscape adds the foreground's distance transform (shape) to the intensity (the seam), so the
    borders follow both.
    """
    core = foreground & (smooth > cv2.GaussianBlur(smooth, (0, 0), 0.5 * diameter, borderType=cv2.BORDER_REFLECT))
    core_distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(core), max(0.5, 0.05 * diameter))
    markers = measure.label(morphology.h_maxima(core_distance, depth_fraction * diameter))
    bright = float(np.percentile(smooth[foreground], 90)) if foreground.any() else 1.0
    landscape = 2 * ndimage.distance_transform_edt(foreground) / diameter + smooth / max(bright, 1e-6)
    return segmentation.watershed(-landscape, markers, mask=foreground)


#: Seams are looked for on the image smoothed at this fraction of the diameter (chromatin texture gone, the
#: dark line between two touching nuclei kept).
_SEAM_SMOOTHING = 0.1
#: A seam is a dip of at least this much in log contrast (about 11 %) below the dimmer of the two nuclei.
_SEAM_DEPTH = 0.12
#: Only objects at least this many typical nucleus areas are searched for seams.
_SEAM_MIN_AREA = 1.5
#: ... and only objects this far from convex: one nucleus, however elongated (PDA film), is convex; nuclei merged
#: into one object leave notches between them.
_SEAM_MAX_SOLIDITY = 0.86
#: A piece of the shape split smaller than this share of a typical nucleus, with no brightness peak of its own
#: and touching another piece, is a fragment of its neighbour.
_FRAGMENT_AREA = 0.7


def _split_on_seams(labels: np.ndarray, gray: np.ndarray, background: np.ndarray, diameter: float,
                    noise: float) -> np.ndarray:
    """``labels`` with every large object split again along the dark seams inside it, then the fragments the
    shape split left (small pieces with no brightness peak of their own) merged into their neighbours.

    Why: in a confluent cluster the foreground is one sheet and its distance transform has no necks, so the
    shape markers of :func:`split_touching` fall anywhere; the nuclei still show as brightness peaks parted by
    dark seams. Only large objects are re-split (an ordinary touching pair keeps the shape split, which is
    what separates overlapping nuclei with no seam), and only at seams deeper than :data:`_SEAM_DEPTH`, so
    chromatin texture and a large flat nucleus stay whole.
    """
    if labels.max() == 0:
        return labels
    smooth = cv2.GaussianBlur(gray, (0, 0), max(0.7, _SEAM_SMOOTHING * diameter), borderType=cv2.BORDER_REFLECT)
    relief = np.log(np.maximum(smooth - background, 2.0 * noise))
    typical = np.pi * (diameter / 2) ** 2
    out = labels.copy()
    next_label = int(labels.max()) + 1
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        mask = labels[box] == index
        if mask.sum() < _SEAM_MIN_AREA * typical or _solidity(mask) >= _SEAM_MAX_SOLIDITY:
            continue
        crop = np.where(mask, relief[box], relief[box][mask].min() - 1)
        markers, count = ndimage.label(morphology.h_maxima(crop, _SEAM_DEPTH) & mask)
        if count < 2:
            continue
        pieces = segmentation.watershed(-crop, markers, mask=mask)
        for piece in range(2, count + 1):
            out[box][pieces == piece] = next_label
            next_label += 1
    return _merge_fragments(out, relief, typical)


def _solidity(mask: np.ndarray) -> float:
    """Area of a one-object mask over the area of its convex hull (1 for a convex object).

    >>> square = np.zeros((12, 12), bool); square[2:10, 2:10] = True
    >>> _solidity(square)
    1.0
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    hull_area = cv2.contourArea(hull)
    outline_area = sum(cv2.contourArea(c) for c in contours)
    return float(min(1.0, outline_area / hull_area)) if hull_area > 0 else 1.0


def _merge_fragments(labels: np.ndarray, relief: np.ndarray, typical: float) -> np.ndarray:
    """Pieces smaller than :data:`_FRAGMENT_AREA` typical nuclei that touch another piece and hold no peak of
    ``relief`` (an h-maximum, h = :data:`_SEAM_DEPTH`) handed to their neighbours by a watershed on ``relief``.
    The peaks are searched only in the clusters that hold such a piece (the h-maxima of a whole large image
    take seconds)."""
    foreground = labels > 0
    index = np.arange(1, int(labels.max()) + 1)
    highest = ndimage.grey_dilation(labels, size=3)
    lowest = ndimage.grey_erosion(np.where(foreground, labels, np.iinfo(np.int32).max).astype(np.int32), size=3)
    beside_another = foreground & ((highest > labels) | (lowest < labels))
    candidates = np.zeros(len(index) + 1, bool)
    candidates[1:] = ((ndimage.maximum(beside_another, labels, index) > 0)
                      & (ndimage.sum(foreground, labels, index) < _FRAGMENT_AREA * typical))
    if not candidates.any():
        return labels
    clusters, _ = ndimage.label(foreground)
    boxes = ndimage.find_objects(clusters)
    peaks = np.zeros(labels.shape, bool)
    for cluster in np.unique(clusters[candidates[labels]]):
        box = boxes[cluster - 1]
        inside = clusters[box] == cluster
        crop = np.where(inside, relief[box], relief[box][inside].min() - 1)
        peaks[box] |= morphology.h_maxima(crop, _SEAM_DEPTH).astype(bool) & inside
    drop = candidates.copy()
    drop[1:] &= ndimage.maximum(peaks, labels, index) == 0
    if not drop.any():
        return labels
    return segmentation.watershed(-relief, np.where(drop[labels], 0, labels), mask=foreground)


def _trim_to_own_edge(labels: np.ndarray, contrast: np.ndarray, diameter: float, floor: float) -> np.ndarray:
    """Each nucleus cut at :data:`_EDGE_FRACTION` of its own peak contrast (and above ``floor``), its own holes
    filled: a loose foreground (a low global threshold, the halo of a bright neighbour) no longer widens it, and
    the seams between the nuclei of a cluster are not filled in as holes of the cluster."""
    if labels.max() == 0:
        return labels
    peak_map = cv2.GaussianBlur(contrast.astype(np.float32), (0, 0), max(0.5, 0.08 * diameter))
    peaks = np.zeros(int(labels.max()) + 1, np.float32)
    index = np.arange(1, labels.max() + 1)
    peaks[1:] = ndimage.maximum(peak_map, labels, index)
    keep = (labels > 0) & (contrast > np.maximum(floor, _EDGE_FRACTION * peaks[labels]))
    return _fill_own_holes(np.where(keep, labels, 0))


def _fill_own_holes(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every hole enclosed by one nucleus filled with it; a gap enclosed by several (the seams
    between the nuclei of a confluent cluster) stays background.

    >>> labels = np.zeros((7, 11), np.int32)
    >>> labels[1:6, 1:4] = 1; labels[1:6, 4:7] = 2; labels[1:6, 8:10] = 3
    >>> labels[3, 2] = 0; labels[3, 4] = 0  # a hole in nucleus 1, and one on the seam of 1 and 2
    >>> filled = _fill_own_holes(labels)
    >>> int(filled[3, 2]), int(filled[3, 4])
    (1, 0)
    """
    foreground = labels > 0
    holes, count = ndimage.label(ndimage.binary_fill_holes(foreground) & ~foreground)
    if count == 0:
        return labels
    index = np.arange(1, count + 1)
    highest = ndimage.maximum(ndimage.grey_dilation(labels, size=3), holes, index)
    marked = np.where(foreground, labels, np.iinfo(np.int32).max).astype(np.int32)
    lowest = ndimage.minimum(ndimage.grey_erosion(marked, size=3), holes, index)
    fill = np.zeros(count + 1, labels.dtype)
    single = highest == lowest
    fill[1:][single] = highest[single]
    return np.where(holes > 0, fill[holes], labels)


def _local_foreground(smooth: np.ndarray, diameter: float, noise: float, background: np.ndarray) -> np.ndarray:
    """Pixels clearly above the local background (a rolling-ball-like opening larger than the nuclei), by four
    noise sigmas, four sigmas of the background's own roughness and 5 % of the brightest contrast: uneven
    light and dim nuclei next to bright ones both pass, a blotchy background does not; each nucleus is then
    cut at its own edge (:func:`_trim_to_own_edge`)."""
    contrast = smooth - background
    floor = max(4.0 * noise, 0.05 * float(np.percentile(contrast, 99.5)))
    # A blotchy background leaves bumps of a nucleus's size above the background map: the floor also clears
    # four robust sigmas of what lies below it (about the pixel noise on an even background).
    step = max(1, min(contrast.shape) // 512)
    sample = contrast[::step, ::step]
    below = sample[sample <= floor]
    if below.size > 100:
        centre = float(np.median(below))
        floor = max(floor, centre + 4.0 * 1.4826 * float(np.median(np.abs(below - centre))))
    return contrast > floor


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
    aspect ratio, circularity, solidity, eccentricity, Feret diameters, centroid, whether it touches the image
    border (and mean intensity).

    Examples
    --------
    >>> labels = np.zeros((40, 40), np.int32)
    >>> labels[10:20, 5:35] = 1
    >>> row = nucleus_table(labels).iloc[0]
    >>> round(float(row.aspect_ratio_ellipse), 1), round(float(row.aspect_ratio_rectangle), 1)
    (3.0, 3.0)
    """
    rows = []
    height, width = labels.shape
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
            # A nucleus cut by the border has a cut shape: flagged, kept or dropped by ``exclude_border``.
            "touches_border": bool(region.bbox[0] == 0 or region.bbox[1] == 0 or region.bbox[2] == height
                                   or region.bbox[3] == width),
        }
        if image is not None:
            row["mean_intensity"] = float(region.intensity_mean)
        rows.append(row)
    return pd.DataFrame(rows)
