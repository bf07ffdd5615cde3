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
from skimage import filters, segmentation

from cellops.classical.common import to_gray_float
from cellops.classical.objects import (fill_holes, h_maxima, h_maxima_by_object, label_maximum, map_in_threads,
                                       object_shapes, relabel_in_order, remove_small_labels, remove_small_objects, touching_other_label)
from cellops.errors import ImageInputError
from cellops.classical.scale import (STRONG_SHARE, BlobScale, ThresholdingMethod, background_map, choose_threshold,
                                    estimate_blob_diameter, noise_sigma, normalise_intensity, weighted_median)
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
        blobs = measure_blobs(gray)
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
    relabelled = relabel_in_order(labels)
    log.info("nucleus diameter %.1f px (%s), %s: %d nuclei", diameter, source,
             method if reason == "given" else reason, int(relabelled.max()))
    return NucleusSegmentation(labels=relabelled, diameter_px=float(diameter),
                               diameter_source=source, threshold=method, threshold_reason=reason)


#: Images with at least this many pixels have the nucleus diameter measured on 2 x 2 tiles of
#: :data:`_SAMPLE_SIDE` px (at most half of the image): the blob response of a whole 2048 x 2048 field takes a
#: second, and a few hundred nuclei tell their typical size as well as a few thousand.
_SAMPLE_MIN_PIXELS = 8 * 512 * 512
_SAMPLE_SIDE = 512
#: ... unless the tiles hold fewer blobs than this (a sparse field): then the whole image is measured.
_SAMPLE_MIN_BLOBS = 40
#: The percentiles :func:`cellops.classical.scale.estimate_blob_diameter` normalises its input to (its
#: :func:`cellops.classical.scale.normalise_intensity`), and the weakest response it counts on that scale.
_BLOB_NORMALISATION = (0.5, 99.9)
_BLOB_MIN_CONTRAST = 0.02


