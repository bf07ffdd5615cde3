"""hiPSC colony recognition in phase-contrast images with OpenCV.

Colonies are textured and haloed, the medium around them is smooth: Canny edges are dense inside and on
the rim of a colony and sparse elsewhere. Blur, Canny, dilation (merging a colony's edges into one
region), hole filling, erosion (undoing the dilation) and external contours give one outline per colony;
objects smaller than ``min_area`` (single cells, debris) are dropped. Each outline is then measured:
upright and rotated boxes, convex hull, moments (area, centroid, Hu), perimeter, solidity, circularity,
equivalent diameter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage
from skimage import filters, graph, segmentation

from cellops.classical.common import to_uint8_gray
from cellops.classical.scale import weighted_median
from cellops.errors import ImageInputError
from cellops.units import check_pixel_size_um

log = logging.getLogger(__name__)


AUTO = "auto"


@dataclass(frozen=True)
class ColonyParams:
    """Every tunable of the colony detector (all set from the YAML config); ``"auto"`` derives a value from the
    image (see :func:`colony_settings`), a number overrides it.

    Attributes
    ----------
    colony_diameter_px : typical colony width (twice its largest inscribed radius: touching colonies do not
        inflate it); by default measured from a first, scale-free detection (the area-weighted median over what
        it finds), so 4x and 10x images both work.
    blur_sigma : Gaussian blur before Canny, in pixels (auto: 1/60 of the colony diameter, 0.8 to 3).
    canny_low, canny_high : Canny hysteresis thresholds on the 8-bit gradient magnitude (auto: Otsu's
        threshold of the gradient magnitude, which separates textured colonies from smooth medium, and half).
    kernel_size : side of the elliptical structuring element for dilation and erosion.
    dilate_iterations, erode_iterations : how far edges are grown into regions and shrunk back (auto: in
        proportion to the colony diameter).
    min_area : smallest colony kept, in pixels (auto: a fifth of the area of a disk as wide as the typical
        colony; single cells and debris are far smaller).
    split_touching : separate touching colonies by a watershed on the distance transform.
    refine_edges : move each outline onto the strongest intensity edge nearby (the colony's rim, between its
        dark border and the bright halo), by a watershed on the gradient magnitude.
    exclude_border : drop colonies touching the image border (the table flags them either way).
    min_colony_diameter_px : a measured width below this means no colony was seen (only single cells and
        debris): the 10x sizes are used then.
    colony_diameter_um, min_area_um2 : the colony width in µm and the smallest colony in µm²; when given they
        replace ``colony_diameter_px`` and ``min_area`` and are converted with each file's own pixel size
        (:meth:`at_pixel_size`), so one config serves a 4x and a 10x objective.
    pixel_size_um : the pixel size used for files whose metadata has none (a file's own pixel size wins).
    """

    colony_diameter_px: float | str = AUTO
    blur_sigma: float | str = AUTO
    canny_low: float | str = AUTO
    canny_high: float | str = AUTO
    kernel_size: int = 5
    dilate_iterations: int | str = AUTO
    # More erosion than dilation: the edges found lie on the halo, just outside the colony.
    erode_iterations: int | str = AUTO
    min_area: float | str = AUTO
    split_touching: bool = True
    refine_edges: bool = True
    exclude_border: bool = False
    min_colony_diameter_px: float = 24.0
    colony_diameter_um: float | None = None
    min_area_um2: float | None = None
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        if self.pixel_size_um is not None:
            check_pixel_size_um(self.pixel_size_um, source="pixel_size_um")
        for name in ("colony_diameter_um", "min_area_um2"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("colony_diameter_px", "blur_sigma", "canny_low", "canny_high", "dilate_iterations",
                     "erode_iterations", "min_area"):
            value = getattr(self, name)
            if isinstance(value, str) and value != AUTO:
                raise ValueError(f"{name} must be a number or 'auto', got {value!r}")
            if not isinstance(value, str) and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")


    def at_pixel_size(self, pixel_size_um: float | None) -> "ColonyParams":
        """These settings in pixels for a file whose pixel size is ``pixel_size_um`` (None: the file states none,
        and ``pixel_size_um`` of the config, if any, is used): sizes in µm become pixels.

        >>> params = ColonyParams(colony_diameter_um=400.0, min_area_um2=10000.0).at_pixel_size(2.0)
        >>> params.colony_diameter_px, params.min_area
        (200.0, 2500.0)

        Raises
        ------
        ImageInputError
            If a size is in µm and no pixel size is known.
        """
        pixel_size = self.pixel_size_um if pixel_size_um is None else pixel_size_um
        if self.colony_diameter_um is None and self.min_area_um2 is None:
            return self if pixel_size == self.pixel_size_um else replace(self, pixel_size_um=pixel_size)
        if pixel_size is None:
            raise ImageInputError("colony sizes are given in µm (colony_diameter_um, min_area_um2) but the image "
                                  "states no pixel size: give pixel_size_um in the config (or the sizes in pixels)")
        size = check_pixel_size_um(pixel_size)
        return replace(self, pixel_size_um=size, colony_diameter_um=None, min_area_um2=None,
                       colony_diameter_px=(self.colony_diameter_px if self.colony_diameter_um is None
                                           else self.colony_diameter_um / size),
                       min_area=self.min_area if self.min_area_um2 is None else self.min_area_um2 / size**2)


#: The fixed 10x settings of the releases before sizes were measured: blur, Canny, dilation, fill, erosion and
#: an area filter only, no splitting or edge refinement (the steps the scikit-image peer of
#: ``benchmarks/colonies.py`` repeats).
FIXED_10X = ColonyParams(colony_diameter_px=80.0, blur_sigma=2.0, canny_low=30.0, canny_high=80.0,
                         dilate_iterations=2, erode_iterations=5, min_area=1500.0, split_touching=False,
                         refine_edges=False)

#: Colony width (px, twice the largest inscribed radius) the fixed defaults were designed for (10x, the built-in data).
REFERENCE_DIAMETER = 80.0


@dataclass(frozen=True)
class ColonySettings:
    """The numbers one image was analysed with, measured or given."""

    colony_diameter_px: float
    blur_sigma: float
    canny_low: float
    canny_high: float
    dilate_iterations: int
    erode_iterations: int
    min_area: float


@dataclass
class ColonyResult:
    """Outlines, label image and per-colony table of one image.

    Attributes
    ----------
    contours : one (N, 1, 2) int32 OpenCV contour per colony, in the table's order.
    labels : int32 image, colony ``i`` (1-based, table row ``i - 1``) labelled ``i``.
    table : one row per colony (see :func:`colony_properties`), with ``touches_border``.
    settings : the numbers used (see :class:`ColonySettings`).
    """

    contours: list[np.ndarray]
    labels: np.ndarray
    table: pd.DataFrame
    settings: ColonySettings | None = None


def _auto(value: float | str, default: float) -> float:
    return default if value == AUTO else float(value)


def _blurred(gray: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(gray, (0, 0), sigma) if sigma > 0 else gray


def _canny_gradients(blurred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int16 Sobel derivatives cv2.Canny computes (border replicated): ``cv2.Canny(dx, dy, low, high)`` on
    them gives its edges, and the thresholds are measured on them too (one pass instead of two)."""
    return (cv2.Sobel(blurred, cv2.CV_16S, 1, 0, borderType=cv2.BORDER_REPLICATE),
            cv2.Sobel(blurred, cv2.CV_16S, 0, 1, borderType=cv2.BORDER_REPLICATE))


def _canny_thresholds(blurred: np.ndarray,
                      gradients: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """Otsu's threshold of the L1 gradient magnitude (what cv2.Canny thresholds) on every other pixel of every
    other row, with OpenCV's default Sobel border (reflected), and half of it. ``gradients``: those of
    :func:`_canny_gradients` for ``blurred``, if already computed (their border rows and columns are redone)."""
    if gradients is None or min(blurred.shape) < 2:
        magnitude = _l1_gradient(blurred)[::2, ::2]
    else:
        dx, dy = gradients
        magnitude = np.abs(dx[::2, ::2]) + np.abs(dy[::2, ::2])  # at most 2 x 1020: int16 holds it
        # Only the outermost rows and columns depend on the border: a strip two pixels wide there gives them.
        rows, cols = blurred.shape
        magnitude[0] = _l1_gradient(blurred[:2])[0, ::2]
        magnitude[:, 0] = _l1_gradient(blurred[:, :2])[::2, 0]
        if (rows - 1) % 2 == 0:  # the last row is sampled
            magnitude[-1] = _l1_gradient(blurred[-2:])[-1, ::2]
        if (cols - 1) % 2 == 0:
            magnitude[:, -1] = _l1_gradient(blurred[:, -2:])[::2, -1]
    high = otsu_of_integers(magnitude)
    return 0.5 * high, high


def _l1_gradient(blurred: np.ndarray) -> np.ndarray:
    return np.abs(cv2.Sobel(blurred, cv2.CV_16S, 1, 0)) + np.abs(cv2.Sobel(blurred, cv2.CV_16S, 0, 1))


def otsu_of_integers(values: np.ndarray) -> float:
    """``skimage.filters.threshold_otsu`` of non-negative integers (its 256 bins over their range), from their
    counts: a histogram of the distinct values, weighted, instead of one of every value (several times faster).

    Examples
    --------
    >>> values = np.array([0, 1, 1, 2, 9, 10, 10, 11])
    >>> otsu_of_integers(values) == float(filters.threshold_otsu(values.astype(np.float32)))
    True
    """
    counts = np.bincount(values.ravel())
    levels = np.flatnonzero(counts)
    if len(levels) == 1:
        return float(levels[0])
    histogram, edges = np.histogram(levels.astype(np.float32), bins=256, weights=counts[levels])
    return float(filters.threshold_otsu(hist=(histogram, (edges[:-1] + edges[1:]) / 2.0)))


def _edge_regions(gray: np.ndarray, blur_sigma: float, low: float, high: float, kernel_size: int,
                  dilate_iterations: int, erode_iterations: int,
                  gradients: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Blur, Canny, dilation, hole filling, erosion: the uint8 mask of textured regions (``gradients``: those of
    :func:`_canny_gradients` for this blur, if already computed)."""
    dx, dy = _canny_gradients(_blurred(gray, blur_sigma)) if gradients is None else gradients
    edges = cv2.Canny(dx, dy, low, high)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    grown = cv2.dilate(edges, kernel, iterations=dilate_iterations)
    outer, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(grown)
    cv2.drawContours(filled, outer, -1, 255, thickness=cv2.FILLED)
    return cv2.erode(filled, kernel, iterations=erode_iterations)


def colony_settings(image: np.ndarray, params: ColonyParams = ColonyParams()) -> ColonySettings:
    """The numbers to analyse ``image`` with: the given ones, and for each ``"auto"`` one derived from the image.

    The colony diameter comes from a first detection with scale-free settings (a light blur, Otsu Canny
    thresholds, a small closing): the area-weighted median of the widths (twice the largest inscribed radius)
    of what it finds, so that colonies, which cover far more area than single cells and debris, set it, and
    touching colonies count at their own width. Every size then scales
    with that diameter relative to :data:`REFERENCE_DIAMETER`.

    Examples
    --------
    >>> from cellops.synthetic.colonies import generate_colony_image
    >>> at_4x = generate_colony_image((384, 384), seed=2, magnification=4.0)
    >>> at_10x = generate_colony_image((384, 384), seed=2)
    >>> bool(colony_settings(at_4x.image).min_area < colony_settings(at_10x.image).min_area / 3)
    True
    """
    return _settings_and_gradients(to_uint8_gray(image), params)[0]


def _settings_and_gradients(gray: np.ndarray, params: ColonyParams) -> tuple[ColonySettings, tuple | None]:
    """:func:`colony_settings` of a uint8 image, and the Canny gradients of the image at the measured blur when
    the thresholds were measured on them (None otherwise), for the detection to reuse."""
    params = params.at_pixel_size(None)  # sizes in µm become pixels (the config's pixel size), or a clear error
    if params.colony_diameter_px == AUTO:
        blurred = cv2.GaussianBlur(gray, (0, 0), 1.0)
        gradients = _canny_gradients(blurred)
        low, high = _canny_thresholds(blurred, gradients)
        regions = _edge_regions(gray, 1.0, low, high, 5, 1, 2, gradients)
        count, components, stats, _ = cv2.connectedComponentsWithStats((regions > 0).astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
        # Twice the largest inscribed radius: unlike the area, it does not grow when colonies touch.
        distance = cv2.distanceTransform((regions > 0).astype(np.uint8), cv2.DIST_L2, 5)
        widths = np.zeros(count - 1)
        for i in np.flatnonzero(areas >= 50):
            x, y, w, h = stats[i + 1, :4]
            box = components[y:y + h, x:x + w] == i + 1
            widths[i] = 2 * float(distance[y:y + h, x:x + w][box].max())
        big = areas >= 50
        diameter = weighted_median(widths[big], areas[big]) if big.any() else 0.0
        if diameter < params.min_colony_diameter_px:
            # Only single cells and debris (or nothing) were found: keep the 10x sizes, so they stay out.
            diameter = REFERENCE_DIAMETER
    else:
        diameter = float(params.colony_diameter_px)
    scale = diameter / REFERENCE_DIAMETER
    blur = _auto(params.blur_sigma, float(np.clip(2.0 * scale, 0.8, 3.0)))
    gradients = None
    if params.canny_low == AUTO or params.canny_high == AUTO:
        blurred = _blurred(gray, blur)
        gradients = _canny_gradients(blurred)
        low, high = _canny_thresholds(blurred, gradients)
    else:
        low, high = 0.0, 0.0
    return ColonySettings(
        colony_diameter_px=diameter, blur_sigma=blur,
        canny_low=_auto(params.canny_low, low), canny_high=_auto(params.canny_high, high),
        dilate_iterations=int(_auto(params.dilate_iterations, max(1, round(2 * scale)))),
        erode_iterations=int(_auto(params.erode_iterations, max(1, round(5 * scale)))),
        min_area=_auto(params.min_area, 0.2 * np.pi / 4 * diameter**2),
    ), gradients


def detect_colony_labels(image: np.ndarray, params: ColonyParams = ColonyParams()) -> tuple[np.ndarray, ColonySettings]:
    """Colony label image (int32, 0 background, largest colony first) and the settings used."""
    gray = to_uint8_gray(image)
    settings, gradients = _settings_and_gradients(gray, params)
    regions = _edge_regions(gray, settings.blur_sigma, settings.canny_low, settings.canny_high, params.kernel_size,
                            settings.dilate_iterations, settings.erode_iterations, gradients)
    # One labelling pass (OpenCV's is several times faster than scipy's) drops the specks and labels the rest.
    _, components, stats, _ = cv2.connectedComponentsWithStats(regions, connectivity=8)
    big = stats[:, cv2.CC_STAT_AREA] > int(settings.min_area * 0.5)
    big[0] = False
    radius = settings.colony_diameter_px / 2
    if params.split_touching:
        mask = big[components]
        seams = _bright_seams(gray, mask, components, stats, radius, 0.5 * settings.min_area)
        labels = split_touching_colonies(mask, radius, seams)
    else:
        labels = np.where(big[components], components, 0).astype(np.int32)
    if params.refine_edges and labels.max():
        labels = refine_colony_edges(gray, labels, inner_band=max(2, int(round(0.06 * radius))),
                                     outer_band=max(3, int(round(0.2 * radius))),
                                     opening=max(2, int(round(0.25 * radius))))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= settings.min_area)
    if params.exclude_border:
        keep = np.setdiff1d(keep, _border_labels(labels))
    order = keep[np.argsort(-sizes[keep], kind="stable")]
    lookup = np.zeros(len(sizes), np.int32)
    lookup[order] = np.arange(1, len(order) + 1)
    log.info("colony diameter %.0f px, blur %.1f, Canny %.0f/%.0f, min area %.0f px: %d colonies",
             settings.colony_diameter_px, settings.blur_sigma, settings.canny_low, settings.canny_high,
             settings.min_area, len(order))
    return lookup[labels], settings


#: How far above the colonies' typical line score a seam pixel scores (in robust standard deviations of the
#: scores inside the colonies: 2.5 found lines of texture at 4x, 3 to 4 work).
_SEAM_SCORE = 3.5
#: A seam found along part of its length only is followed to the mask's edge if the way there scores at
#: least this on average (2.5 cut textured 10x colonies, 3.5 left 4x chains whole; both still met the targets).
_SEAM_PATH_SCORE = 3.0


#: Regions at least this convex (area over convex-hull area) and at most this many typical colony areas are single
#: colonies: no seam is searched in them.
_SEAM_MAX_SOLIDITY = 0.95
_SEAM_SINGLE_AREA = 1.5


def _region_solidity(regions: np.ndarray, region: int, stats: np.ndarray) -> float:
    """Area over convex-hull area of connected component ``region`` (``stats``: its row of
    ``cv2.connectedComponentsWithStats``)."""
    x, y, w, h, area = (int(v) for v in stats[:5])
    own = (regions[y:y + h, x:x + w] == region).astype(np.uint8)
    contours, _ = cv2.findContours(own, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
    return float(area / hull_area) if hull_area > 0 else 1.0


def bright_seams(gray: np.ndarray, mask: np.ndarray, radius: float, min_area: float) -> np.ndarray:
    """Bright lines that cut a region of ``mask`` into colonies: where two colonies touch, each keeps its
    compacted edge and a thin line of halo shows between them. A seam is often no brighter per pixel than the
    texture inside a colony (at 4x it is a pixel wide), so the evidence is added up along lines: an oriented
    line filter (the mean along a line 0.4 colony widths long, 15 to 41 px, less the mean of two parallel
    lines beside it, the largest over 12 directions) scores each pixel, in robust standard deviations of the
    scores inside the colonies. A candidate is a piece of pixels that score high, a few pixels inside the
    mask (not its own outer halo) and at least a fifth of the colony radius long; it is a seam if, drawn out
    to the mask's edge, it leaves two parts of at least ``min_area`` pixels (a line of texture inside a colony
    cuts nothing off). A seam often scores high along part of its length only: a piece that cuts nothing
    off is followed along the best-scoring paths to the mask's edge on two sides (:func:`_extend_seam`) and
    tried again. Only regions that can hold two colonies (twice ``min_area``) are searched, each in its own
    box, so the cost follows the colonies' area. The seams come back a few pixels wide (a wide cut would
    dent the colonies beside it, and a dent gives the distance transform a second peak).

    Examples
    --------
    >>> from cellops.synthetic.colonies import generate_colony_image
    >>> sample = generate_colony_image((256, 256), seed=2, n_colonies=(2, 2), radius=(40, 50), gap=(0, 0))
    >>> mask = sample.labels > 0
    >>> seams = bright_seams(to_uint8_gray(sample.image), mask, 40.0, 800.0)
    >>> seams.dtype == bool, bool((seams & ~mask).any())
    (True, False)
    """
    if not mask.any():
        return np.zeros(mask.shape, bool)
    _, regions, region_stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return _bright_seams(gray, mask, regions, region_stats, radius, min_area)


def _bright_seams(gray: np.ndarray, mask: np.ndarray, regions: np.ndarray, region_stats: np.ndarray, radius: float,
                  min_area: float) -> np.ndarray:
    """:func:`bright_seams`, given the 8-connected components of a superset of ``mask`` whose components larger than
    ``min_area`` are those of ``mask`` (the detection's own labelling, not redone)."""
    seams = np.zeros(mask.shape, bool)
    mask8 = mask.astype(np.uint8)
    candidates = np.flatnonzero(region_stats[1:, cv2.CC_STAT_AREA] >= 2 * min_area) + 1
    # Colonies that touch leave notches where they meet: a convex region no larger than a big colony is one colony,
    # and is not searched (colonies pressed flat along a wide front make a convex region, but twice as large).
    single = _SEAM_SINGLE_AREA * np.pi * radius**2
    candidates = np.array([r for r in candidates if region_stats[r, cv2.CC_STAT_AREA] > single
                           or _region_solidity(regions, r, region_stats[r]) < _SEAM_MAX_SOLIDITY], dtype=int)
    if not len(candidates):
        return seams
    margin = max(3, int(round(0.05 * radius)))
    core = cv2.erode(mask8, _disk(margin), borderValue=1) > 0
    kernels = _line_kernels(length=float(np.clip(0.8 * radius, 15, 41)),
                            width=float(np.clip(0.012 * radius, 0.5, 1.5)))
    boxes, scores, spectra = [], [], {}
    for region in candidates:
        x, y, w, h = region_stats[region, :4]
        box = (slice(y, y + h), slice(x, x + w))
        boxes.append(box)
        scores.append(_line_scores(gray, box, kernels, spectra))
    inside = np.concatenate([s[(regions[b] == r) & core[b]] for s, b, r in zip(scores, boxes, candidates)])
    if inside.size < 100:
        return seams
    low, centre, high = np.percentile(inside, [25, 50, 75])
    spread = max(float(high - low) / 1.349, 1e-6)
    for region, box, score in zip(candidates, boxes, scores):
        own = regions[box] == region
        z = (score - centre) / spread
        bright = ((z > _SEAM_SCORE) & own & core[box]).astype(np.uint8)
        count, pieces, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
        for piece in range(1, count):
            if max(stats[piece, 2], stats[piece, 3]) < 0.2 * radius:
                continue
            found = pieces == piece
            for attempt in range(2):
                line = cv2.dilate(found.astype(np.uint8), _disk(margin + 1)) > 0
                rest = (own & ~line).astype(np.uint8)
                _, _, part_stats, _ = cv2.connectedComponentsWithStats(rest, connectivity=8)
                if (part_stats[1:, cv2.CC_STAT_AREA] >= min_area).sum() >= 2:
                    seams[box] |= (cv2.dilate(found.astype(np.uint8), _disk(1)) > 0) & own
                    break
                if attempt == 0:
                    # Follow the line score from the piece to the mask's edge, within a colony radius of the
                    # piece (a seam is not much longer than a colony is wide; and the cost stays small).
                    top, left = stats[piece, 1], stats[piece, 0]
                    near = (slice(max(0, top - int(radius)), top + stats[piece, 3] + int(radius)),
                            slice(max(0, left - int(radius)), left + stats[piece, 2] + int(radius)))
                    extended = _extend_seam(z[near], own[near], core[box][near], found[near], radius)
                    if extended is None:
                        break
                    found = np.zeros_like(found)
                    found[near] = extended
    return seams


def _extend_seam(z: np.ndarray, own: np.ndarray, core: np.ndarray, piece: np.ndarray,
                 radius: float) -> np.ndarray | None:
    """``piece`` joined to the region's edge on two sides by the paths of highest line score ``z`` (least
    cost exp(-z / 1.5)) from it: to the nearest point of the edge in that sense, and to the nearest one at
    least half a colony radius from the first; None if either path scores below :data:`_SEAM_PATH_SCORE` on
    average."""
    edge = own & ~core
    if not edge.any():
        return None
    cost = np.where(own, np.exp(-np.clip(z, -3.0, 6.0) / 1.5), np.inf)
    mcp = graph.MCP_Geometric(cost)
    cumulative, _ = mcp.find_costs(np.argwhere(piece))
    rows, cols = np.nonzero(edge)
    reach = cumulative[rows, cols]
    result = piece.copy()
    first = int(np.argmin(reach))
    far = np.hypot(rows - rows[first], cols - cols[first]) >= 0.5 * radius
    if not far.any():
        return None
    second = int(np.flatnonzero(far)[np.argmin(reach[far])])
    for end in (first, second):
        if not np.isfinite(reach[end]):
            return None
        path = np.array(mcp.traceback((rows[end], cols[end])))
        new = ~piece[path[:, 0], path[:, 1]]
        if new.any() and float(np.mean(z[path[new, 0], path[new, 1]])) < _SEAM_PATH_SCORE:
            return None
        result[path[:, 0], path[:, 1]] = True
    return result


def _line_scores(gray: np.ndarray, box: tuple[slice, slice], kernels: np.ndarray,
                 spectra: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """The largest response of the line filters ``kernels`` (stacked, odd, square and point-symmetric) at
    each pixel of ``box``, from the image around it (replicated at the image's border). By FFT: one forward
    transform of the window, one inverse per direction; the filters' transforms are kept in ``spectra`` (by
    size) for the next box."""
    half = kernels.shape[1] // 2
    rows, cols = box
    top, bottom, left, right = rows.start - half, rows.stop + half, cols.start - half, cols.stop + half
    window = gray[max(0, top):bottom, max(0, left):right].astype(np.float32)
    window = np.pad(window, ((max(0, -top), bottom - top - window.shape[0] - max(0, -top)),
                             (max(0, -left), right - left - window.shape[1] - max(0, -left))), mode="edge")
    # Sizes rounded up to a multiple of 32, so that boxes share the filters' transforms; the wrap-around of
    # the circular convolution only reaches the window's margin, which is cut off.
    shape = (-(-window.shape[0] // 32) * 32, -(-window.shape[1] // 32) * 32)
    if shape not in spectra:
        spectra[shape] = sfft.rfft2(kernels, s=shape, axes=(1, 2), workers=1)
    responses = sfft.irfft2(spectra[shape] * sfft.rfft2(window, s=shape, workers=1), s=shape, workers=1)
    inner = (slice(None), slice(2 * half, 2 * half + rows.stop - rows.start),
             slice(2 * half, 2 * half + cols.stop - cols.start))
    return responses[inner].max(axis=0)


def _line_kernels(length: float, width: float, directions: int = 12) -> np.ndarray:
    """Zero-mean line filters, stacked: the mean along a line ``length`` px long (Gaussian profile ``width`` px
    across) less the mean of the two lines ``3.3 * width`` px (at least 1.5 px) to either side, in
    ``directions`` directions."""
    offset = max(1.5, 3.3 * width)
    half = int(np.ceil(length / 2 + offset + 2 * width))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    kernels = []
    for angle in np.pi * np.arange(directions) / directions:
        along = xx * np.cos(angle) + yy * np.sin(angle)
        across = -xx * np.sin(angle) + yy * np.cos(angle)
        extent = np.clip(length / 2 + 0.5 - np.abs(along), 0, 1)
        centre = extent * np.exp(-0.5 * (across / width) ** 2)
        flanks = extent * np.exp(-0.5 * ((np.abs(across) - offset) / width) ** 2)
        kernels.append((centre / centre.sum() - flanks / flanks.sum()).astype(np.float32))
    return np.stack(kernels)


def split_touching_colonies(mask: np.ndarray, radius: float, seams: np.ndarray | None = None) -> np.ndarray:
    """Labels of ``mask`` with touching colonies apart: a watershed on the distance transform from its h-maxima
    (h = 4 % of the typical colony radius, at least 1 px: the detection mask fills the concave corners where
    two colonies meet, so their neck is only a little narrower than they are; a tenth merged touching pairs,
    and lobed colonies still stay whole). The line between them is only roughly placed here;
    :func:`refine_colony_edges` moves it onto the seam. ``seams``
    (see :func:`bright_seams`) are cut out of the mask before the distance transform, so colonies that meet
    along a wide front are split too."""
    # On a grid a few pixels coarse (colonies are tens of pixels wide): the watershed and the h-maxima
    # reconstruction cost grows with the pixel count. A coarse cell is in the mask if any of its pixels is,
    # so every mask pixel gets a label when the grid is brought back to full size.
    factor = max(1, int(radius // 12))
    small = any_in_blocks(mask, factor)
    # A coarse cell is cut if any of its pixels is on a seam: seams are a pixel or two wide.
    cut = small & ~any_in_blocks(seams, factor) if seams is not None and seams.any() else small
    distance = euclidean_distance(cut) * factor
    distance = ndimage.gaussian_filter(distance, max(1.0, 0.05 * radius) / factor)
    _, markers = cv2.connectedComponents(h_maxima(distance, max(1.0, 0.04 * radius)), connectivity=8)
    coarse = segmentation.watershed(-distance, markers, mask=small).astype(np.int32)
    labels = np.repeat(np.repeat(coarse, factor, axis=0), factor, axis=1)[:mask.shape[0], :mask.shape[1]]
    return np.where(mask, labels, 0).astype(np.int32)


def any_in_blocks(mask: np.ndarray, factor: int) -> np.ndarray:
    """Whether any pixel of each ``factor`` x ``factor`` block of ``mask`` is set (the last blocks padded with
    False): the mask on a grid ``factor`` times coarser.

    Examples
    --------
    >>> mask = np.zeros((5, 5), bool); mask[1, 3] = mask[4, 4] = True
    >>> any_in_blocks(mask, 2).astype(int).tolist()
    [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    """
    if factor == 1:
        return mask.astype(bool)
    rows, cols = -(-mask.shape[0] // factor), -(-mask.shape[1] // factor)
    padded = np.zeros((rows * factor, cols * factor), np.uint8)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    # A dilation anchored at the block's first pixel, read at every block's first pixel (OpenCV: one pass).
    grown = cv2.dilate(padded, np.ones((factor, factor), np.uint8), anchor=(0, 0))
    return grown[::factor, ::factor] > 0


def euclidean_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (float64) of each pixel of ``mask`` to the nearest pixel outside it, equal to
    ``scipy.ndimage.distance_transform_edt`` (OpenCV's exact transform, several times faster: its float32
    result squared and rounded is the integer squared distance, whose float64 root is scipy's value).

    Examples
    --------
    >>> mask = np.zeros((5, 7), bool); mask[1:4, 1:6] = True
    >>> euclidean_distance(mask)[2].tolist()
    [0.0, 1.0, 2.0, 2.0, 2.0, 1.0, 0.0]
    """
    if mask.all():
        # No pixel outside: OpenCV and scipy differ there; scipy's answer, kept for the rare full mask.
        return ndimage.distance_transform_edt(mask)
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.sqrt(np.rint(np.square(distance, dtype=np.float64)))


def h_maxima(image: np.ndarray, h: float) -> np.ndarray:
    """The maxima of ``image`` (floating point) at least ``h`` high (8-connected), as uint8 0/1: the result
    of ``skimage.morphology.h_maxima``, with the reconstruction done by OpenCV dilations repeated until nothing
    changes (on the smoothed distance maps here, far faster than scikit-image's ranked reconstruction).

    Examples
    --------
    >>> image = np.zeros((5, 9)); image[2, 2] = 3.0; image[2, 6] = 1.0
    >>> h_maxima(image, 2.0)[2].tolist()
    [0, 0, 1, 0, 0, 0, 0, 0, 0]
    """
    if h > np.ptp(image):
        return np.zeros(image.shape, np.uint8)
    # As scikit-image: a margin of float resolution keeps the seed strictly h below the image.
    seed = image - h - 2 * np.finfo(image.dtype).resolution * np.abs(image)
    rebuilt = _reconstruct_by_dilation(seed, image)
    return ((image - rebuilt) >= h).astype(np.uint8)


def _reconstruct_by_dilation(seed: np.ndarray, limit: np.ndarray, steps: int = 8) -> np.ndarray:
    """Grey-level reconstruction by dilation of ``seed`` under ``limit`` (8-connected): geodesic dilations
    until the result no longer changes (checked every ``steps``: the sequence only grows, so a block of
    steps that changes nothing means the fixed point)."""
    kernel = np.ones((3, 3), np.uint8)
    # Every pixel is joined to the seed's highest one by a path on which the limit is at least its minimum: the
    # result is at least the smaller of the two everywhere. Starting there gives the same fixed point, without
    # flooding a wide flat background one pixel per step.
    current = np.minimum(np.maximum(seed, min(float(seed.max()), float(limit.min()))), limit)
    while True:
        previous = current
        for _ in range(steps):
            current = np.minimum(cv2.dilate(current, kernel), limit)
        if np.array_equal(current, previous):
            return current


def refine_colony_edges(gray: np.ndarray, labels: np.ndarray, inner_band: int, outer_band: int,
                        opening: int = 0) -> np.ndarray:
    """Move each outline onto the strongest edge nearby: up to ``inner_band`` px inwards and ``outer_band`` px
    outwards (a flattened, paler rim of differentiating cells is weakly textured, so detection stops short of
    the colony's true edge, its phase-dark border against the bright halo). One watershed on the gradient
    magnitude from markers: each colony shrunk by ``inner_band``, and the background beyond ``outer_band``;
    colonies meet each other on the brightest line between them (their seam or the halo of a narrow gap),
    anywhere within ``3 * inner_band`` of the first split line, which follows the mask's shape, not the image.
    Only the ring between the markers is flooded, so the cost follows the colonies' outlines, not the image's
    area. Growth outwards that an opening of radius ``opening`` removes (single cells hanging on by their halo)
    is dropped, and so is whatever the opening removes from the first outline: clusters of single cells the
    detection mask joined to a colony."""
    smooth = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.0)
    gradient = cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    # The flooding order follows the gradient: quantised to integers, ties and order do not depend on the
    # CPU's float kernels.
    landscape = np.rint(gradient * 4).astype(np.int32)
    mask = labels > 0
    # A colony's marker: its pixels with only its own label within inner_band (the interface between two
    # touching colonies is unsettled as well as the outer edge). Labels in the narrowest type that holds them
    # and the border value (OpenCV's morphology is several times faster on bytes than on floats).
    beyond = int(labels.max()) + 1
    compact = labels.astype(np.uint8 if beyond <= 255 else np.uint16 if beyond <= 65535 else np.float32)
    settled = cv2.erode(compact, _disk(inner_band), borderValue=beyond) == \
        cv2.dilate(compact, _disk(inner_band), borderValue=0)
    # Where two colonies meet, the split's line follows the distance transform, not the image: within
    # 3 x inner_band of another colony nothing is settled, and the flooding there follows the smoothed
    # intensity, so the colonies meet on the bright seam (or halo-filled gap) between them.
    interface_band = 3 * inner_band
    background_high = compact.copy()
    background_high[~mask] = beyond
    nearest_other = cv2.erode(background_high, _disk(interface_band), borderValue=beyond)
    interface = mask & (nearest_other < beyond) & \
        (nearest_other != cv2.dilate(compact, _disk(interface_band), borderValue=0))
    if interface.any():
        settled &= ~interface
        landscape[interface] = np.rint(smooth[interface] * 4).astype(np.int32)
    near = cv2.dilate(mask.astype(np.uint8), _disk(outer_band)) > 0
    markers = np.where(settled & mask, labels, 0)
    background = beyond
    markers[~near] = background
    unsettled = (markers == 0).astype(np.uint8)
    if not unsettled.any():
        return labels
    # Only the ring and the markers' pixels along it take part (a watershed's cost follows its mask).
    ring = cv2.dilate(unsettled, _disk(1))
    refined = flood_within(landscape, markers, ring)
    refined[refined == background] = 0
    # Colony rim, not single cells hanging on by the halo: what the opening removes goes (detect_colony_labels
    # uses a quarter of the colony radius: clusters of single cells next to a colony are narrower than that).
    opened = cv2.morphologyEx((refined > 0).astype(np.uint8), cv2.MORPH_OPEN, _disk(opening)) > 0
    refined[~opened] = 0
    return refined.astype(np.int32)


def flood_within(landscape: np.ndarray, markers: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``markers`` with the pixels of ``region`` (nonzero) flooded by a watershed on ``landscape`` (scikit-image's,
    4-connected), each 4-connected part of ``region`` in its own box: the parts do not reach each other, and
    the cost then follows the region's area, not the image's.

    Examples
    --------
    >>> landscape = np.array([[0, 5, 1, 0, 0]]); markers = np.array([[1, 0, 0, 2, 0]])
    >>> flood_within(landscape, markers, np.array([[1, 1, 1, 1, 0]], np.uint8)).tolist()
    [[1, 1, 2, 2, 0]]
    """
    flooded = markers.copy()
    # Labelling without OpenCV's statistics, boxes from scipy: several times faster than both from OpenCV.
    _, parts = cv2.connectedComponents(region.astype(np.uint8), connectivity=4)
    for part, box in enumerate(ndimage.find_objects(parts), start=1):
        own = parts[box] == part
        flooded[box][own] = segmentation.watershed(landscape[box], markers[box], mask=own)[own]
    return flooded


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _border_labels(labels: np.ndarray) -> np.ndarray:
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.setdiff1d(np.unique(edge), [0])


def detect_colony_contours(image: np.ndarray, params: ColonyParams = ColonyParams()) -> list[np.ndarray]:
    """External contours of the colonies in a phase-contrast image, largest first."""
    labels, _ = detect_colony_labels(image, params)
    return _contours(labels)


def _contours(labels: np.ndarray) -> list[np.ndarray]:
    """The outer contour of each label 1..max, in image coordinates (each traced within its own box)."""
    contours = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        found, _ = cv2.findContours((labels[box] == label).astype(np.uint8), cv2.RETR_EXTERNAL,
                                    cv2.CHAIN_APPROX_NONE, offset=(box[1].start, box[0].start))
        contours.append(max(found, key=cv2.contourArea))
    return contours


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
    labels, settings = detect_colony_labels(image, params)
    contours = _contours(labels)
    border = set(_border_labels(labels).tolist())
    rows = [{"colony": i, **colony_properties(c), "touches_border": i in border} for i, c in enumerate(contours, start=1)]
    table = pd.DataFrame(rows, columns=["colony", *colony_properties(_UNIT_SQUARE).keys(), "touches_border"])
    return ColonyResult(contours=contours, labels=labels, table=table, settings=settings)


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
