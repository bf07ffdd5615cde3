"""Sizes and thresholds measured from the image itself, so the classical analyses need no tuning.

* :func:`estimate_blob_diameter`: the typical diameter of bright round objects (nuclei, cells), from the
  scale-normalised Laplacian-of-Gaussian (Lindeberg 1998): a disk of radius r answers most strongly at
  sigma = r / sqrt(2), so each blob's best scale gives its size. The scale space is built on an image pyramid
  (octaves of four scales), which keeps a 2048 x 2048 image under a second for diameters from 6 to 200 px.
* :func:`choose_threshold`: whether one global (Otsu) threshold can
  serve the whole field, judged from how much the background varies against the objects' contrast and from
  how many detected blobs a global threshold would lose (dim nuclei beside bright ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage import filters

#: Scales per octave (sigma ratio 2 ** (1 / 4) between neighbours: a diameter resolved to about 19 %, refined
#: to a few per cent by interpolating the response between scales).
SCALES_PER_OCTAVE = 4
#: Smoothing that cv2.pyrDown has already applied, in pixels of the level it produces (its 5-tap kernel has
#: sigma 1 in the input, 0.5 in the output; summed over levels it tends to this).
_PYRAMID_SIGMA = 0.58


@dataclass(frozen=True)
class BlobScale:
    """What :func:`estimate_blob_diameter` found.

    Attributes
    ----------
    diameter_px : typical object diameter (response-weighted median over the blobs found).
    n_blobs : blobs that counted.
    centres : (n, 2) row, column of each blob.
    diameters : diameter of each blob.
    responses : scale-normalised response of each blob (object contrast on the 0-1 scale of the image).
    """

    diameter_px: float
    n_blobs: int
    centres: np.ndarray
    diameters: np.ndarray
    responses: np.ndarray


def normalise_intensity(image: np.ndarray, low: float = 0.5, high: float = 99.9) -> np.ndarray:
    """A float32 copy scaled so that the ``low`` and ``high`` percentiles map to 0 and 1 (bit depth and
    exposure no longer matter).

    >>> normalise_intensity(np.array([[0, 100], [200, 4000]], np.uint16), 0, 100).astype(float).round(3).tolist()
    [[0.0, 0.025], [0.05, 1.0]]
    """
    values = image.astype(np.float32)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return np.zeros_like(values)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def noise_sigma(gray: np.ndarray) -> float:
    """Standard deviation of the pixel noise, robustly: the median absolute deviation of the image minus its
    sigma-1 blur (objects and gradients barely change that residual's median), corrected for the blur's share.

    >>> round(noise_sigma(np.random.default_rng(0).normal(0, 0.1, (256, 256)).astype(np.float32)), 2)
    0.1
    """
    residual = gray - cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    sample = residual[:: max(1, residual.shape[0] // 512), :: max(1, residual.shape[1] // 512)]
    return float(1.4826 * np.median(np.abs(sample - np.median(sample))) / 0.873)


#: Standard deviation of the scale-normalised LoG response to unit white noise, times sigma (measured).
_LOG_NOISE_GAIN = 0.40
#: Blobs that count: those answering at least this share of the strong ones (a dim population is kept).
STRONG_SHARE = 0.1


def estimate_blob_diameter(image: np.ndarray, *, min_diameter: float = 6.0, max_diameter: float = 200.0,
                           bright: bool = True, min_contrast: float = 0.02) -> BlobScale:
    """Typical diameter (pixels) of the bright (``bright=True``) or dark round objects of an image.

    Every local maximum of the scale-normalised LoG over space and scale is a blob; blobs whose response is
    not clearly above the noise at their scale, or that lie inside a stronger and larger blob (texture inside
    a nucleus), are dropped; the diameter is the response-weighted median over the rest.

    Raises
    ------
    ValueError
        When no blob stands out of the noise (an empty or flat field): then no size can be told.

    Examples
    --------
    >>> yy, xx = np.mgrid[:200, :200]
    >>> disks = sum(((yy - cy) ** 2 + (xx - cx) ** 2 <= 12 ** 2) for cy in (50, 150) for cx in (50, 150))
    >>> round(estimate_blob_diameter(disks.astype(float)).diameter_px)
    24
    """
    gray = normalise_intensity(image)
    if not bright:
        gray = 1.0 - gray
    ratio = 2 ** (1 / SCALES_PER_OCTAVE)
    sigma_min, sigma_max = min_diameter / (2 * np.sqrt(2)), max_diameter / (2 * np.sqrt(2))
    noise = noise_sigma(gray)
    level_image, factor = gray, 1
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (centres, sigmas, responses) per octave
    # Octave o holds sigmas in [2, 4) on pyramid level o (original sigmas 2 * 2**o ...), plus one on each side
    # so that scale maxima can be told at the octave's edges.
    while min(level_image.shape) >= 16 and 2 * factor / ratio <= sigma_max:
        level_sigmas = 2.0 * ratio ** np.arange(-1, SCALES_PER_OCTAVE + 1)
        if 2 * factor * ratio ** SCALES_PER_OCTAVE >= sigma_min:
            stack = np.stack([_normalised_log(level_image, s, factor) for s in level_sigmas])
            floors = [max(min_contrast, 5 * _LOG_NOISE_GAIN * noise / (s * factor)) for s in level_sigmas]
            centres, scales, responses = _scale_space_maxima(stack, floors)
            keep = (scales >= 1) & (scales <= SCALES_PER_OCTAVE)
            sigma = level_sigmas[0] * ratio ** _refine(stack, centres, scales)
            found.append(((centres[keep] + 0.5) * factor - 0.5, sigma[keep] * factor, responses[keep]))
        level_image = cv2.pyrDown(level_image)
        factor *= 2
    centres = np.concatenate([f[0] for f in found]) if found else np.zeros((0, 2))
    sigmas = np.concatenate([f[1] for f in found]) if found else np.zeros(0)
    responses = np.concatenate([f[2] for f in found]) if found else np.zeros(0)
    in_range = (sigmas >= sigma_min) & (sigmas <= sigma_max)
    centres, sigmas, responses = centres[in_range], sigmas[in_range], responses[in_range]
    keep = _not_inside_stronger(centres, sigmas, responses)
    centres, diameters, responses = centres[keep], 2 * np.sqrt(2) * sigmas[keep], responses[keep]
    if len(diameters) == 0:
        raise ValueError("no object stands out of the noise: the typical object size cannot be estimated "
                         "(give the diameter explicitly)")
    # Weighted by response: faint texture and noise blobs count little, well-contrasted objects much.
    strong = responses >= STRONG_SHARE * np.percentile(responses, 90)
    return BlobScale(diameter_px=weighted_median(diameters[strong], responses[strong]), n_blobs=int(strong.sum()),
                     centres=centres[strong], diameters=diameters[strong], responses=responses[strong])


def _normalised_log(image: np.ndarray, sigma: float, factor: int) -> np.ndarray:
    """-sigma^2 * LoG of a pyramid level, for a total smoothing of ``sigma`` (level pixels)."""
    already = _PYRAMID_SIGMA if factor > 1 else 0.0
    blurred = cv2.GaussianBlur(image, (0, 0), float(np.sqrt(max(sigma**2 - already**2, 0.25))),
                               borderType=cv2.BORDER_REFLECT)
    return -(sigma**2) * cv2.Laplacian(blurred, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)


def _scale_space_maxima(stack: np.ndarray, floors: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col) centres, scale index and response of the 3 x 3 x 3 local maxima above the noise."""
    kernel = np.ones((3, 3), np.uint8)
    spatial = np.stack([cv2.dilate(s, kernel, borderType=cv2.BORDER_REPLICATE) for s in stack])
    neighbourhood = spatial.copy()
    neighbourhood[1:] = np.maximum(neighbourhood[1:], spatial[:-1])
    neighbourhood[:-1] = np.maximum(neighbourhood[:-1], spatial[1:])
    floor = np.array(floors, np.float32)[:, None, None]
    peaks = (stack >= neighbourhood) & (stack > floor)
    scales, rows, cols = np.nonzero(peaks)
    return np.stack([rows, cols], axis=1).astype(np.float64), scales, stack[scales, rows, cols].astype(np.float64)


def _refine(stack: np.ndarray, centres: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Sub-scale position (in scale steps) of each maximum: the vertex of a parabola through three scales."""
    rows, cols = centres[:, 0].astype(int), centres[:, 1].astype(int)
    inner = (scales >= 1) & (scales < len(stack) - 1)
    refined = scales.astype(np.float64)
    s = scales[inner]
    below, at, above = (stack[s - 1, rows[inner], cols[inner]], stack[s, rows[inner], cols[inner]],
                        stack[s + 1, rows[inner], cols[inner]])
    curvature = below - 2 * at + above
    offset = np.where(curvature < 0, 0.5 * (below - above) / np.where(curvature < 0, curvature, -1), 0.0)
    refined[inner] += np.clip(offset, -0.5, 0.5)
    return refined


def _not_inside_stronger(centres: np.ndarray, sigmas: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Mask of blobs not centred inside a stronger, larger blob (greedy, strongest first)."""
    from scipy.spatial import cKDTree

    keep = np.ones(len(centres), bool)
    if len(centres) < 2:
        return keep
    radii = np.sqrt(2) * sigmas
    tree = cKDTree(centres)
    for i in np.argsort(-responses):
        if not keep[i]:
            continue
        for j in tree.query_ball_point(centres[i], 1.25 * radii[i]):
            if j != i and keep[j] and responses[j] < responses[i] and sigmas[j] < sigmas[i]:
                keep[j] = False
    return keep


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half of the total weight lies.

    >>> weighted_median(np.array([1.0, 2.0, 10.0]), np.array([1.0, 1.0, 5.0]))
    10.0
    """
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def background_map(gray: np.ndarray, object_diameter: float) -> np.ndarray:
    """Smooth background under objects of ``object_diameter`` px: a grey opening (rolling-ball-like) larger
    than the objects, on a downsampled copy for speed, smoothed and brought back to full size."""
    factor = max(1, int(object_diameter // 4))
    small = cv2.resize(gray.astype(np.float32), (max(1, gray.shape[1] // factor), max(1, gray.shape[0] // factor)),
                       interpolation=cv2.INTER_AREA)
    size = max(3, int(round(2.5 * object_diameter / factor)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    opened = cv2.morphologyEx(small, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REPLICATE)
    opened = cv2.GaussianBlur(opened, (0, 0), size / 2, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(opened, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class ThresholdingMethod:
    """The thresholding method chosen for an image and the measurements it rests on.

    Attributes
    ----------
    method : ``"otsu"`` or ``"local"``.
    unevenness : spread (5th to 95th percentile) of the background, as a fraction of the objects' contrast
        above it; above ``max_unevenness`` one global threshold cannot serve the whole field.
    dim_fraction : fraction of the detected blobs whose centre falls below the global (Otsu) threshold.
    """

    method: str
    unevenness: float
    dim_fraction: float

    def describe(self) -> str:
        return (f"threshold {self.method} (background unevenness {self.unevenness:.2f} of the contrast, "
                f"{100 * self.dim_fraction:.0f}% of objects below a global threshold)")


def choose_threshold(smooth: np.ndarray, blobs: BlobScale, *, max_unevenness: float = 0.25,
                     max_dim_fraction: float = 0.05) -> ThresholdingMethod:
    """Global Otsu when the background is even and no object would fall under it, local otherwise."""
    background = background_map(smooth, blobs.diameter_px)
    otsu = filters.threshold_otsu(smooth)
    low, high, middle = np.percentile(background[::4, ::4], [5, 95, 50])
    contrast = max(float(otsu - middle), 1e-9)
    unevenness = float(high - low) / (2 * contrast)
    rows = np.clip(np.round(blobs.centres[:, 0]).astype(int), 0, smooth.shape[0] - 1)
    cols = np.clip(np.round(blobs.centres[:, 1]).astype(int), 0, smooth.shape[1] - 1)
    dim = float(np.mean(smooth[rows, cols] <= otsu)) if len(rows) else 0.0
    method = "local" if unevenness > max_unevenness or dim > max_dim_fraction else "otsu"
    return ThresholdingMethod(method=method, unevenness=unevenness, dim_fraction=dim)