def measure_blobs(gray: np.ndarray) -> BlobScale:
    """The blobs and typical nucleus diameter (:func:`cellops.classical.scale.estimate_blob_diameter`) of a
    normalised image; one of :data:`_SAMPLE_MIN_PIXELS` or more is measured on 2 x 2 tiles of
    :data:`_SAMPLE_SIDE` px at the centres of its quadrants, their blobs pooled.

    The blob measurement normalises each tile on its own: the responses are brought back to the image's scale
    (times the tile's normalised range), so that the bumps of a tile of background do not count as nuclei; the
    pooled blobs then count as on the whole image (those under :data:`cellops.classical.scale.STRONG_SHARE` of
    the strong ones dropped, response-weighted median). Too few blobs in the tiles (a sparse field): the whole
    image is measured.

    Examples
    --------
    >>> yy, xx = np.mgrid[:1600, :1600]
    >>> disks = ((yy % 80 - 40) ** 2 + (xx % 80 - 40) ** 2 <= 12 ** 2).astype(np.float32)
    >>> blobs = measure_blobs(disks)
    >>> round(blobs.diameter_px), blobs.n_blobs >= 4 * 36
    (24, True)
    """
    height, width = gray.shape
    if gray.size < _SAMPLE_MIN_PIXELS or min(height, width) < 2 * _SAMPLE_SIDE:
        return estimate_blob_diameter(gray)
    corners = [(top, left) for top in (height // 4 - _SAMPLE_SIDE // 2, 3 * height // 4 - _SAMPLE_SIDE // 2)
               for left in (width // 4 - _SAMPLE_SIDE // 2, 3 * width // 4 - _SAMPLE_SIDE // 2)]

    def tile_blobs(corner: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        top, left = corner
        tile = gray[top:top + _SAMPLE_SIDE, left:left + _SAMPLE_SIDE]
        low, high = np.percentile(tile.astype(np.float32), _BLOB_NORMALISATION)
        try:
            blobs = estimate_blob_diameter(tile)
        except ValueError:  # nothing but background in this tile
            return None
        responses = blobs.responses * float(high - low)
        kept = responses >= _BLOB_MIN_CONTRAST
        return blobs.centres[kept] + (top, left), blobs.diameters[kept], responses[kept]

    # The tiles in threads (OpenCV and NumPy release the GIL), pooled in a fixed order.
    pooled = [found for found in map_in_threads(tile_blobs, corners) if found is not None]
    if sum(len(p[1]) for p in pooled) < _SAMPLE_MIN_BLOBS:
        return estimate_blob_diameter(gray)
    centres, diameters, responses = (np.concatenate([p[i] for p in pooled]) for i in range(3))
    strong = responses >= STRONG_SHARE * np.percentile(responses, 90)
    return BlobScale(diameter_px=weighted_median(diameters[strong], responses[strong]), n_blobs=int(strong.sum()),
                     centres=centres[strong], diameters=diameters[strong], responses=responses[strong])


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
    shapes = object_shapes(labels, full=False)
    single = (shapes["area"] >= 9) & (shapes["solidity"] >= 0.9)
    sizes = np.sqrt(4 * shapes["area"][single] / np.pi)
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
    foreground = fill_holes(remove_small_objects(foreground, int(min_area)))
    labels = split_touching(foreground, smooth, diameter, params.marker_depth_fraction)
    labels = _split_on_seams(labels, gray, background, diameter, noise)
    labels = _trim_to_own_edge(labels, smooth - background, diameter, 4.0 * noise)
    labels = remove_small_labels(labels, int(min_area))
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
    core_distance = cv2.GaussianBlur(_distance_to_background(core), (0, 0), max(0.5, 0.05 * diameter),
                                     borderType=cv2.BORDER_REFLECT)
    markers, _ = ndimage.label(h_maxima_by_object(core_distance, depth_fraction * diameter),
                               structure=np.ones((3, 3), bool))
    bright = float(np.percentile(smooth[foreground], 90)) if foreground.any() else 1.0
    landscape = 2 * _distance_to_background(foreground) / diameter + smooth / max(bright, 1e-6)
    return segmentation.watershed(-landscape, markers, mask=foreground)


def _distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel of ``mask`` to the nearest pixel outside it (float64): OpenCV's exact
    transform, equal to ``scipy.ndimage.distance_transform_edt`` to float32 precision, several times faster.

    >>> _distance_to_background(np.array([[0, 1, 1, 1, 1]], bool)).tolist()
    [[0.0, 1.0, 2.0, 3.0, 4.0]]
    """
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance.astype(np.float64)


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
    areas = np.bincount(labels.ravel())
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or areas[index] < _SEAM_MIN_AREA * typical:
            continue
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        mask = labels[box] == index
        if mask.sum() < _SEAM_MIN_AREA * typical or _solidity(mask) >= _SEAM_MAX_SOLIDITY:
            continue
        crop = np.where(mask, relief[box], relief[box][mask].min() - 1)
        markers, count = ndimage.label(h_maxima(crop, _SEAM_DEPTH) & mask)
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
    count = int(labels.max()) + 1
    beside_another = np.bincount(labels[touching_other_label(labels)], minlength=count) > 0
    candidates = beside_another & (np.bincount(labels.ravel(), minlength=count) < _FRAGMENT_AREA * typical)
    candidates[0] = False
    if not candidates.any():
        return labels
    clusters, _ = ndimage.label(foreground)
    boxes = ndimage.find_objects(clusters)
    with_candidates = np.unique(clusters[candidates[labels]])
    peaks = np.zeros(labels.shape, bool)
    for cluster in with_candidates:
        box = boxes[cluster - 1]
        inside = clusters[box] == cluster
        crop = np.where(inside, relief[box], relief[box][inside].min() - 1)
        peaks[box] |= h_maxima(crop, _SEAM_DEPTH) & inside
    drop = candidates & (np.bincount(labels[peaks], minlength=count) == 0)
    if not drop.any():
        return labels
    # The watershed of each cluster that loses a piece, on its own crop: the clusters are apart in the mask, so
    # this is the whole-image watershed, where the clusters that lose nothing keep their labels.
    out = labels.copy()
    for cluster in with_candidates:
        box = boxes[cluster - 1]
        inside = clusters[box] == cluster
        pieces = np.where(inside, labels[box], 0)
        if not drop[pieces].any():
            continue
        flooded = segmentation.watershed(-relief[box], np.where(drop[pieces], 0, pieces), mask=inside)
        out[box] = np.where(inside, flooded, out[box])
    return out


def _trim_to_own_edge(labels: np.ndarray, contrast: np.ndarray, diameter: float, floor: float) -> np.ndarray:
    """Each nucleus cut at :data:`_EDGE_FRACTION` of its own peak contrast (and above ``floor``), its own holes
    filled: a loose foreground (a low global threshold, the halo of a bright neighbour) no longer widens it, and
    the seams between the nuclei of a cluster are not filled in as holes of the cluster."""
    if labels.max() == 0:
        return labels
    peak_map = cv2.GaussianBlur(contrast.astype(np.float32), (0, 0), max(0.5, 0.08 * diameter))
    peaks = label_maximum(peak_map, labels).astype(np.float32)
    peaks[0] = 0
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
    count, regions, stats, _ = cv2.connectedComponentsWithStats((~foreground).astype(np.uint8), connectivity=4,
                                                                ltype=cv2.CV_32S)
    left, top, width, height = (stats[:, i] for i in range(4))
    # A hole: a background region (4-connected) that does not reach the image border.
    is_hole = (left > 0) & (top > 0) & (left + width < labels.shape[1]) & (top + height < labels.shape[0])
    is_hole[0] = False
    if not is_hole.any():
        return labels
    # The labels around each hole pixel (3 x 3: a hole pixel is never on the image border), highest and lowest.
    rows, cols = np.nonzero(is_hole[regions])
    hole = regions[rows, cols]
    around = np.stack([labels[rows + dy, cols + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]).astype(np.int64)
    highest = np.zeros(count, np.int64)
    np.maximum.at(highest, hole, around.max(axis=0))
    lowest = np.full(count, np.iinfo(np.int64).max)
    np.minimum.at(lowest, hole, np.where(around > 0, around, np.iinfo(np.int64).max).min(axis=0))
    fill = np.where(is_hole & (highest == lowest), highest, 0).astype(labels.dtype)
    out = labels.copy()
    out[rows, cols] = fill[hole]
    return out


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


def nucleus_table(labels: np.ndarray, image: np.ndarray | None = None) -> pd.DataFrame:
    """One row per nucleus: area, perimeter, fitted-ellipse axes and aspect ratio, minimum-area-rectangle
    aspect ratio, circularity, solidity, eccentricity, Feret diameters, centroid, whether it touches the image
    border (and mean intensity).

    The measurements are scikit-image's regionprops (area, perimeter, inertia axes, orientation, eccentricity,
    solidity, maximum Feret diameter), taken object by object on crops (:func:`cellops.classical.objects.object_shapes`);
    the rectangle and the minimum Feret diameter are those of the pixel corners.

    Examples
    --------
    >>> labels = np.zeros((40, 40), np.int32)
    >>> labels[10:20, 5:35] = 1
    >>> row = nucleus_table(labels).iloc[0]
    >>> round(float(row.aspect_ratio_ellipse), 1), round(float(row.aspect_ratio_rectangle), 1)
    (3.0, 3.0)
    """
    shapes = object_shapes(labels, image)
    if len(shapes["label"]) == 0:
        return pd.DataFrame()
    height, width = labels.shape
    area, perimeter = shapes["area"], shapes["perimeter"]
    major, minor = shapes["major_axis"], shapes["minor_axis"]
    rect_long, rect_short = shapes["rect_long"], shapes["rect_short"]
    bbox = shapes["bbox"]
    with np.errstate(divide="ignore", invalid="ignore"):
        table = pd.DataFrame({
            "label": shapes["label"],
            "area": area,
            "perimeter": perimeter,
            "major_axis": major,
            "minor_axis": minor,
            "aspect_ratio_ellipse": np.where(minor > 0, major / np.where(minor > 0, minor, 1), np.inf),
            "aspect_ratio_rectangle": np.where(rect_short > 0, rect_long / np.where(rect_short > 0, rect_short, 1),
                                               np.inf),
            "circularity": np.where(perimeter > 0, 4 * np.pi * area / np.where(perimeter > 0, perimeter, 1) ** 2, 0.0),
            "solidity": shapes["solidity"],
            "eccentricity": shapes["eccentricity"],
            "feret_max": shapes["feret_max"],
            "feret_min": shapes["feret_min"],
            "orientation_rad": shapes["orientation"],
            "centroid_y": shapes["centroid_y"],
            "centroid_x": shapes["centroid_x"],
            # A nucleus cut by the border has a cut shape: flagged, kept or dropped by ``exclude_border``.
            "touches_border": (bbox[:, 0] == 0) | (bbox[:, 1] == 0) | (bbox[:, 2] == height) | (bbox[:, 3] == width),
        })
    if image is not None:
        table["mean_intensity"] = shapes["mean_intensity"]
    return table
