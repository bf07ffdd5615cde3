"""Out-of-distribution verdicts: is an image like those a model was trained on?

Every family describes an image by one feature vector computed in the pass that predicts it (no second forward pass):
intensity and texture statistics of the input as the network sees it (:func:`intensity_features`) and statistics of
the network's own output (probability maps, class probabilities or detections; ``cellops.<family>.ood``). At
registration the family describes its training images (the reference) and held-out in-distribution images (the
calibration set); :func:`fit_reference` keeps the reference's mean and shrunk covariance (Ledoit-Wolf, scikit-learn)
and sets the threshold on the Mahalanobis distance so that at most ``false_alarm_rate`` of in-distribution images
are flagged (a split-conformal quantile of the calibration distances). The :class:`OODReference` is stored with the
registered version; every entry point turns a feature vector into a :class:`Verdict`, and a service keeps a
:class:`DriftWindow` of its recent requests.

Why this score: ``benchmarks/ood.py`` measures it against the candidates (output energy or entropy alone, input
statistics alone, pooled backbone activations) on every family and shifted domain; see ``docs/monitoring.md``.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The artifact folder of a registered version's run (and of a BentoML model) that holds the reference.
OOD_ARTIFACTS = "ood"
#: The reference's file name in that folder.
REFERENCE_FILE = "reference.json"
#: What a prediction does with an out-of-distribution image: answer and flag it, or refuse it.
POLICIES = ("flag", "refuse")
DEFAULT_POLICY = "flag"
#: Images with a shorter side than this are not scored (too few pixels for texture statistics).
MIN_SIDE = 32
#: The central square of larger images that the input statistics are taken from: it bounds their cost, and it is
#: cropped, never resampled, so that the pixel scale (the magnification) stays what the network sees.
MAX_SIDE = 192
#: The environment variable naming the folder of the services' request logs (:func:`monitor_dir`).
MONITOR_DIR_ENV = "CELLOPS_MONITOR_DIR"
#: A service's request log, in ``<monitor dir>/<service name>/``.
REQUEST_LOG = "requests.jsonl"
#: The fewest training images a reference is fitted on.
MIN_REFERENCE = 10
#: Calibration rows kept in the reference, for drift reports.
KEPT_ROWS = 500

#: Edges of the radial frequency bands (cycles per pixel) whose share of the spectral power is a feature: where the
#: power lies moves with the magnification, the blur and the noise.
BANDS = (0.0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)

#: Scales (Gaussian sigma, pixels) of the Hessian statistics: ridges and blobs of one to a few pixels' width.
HESSIAN_SCALES = (1, 2, 4)

#: The input statistics every family uses (:func:`intensity_features`), in order.
INTENSITY_FEATURES = (
    "intensity_mean", "intensity_std", "intensity_skew", "intensity_p05", "intensity_p95",
    "log_gradient", "log_laplacian", "log_noise",
    *(f"spectral_band_{i}" for i in range(1, len(BANDS))),
    "orientation_coherence", "ridge_polarity", "ridge_polarity_coarse",
    *(f"{name}_{scale}px" for scale in HESSIAN_SCALES
      for name in ("bright_ridge_share", "log_blob_to_line", "strong_ridge_polarity", "blob_share")),
)


def monitor_dir() -> Path:
    """Where the model services write their request logs (and ``cellops monitor`` looks for them):
    ``CELLOPS_MONITOR_DIR``, else ``$BENTOML_HOME/monitoring`` (``BENTOML_HOME`` defaulting to ``~/bentoml``); each
    service writes ``<folder>/<service>/requests.jsonl``."""
    configured = os.environ.get(MONITOR_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("BENTOML_HOME", "").strip() or "~/bentoml").expanduser() / "monitoring"


class OutOfDistribution(ValueError):
    """An image refused under the ``refuse`` policy: it is unlike the model's training images."""


def grey_planes(unit: np.ndarray) -> list[np.ndarray]:
    """The 2-D planes an image's statistics are taken from: the image itself, or up to 8 evenly spaced slices of a
    stack (a colour picture is made grey by its family first, e.g. by its channel mean).

    Parameters
    ----------
    unit : np.ndarray
        A grey image (Y, X) or stack (Z, Y, X) as the network sees it (normalised).

    Returns
    -------
    list of np.ndarray
        float32 planes: the central square of at most :data:`MAX_SIDE` pixels on a side.

    Examples
    --------
    >>> [p.shape for p in grey_planes(np.zeros((40, 600)))]
    [(40, 192)]
    >>> len(grey_planes(np.zeros((20, 64, 64))))
    8
    """
    array = np.asarray(unit)
    if array.ndim == 2:
        planes = [array]
    elif array.ndim == 3:
        picks = np.unique(np.linspace(0, array.shape[0] - 1, min(8, array.shape[0])).round().astype(int))
        planes = [array[i] for i in picks]
    else:
        raise ValueError(f"cannot describe an array of shape {array.shape}: expected a grey image (Y, X) or a "
                         "stack (Z, Y, X)")
    return [_central(plane) for plane in planes]


def _central(plane: np.ndarray) -> np.ndarray:
    height, width = plane.shape
    top, left = max(0, (height - MAX_SIDE) // 2), max(0, (width - MAX_SIDE) // 2)
    return np.ascontiguousarray(plane[top:top + MAX_SIDE, left:left + MAX_SIDE], dtype=np.float32)


def unscorable_reason(unit: np.ndarray) -> str | None:
    """Why an image cannot be scored, or None when it can.

    Parameters
    ----------
    unit : np.ndarray
        The grey image (Y, X) or stack (Z, Y, X) as the network sees it.

    Returns
    -------
    str or None
        ``"too small ..."`` when a side is under :data:`MIN_SIDE` pixels, ``"uniform ..."`` when it holds one value.

    Examples
    --------
    >>> unscorable_reason(np.zeros((16, 64)))
    'image too small to score: 64x16 pixels, at least 32x32 needed'
    >>> unscorable_reason(np.ones((64, 64)))
    'image is uniform (one value): nothing to compare with the training images'
    >>> unscorable_reason(np.random.default_rng(0).random((64, 64))) is None
    True
    """
    planes = grey_planes(unit)
    height, width = planes[0].shape
    if min(height, width) < MIN_SIDE:
        return f"image too small to score: {width}x{height} pixels, at least {MIN_SIDE}x{MIN_SIDE} needed"
    if all(float(np.ptp(plane)) <= 1e-9 for plane in planes):
        return "image is uniform (one value): nothing to compare with the training images"
    return None


@functools.lru_cache(maxsize=16)
def _frequency_bands(height: int, width: int) -> tuple[np.ndarray, ...]:
    """Masks of the :data:`BANDS` of an rfft2 of that shape (the last band runs up to 1/4 cycle per pixel)."""
    radius = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    edges = BANDS
    return tuple((radius > low) & (radius <= high) for low, high in zip(edges[:-1], edges[1:]))


def _order_statistics(values: np.ndarray, fractions: Sequence[float]) -> list[float]:
    """Values at the given fractions of the sorted values (lower order statistics; np.partition, a fraction of
    np.percentile's cost on small arrays)."""
    flat = values.ravel()
    ranks = [min(len(flat) - 1, int(f * (len(flat) - 1))) for f in fractions]
    part = np.partition(flat, ranks)
    return [float(part[r]) for r in ranks]


def _laplacian(plane: np.ndarray) -> np.ndarray:
    return -4.0 * plane[1:-1, 1:-1] + plane[:-2, 1:-1] + plane[2:, 1:-1] + plane[1:-1, :-2] + plane[1:-1, 2:]


def _skew(values: np.ndarray) -> float:
    spread = float(values.std())
    if spread <= 1e-9:
        return 0.0
    z = (values - values.mean()) / spread
    return float(np.clip(np.mean(z * z * z), -50, 50))  # z * z * z: a third of the cost of z ** 3


def _hessian_features(plane: np.ndarray, sigma: float) -> list[float]:
    """At one scale, from the Hessian's eigenvalues: the share of ridge strength in bright (vs dark) ridges, blobs
    against lines, which polarity the strongest ridges have, and the share of blob-like pixels. They tell a network
    of bright borders from dark membranes, round nuclei from thin lines, whatever the intensity scale."""
    import cv2

    # A scale-space pyramid: scale s is sigma 1 on the plane reduced s times (a fraction of the cost of sigma s).
    level = plane if sigma <= 1 else cv2.resize(plane, (max(8, plane.shape[1] // int(sigma)),
                                                        max(8, plane.shape[0] // int(sigma))),
                                                interpolation=cv2.INTER_AREA)
    smooth = cv2.GaussianBlur(level, (0, 0), 1.0)
    hxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0)
    hyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2)
    hxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1)
    spread = np.sqrt((hxx - hyy) ** 2 + 4 * hxy * hxy)
    high, low = 0.5 * (hxx + hyy + spread), 0.5 * (hxx + hyy - spread)
    bright, dark = np.maximum(-low, 0), np.maximum(high, 0)
    total = float(bright.mean() + dark.mean()) + 1e-9
    same_sign = high * low > 0
    blob = float(np.where(same_sign, np.minimum(np.abs(high), np.abs(low)), 0).mean())
    line = float(np.abs(np.abs(high) - np.abs(low)).mean())
    strength = np.maximum(bright, dark)
    strong = _order_statistics(strength[::2, ::2], [0.9])[0]
    size = strength.size
    return [float(bright.mean()) / total, math.log(blob / (line + 1e-9) + 1e-9),
            (np.count_nonzero(bright > strong) - np.count_nonzero(dark > strong)) / size,
            np.count_nonzero(same_sign) / size]


def _plane_features(plane: np.ndarray) -> np.ndarray:
    """The statistics of one float32 plane (:data:`INTENSITY_FEATURES`), as float64."""
    import cv2

    eps = 1e-6
    mean, std = float(plane.mean()), float(plane.std())
    dy, dx = np.diff(plane, axis=0)[:, :-1], np.diff(plane, axis=1)[:-1, :]
    gradient = float(np.abs(dx).mean() + np.abs(dy).mean())
    jxx, jyy, jxy = float((dx * dx).mean()), float((dy * dy).mean()), float((dx * dy).mean())
    coherence = math.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + eps)
    laplacian = _laplacian(plane)
    # The Laplacian's median absolute deviation estimates the noise (kernel norm sqrt(20)); texture barely moves it.
    # Order statistics are taken on every other pixel: a quarter of the cost, the same estimate.
    sample = laplacian[::2, ::2]
    middle = _order_statistics(sample, [0.5])[0]
    noise = _order_statistics(np.abs(sample - middle), [0.5])[0] / 0.6745 / math.sqrt(20.0)
    # The Laplacian's skewness tells bright thin ridges (negative) from dark ones (positive): the contrast's polarity.
    coarse = _laplacian(cv2.GaussianBlur(plane, (0, 0), 2.0))
    power = np.abs(np.fft.rfft2(plane - mean)) ** 2
    total = float(power.sum()) + eps
    bands = [float(power[band].sum()) / total for band in _frequency_bands(*plane.shape)]
    p05, p95 = _order_statistics(plane[::2, ::2], [0.05, 0.95])
    return np.array([
        mean, std, _skew(plane), float(p05), float(p95),
        math.log(gradient / (std + eps) + eps), math.log(float(np.abs(laplacian).mean()) / (gradient + eps) + eps),
        math.log(noise / (std + eps) + eps), *bands, coherence, _skew(laplacian), _skew(coarse),
        *(value for scale in HESSIAN_SCALES for value in _hessian_features(plane, scale)),
    ])


def intensity_features(unit: np.ndarray) -> np.ndarray:
    """Intensity and texture statistics of an image as the network sees it (:data:`INTENSITY_FEATURES`): mean,
    spread, skewness and 5/95th percentiles of the values; sharpness (mean gradient over spread), the share of
    high frequencies (mean Laplacian over mean gradient), the noise (MAD of the Laplacian over spread); the share
    of spectral power in the radial :data:`BANDS` (it moves with the magnification, blur and noise); how much one
    orientation dominates (structure-tensor coherence); the polarity of thin ridges (skewness of the Laplacian,
    at the pixel scale and after a 2-pixel blur), which flips when the contrast is inverted; and, at each of
    :data:`HESSIAN_SCALES`, the Hessian's view of the structures (bright vs dark ridges, blobs vs lines). A stack's
    statistics are the mean of its slices'.

    Parameters
    ----------
    unit : np.ndarray
        The normalised grey image (Y, X) or stack (Z, Y, X).

    Returns
    -------
    np.ndarray
        float64 vector of len(:data:`INTENSITY_FEATURES`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> smooth = np.cumsum(np.cumsum(rng.normal(size=(64, 64)), 0), 1)
    >>> noisy = smooth + 50 * rng.normal(size=(64, 64))
    >>> sharpness = INTENSITY_FEATURES.index("log_noise")
    >>> bool(intensity_features(noisy)[sharpness] > intensity_features(smooth)[sharpness])
    True
    """
    return np.mean([_plane_features(plane) for plane in grey_planes(unit)], axis=0)


@dataclass(frozen=True)
class Verdict:
    """Whether one image is like the model's training images.

    Attributes
    ----------
    ood_score : float or None
        The Mahalanobis distance of its features from the reference (None when not scored).
    threshold : float or None
        The distance above which an image is out of distribution.
    in_distribution : bool or None
        ``ood_score <= threshold``; None when the image could not be scored (``reason`` says why).
    reason : str
        What the verdict rests on, in words.
    """

    ood_score: float | None
    threshold: float | None
    in_distribution: bool | None
    reason: str = ""

    def as_dict(self) -> dict:
        """The verdict as JSON answers and summary tables carry it.

        Examples
        --------
        >>> Verdict(3.21234567, 5.0, True, "ok").as_dict()
        {'ood_score': 3.212346, 'ood_threshold': 5.0, 'in_distribution': True, 'ood_reason': 'ok'}
        """
        return {"ood_score": None if self.ood_score is None else round(self.ood_score, 6),
                "ood_threshold": None if self.threshold is None else round(self.threshold, 6),
                "in_distribution": self.in_distribution, "ood_reason": self.reason}

    def headers(self) -> dict[str, str]:
        """The verdict as HTTP headers of an image response (``unknown`` where not scored).

        Examples
        --------
        >>> Verdict(None, 5.0, None, "too small").headers()["X-In-Distribution"]
        'unknown'
        """
        return {"X-OOD-Score": "unknown" if self.ood_score is None else f"{self.ood_score:.6f}",
                "X-OOD-Threshold": "unknown" if self.threshold is None else f"{self.threshold:.6f}",
                "X-In-Distribution": {True: "true", False: "false", None: "unknown"}[self.in_distribution]}


def no_reference_verdict() -> Verdict:
    """The verdict of a model version registered without an OOD reference (before references existed)."""
    return Verdict(None, None, None, "this model version has no out-of-distribution reference; register it again "
                                     "with its training pipeline to get one")


def enforce(verdict: Verdict, policy: str = DEFAULT_POLICY) -> Verdict:
    """Apply an OOD policy: ``flag`` returns the verdict, ``refuse`` raises for an out-of-distribution image.

    Parameters
    ----------
    verdict : Verdict
        The image's verdict.
    policy : str
        One of :data:`POLICIES`.

    Returns
    -------
    Verdict
        ``verdict``, unchanged.

    Raises
    ------
    OutOfDistribution
        Under ``refuse``, naming the score and the threshold.
    ValueError
        For an unknown policy.

    Examples
    --------
    >>> enforce(Verdict(9.0, 4.0, False), "refuse")
    Traceback (most recent call last):
    cellops.ood.OutOfDistribution: the image is out of distribution: its OOD score 9.000 is above the threshold 4.000 of the images this model was trained on; send images like its training data, or use the 'flag' policy to get an answer anyway
    """
    check_policy(policy)
    if policy == "refuse" and verdict.in_distribution is False:
        raise OutOfDistribution(
            f"the image is out of distribution: its OOD score {verdict.ood_score:.3f} is above the threshold "
            f"{verdict.threshold:.3f} of the images this model was trained on; send images like its training data, "
            "or use the 'flag' policy to get an answer anyway")
    return verdict


def check_policy(policy: str) -> str:
    """``policy`` if it is one of :data:`POLICIES`, else a ValueError naming them."""
    if policy not in POLICIES:
        raise ValueError(f"unknown out-of-distribution policy {policy!r}; one of {', '.join(POLICIES)}")
    return policy


#: The distances an image's features can be scored by: to the nearest training image after whitening by the
#: shrunk covariance (the default: training images of several kinds, the classifier's classes, are several
#: clusters), or to their mean (Mahalanobis).
SCORES = ("nearest", "mahalanobis")


@dataclass(frozen=True)
class OODReference:
    """What a registered model version knows of its training images: the mean and shrunk inverse covariance of
    their standardised features, the training images' features themselves, and the calibrated threshold.

    Build it with :func:`fit_reference`; store it with :meth:`save`, read it back with :meth:`load`.
    """

    family: str
    feature_names: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    calibration_scores: np.ndarray
    threshold: float
    false_alarm_rate: float
    reference_features: np.ndarray
    n_reference: int
    n_calibration: int
    score_name: str = "nearest"
    notes: dict = field(default_factory=dict)
    training_rows: np.ndarray | None = None
    scored_features: tuple[str, ...] = ()
    _whitener: np.ndarray = field(init=False, repr=False, compare=False)
    _training: np.ndarray = field(init=False, repr=False, compare=False)
    _columns: list = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # W = V sqrt(eigenvalues) of the (symmetric) precision: |(x - mean) / scale @ W| is the Mahalanobis distance.
        values, vectors = np.linalg.eigh((self.precision + self.precision.T) / 2)
        object.__setattr__(self, "_whitener", vectors * np.sqrt(np.clip(values, 0.0, None)))
        rows = np.zeros((0, len(self.center))) if self.training_rows is None else self.training_rows
        object.__setattr__(self, "_columns", [self.feature_names.index(n) for n in self.scored_features]
                           if self.scored_features else list(range(len(self.feature_names))))
        object.__setattr__(self, "_training", self._whitened(rows))

    def _whitened(self, rows: np.ndarray) -> np.ndarray:
        return ((rows - self.center) / self.scale) @ self._whitener

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Distances of feature rows (N, features) from the reference (:data:`SCORES`), over its scored features."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        if rows.shape[1] != len(self.feature_names):
            raise ValueError(f"{rows.shape[1]} features given; the {self.family} reference has "
                             f"{len(self.feature_names)} ({', '.join(self.feature_names)})")
        whitened = self._whitened(rows[:, self._columns])
        if self.score_name == "mahalanobis" or len(self._training) == 0:
            return np.sqrt(np.einsum("ni,ni->n", whitened, whitened))
        training = self._training
        squared = ((whitened ** 2).sum(axis=1)[:, None] + (training ** 2).sum(axis=1)[None, :]
                   - 2.0 * whitened @ training.T)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def score(self, features: np.ndarray) -> float:
        """The distance of one feature vector from the reference."""
        return float(self.scores(features)[0])

    def verdict(self, features: np.ndarray) -> Verdict:
        """The verdict of one image's feature vector (non-finite features count as out of distribution)."""
        features = np.asarray(features, dtype=np.float64)
        if not np.all(np.isfinite(features)):
            bad = [n for n, v in zip(self.feature_names, features) if not np.isfinite(v)]
            return Verdict(float("inf"), self.threshold, False, f"features not finite: {', '.join(bad)}")
        value = self.score(features)
        # A relative tolerance: the image that set the threshold must not land an ulp above it on another call.
        inside = value <= self.threshold * (1 + 1e-9)
        return Verdict(value, self.threshold, bool(inside),
                       f"{self.score_name} distance {value:.3f} {'<=' if inside else '>'} threshold "
                       f"{self.threshold:.3f} ({self.false_alarm_rate:.0%} false alarms on held-out training images)")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"format": 1, "family": self.family, "score": self.score_name,
                "feature_names": list(self.feature_names), "center": self.center.tolist(),
                "scale": self.scale.tolist(), "precision": self.precision.tolist(),
                "calibration_scores": self.calibration_scores.tolist(), "threshold": self.threshold,
                "false_alarm_rate": self.false_alarm_rate, "reference_features": self.reference_features.tolist(),
                "n_reference": self.n_reference, "n_calibration": self.n_calibration, "notes": self.notes,
                "training_rows": None if self.training_rows is None else self.training_rows.tolist(),
                "scored_features": list(self.scored_features)}

    @classmethod
    def from_dict(cls, values: Mapping) -> OODReference:
        """Read :meth:`to_dict`'s form; a ValueError names what is missing."""
        missing = [k for k in ("family", "feature_names", "center", "scale", "precision", "calibration_scores",
                               "threshold", "false_alarm_rate") if k not in values]
        if missing:
            raise ValueError(f"not an OOD reference: missing {', '.join(missing)}")
        names = tuple(values["feature_names"])
        return cls(family=str(values["family"]), feature_names=names,
                   center=np.asarray(values["center"], np.float64), scale=np.asarray(values["scale"], np.float64),
                   precision=np.asarray(values["precision"], np.float64),
                   calibration_scores=np.asarray(values["calibration_scores"], np.float64),
                   threshold=float(values["threshold"]), false_alarm_rate=float(values["false_alarm_rate"]),
                   reference_features=np.asarray(values.get("reference_features") or np.zeros((0, len(names))),
                                                 np.float64).reshape(-1, len(names)),
                   n_reference=int(values.get("n_reference", 0)), n_calibration=int(values.get("n_calibration", 0)),
                   score_name=str(values.get("score", "nearest")), notes=dict(values.get("notes") or {}),
                   training_rows=None if values.get("training_rows") is None else
                   np.asarray(values["training_rows"], np.float64).reshape(-1, len(values["center"])),
                   scored_features=tuple(values.get("scored_features") or ()))

    def save(self, path: str | Path) -> Path:
        """Write the reference as JSON to ``path`` (a file, or a folder that gets :data:`REFERENCE_FILE`)."""
        path = Path(path)
        if path.is_dir():
            path = path / REFERENCE_FILE
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> OODReference:
        """Read a reference written by :meth:`save` (a file, or a folder holding :data:`REFERENCE_FILE`)."""
        path = Path(path)
        if path.is_dir():
            path = path / REFERENCE_FILE
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the OOD reference {path}: {error}") from error
        return cls.from_dict(values)


def min_calibration(false_alarm_rate: float) -> int:
    """The fewest held-out images that can calibrate ``false_alarm_rate`` (split conformal: ``1/rate - 1``).

    Examples
    --------
    >>> min_calibration(0.05), min_calibration(0.1)
    (19, 9)
    """
    return max(1, math.ceil(1.0 / false_alarm_rate - 1.0 - 1e-9))


def conformal_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """The distance threshold that flags at most ``false_alarm_rate`` of new in-distribution images, in
    expectation, from held-out in-distribution ``scores``: their ``ceil((n + 1)(1 - rate))``-th smallest.

    Examples
    --------
    >>> conformal_threshold(np.arange(1.0, 20.0), 0.05)
    19.0
    >>> conformal_threshold(np.arange(1.0, 101.0), 0.05)
    96.0
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(ordered)
    if n < min_calibration(false_alarm_rate):
        raise ValueError(f"calibrating a {false_alarm_rate:.0%} false-alarm rate needs at least "
                         f"{min_calibration(false_alarm_rate)} held-out in-distribution images; got {n}")
    rank = math.ceil((n + 1) * (1.0 - false_alarm_rate))
    return float(ordered[min(rank, n) - 1])


def fit_reference(family: str, reference_rows: np.ndarray, calibration_rows: np.ndarray,
                  feature_names: Sequence[str], *, false_alarm_rate: float = 0.05, seed: int = 0,
                  notes: Mapping | None = None, score: str = "nearest",
                  scored_features: Sequence[str] | None = None) -> OODReference:
    """Fit the reference of a model version: standardise the training images' features, shrink their covariance
    (Ledoit-Wolf) and calibrate the distance threshold on held-out in-distribution images.

    An image's score is its distance to the nearest training image in the space whitened by that covariance
    (``nearest``, the default), or to their mean (``mahalanobis``), over the scored features: by default the input
    statistics (:data:`INTENSITY_FEATURES`) among ``feature_names``. ``benchmarks/ood.py`` measured the choices:
    the output statistics added nothing to the input statistics' detection for the U-Net and Mask R-CNN and lowered
    the classifier's (its confident softmax varies on in-distribution images only); they are kept in every row
    for the drift report.

    Parameters
    ----------
    family : str
        The model family.
    reference_rows : np.ndarray
        Features (N, F) of training images.
    calibration_rows : np.ndarray
        Features (M, F) of held-out in-distribution images (validation split), M >= :func:`min_calibration`.
    feature_names : sequence of str
        The F feature names.
    false_alarm_rate : float
        The share of in-distribution images that may be flagged.
    seed : int
        Seed of the subsample of calibration rows kept for drift reports.
    notes : mapping, optional
        Stored with the reference (e.g. where its images came from).
    score : str
        One of :data:`SCORES`.
    scored_features : sequence of str, optional
        The features the score uses (default: those of :data:`INTENSITY_FEATURES` in ``feature_names``, or all of
        them when there are none).

    Returns
    -------
    OODReference

    Raises
    ------
    ValueError
        For too few rows, mismatched shapes, non-finite features or a rate outside (0, 0.5].

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ref = fit_reference("demo", rng.normal(size=(200, 3)), rng.normal(size=(100, 3)), ["a", "b", "c"])
    >>> ref.verdict(np.zeros(3)).in_distribution, ref.verdict(np.full(3, 8.0)).in_distribution
    (True, False)
    """
    from sklearn.covariance import LedoitWolf

    if not 0.0 < false_alarm_rate <= 0.5:
        raise ValueError(f"false_alarm_rate must be in (0, 0.5]; got {false_alarm_rate}")
    if score not in SCORES:
        raise ValueError(f"unknown OOD score {score!r}; one of {', '.join(SCORES)}")
    names = tuple(feature_names)
    reference = np.asarray(reference_rows, dtype=np.float64)
    calibration = np.asarray(calibration_rows, dtype=np.float64)
    for label, rows in (("reference", reference), ("calibration", calibration)):
        if rows.ndim != 2 or rows.shape[1] != len(names):
            raise ValueError(f"{label} features must be (N, {len(names)}); got {rows.shape}")
        if not np.all(np.isfinite(rows)):
            raise ValueError(f"{label} features hold non-finite values")
    if len(reference) < MIN_REFERENCE:
        # Ledoit-Wolf shrinkage keeps the covariance invertible with fewer images than features, and the
        # calibration holds the false-alarm rate whatever the fit; a sharper reference needs a few times more.
        raise ValueError(f"a reference needs at least {MIN_REFERENCE} training images; got {len(reference)}")
    scored = tuple(scored_features) if scored_features is not None else \
        tuple(n for n in names if n in INTENSITY_FEATURES) or names
    unknown = [n for n in scored if n not in names]
    if unknown:
        raise ValueError(f"scored features not among the features: {', '.join(unknown)}")
    reference = reference[:, [names.index(n) for n in scored]]
    center = reference.mean(axis=0)
    # A feature constant over the training images would make any change infinitely far: its scale has a floor.
    scale = np.maximum(reference.std(axis=0), 1e-3 * np.maximum(1.0, np.abs(center)))
    precision = LedoitWolf().fit((reference - center) / scale).precision_
    partial = OODReference(family, names, center, scale, precision, np.zeros(0), math.inf, false_alarm_rate,
                           np.zeros((0, len(names))), len(reference), len(calibration), score, {}, reference,
                           scored)
    calibration_scores = partial.scores(calibration)  # held out: none of them is among the training rows
    threshold = conformal_threshold(calibration_scores, false_alarm_rate)
    keep = np.sort(np.random.default_rng(seed).permutation(len(calibration))[:KEPT_ROWS])
    return OODReference(family, names, center, scale, precision, np.sort(calibration_scores), threshold,
                        false_alarm_rate, calibration[keep], len(reference), len(calibration), score,
                        dict(notes or {}), reference, scored)


def verdict_of(reference: OODReference | None, unit: np.ndarray, features: np.ndarray | None) -> Verdict:
    """The verdict of one image: none without a reference, ``unknown`` for an image too small or uniform to score.

    Parameters
    ----------
    reference : OODReference or None
        The model version's reference.
    unit : np.ndarray
        The image as the network saw it (checked by :func:`unscorable_reason`).
    features : np.ndarray or None
        Its features (None when they could not be computed).

    Returns
    -------
    Verdict
    """
    if reference is None:
        return no_reference_verdict()
    reason = unscorable_reason(unit)
    if reason is not None or features is None:
        return Verdict(None, reference.threshold, None, reason or "features could not be computed")
    return reference.verdict(features)


def verdict_and_features(reference: OODReference | None, unit: np.ndarray,
                         features: Callable[[], np.ndarray]) -> tuple[Verdict, np.ndarray | None]:
    """An image's verdict and the features it rests on; the features are computed only when the image can be
    scored (there is a reference, and the image is neither too small nor uniform). Every family's ``verdict_for``
    and the services (which also log the features) go through it.

    Parameters
    ----------
    reference : OODReference or None
        The model version's reference.
    unit : np.ndarray
        The grey image (Y, X) or stack (Z, Y, X) the family scores, as the network saw it.
    features : callable
        Computes the family's features (``cellops.<family>.ood.image_features``).

    Returns
    -------
    verdict : Verdict
    features : np.ndarray or None
        None when the image was not scored.

    Examples
    --------
    >>> verdict, values = verdict_and_features(None, np.zeros((64, 64)), lambda: np.zeros(3))
    >>> verdict.in_distribution, values
    (None, None)
    """
    if reference is None:
        return no_reference_verdict(), None
    reason = unscorable_reason(unit)
    if reason is not None:
        return Verdict(None, reference.threshold, None, reason), None
    values = np.asarray(features(), dtype=np.float64)
    return reference.verdict(values), values


class DriftWindow:
    """The verdicts of a service's last ``size`` scored requests: the share flagged out of distribution and the
    drift of their scores from the calibration scores (two-sample Kolmogorov-Smirnov statistic).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ref = fit_reference("demo", rng.normal(size=(200, 2)), rng.normal(size=(100, 2)), ["a", "b"])
    >>> window = DriftWindow(ref, size=50)
    >>> for _ in range(30):
    ...     _ = window.add(ref.verdict(rng.normal(size=2) + 6.0))
    >>> window.ood_rate(), window.drift_statistic() > 0.9
    (1.0, True)
    """

    def __init__(self, reference: OODReference, size: int = 200) -> None:
        if size < 1:
            raise ValueError(f"a drift window holds at least one request; got size {size}")
        self.reference = reference
        self.capacity = int(size)
        self._scores: deque[float] = deque(maxlen=self.capacity)
        self._flags: deque[bool] = deque(maxlen=self.capacity)

    @property
    def size(self) -> int:
        """Scored requests in the window."""
        return len(self._scores)

    def add(self, verdict: Verdict) -> DriftWindow:
        """Add a request's verdict (unscored ones are left out)."""
        if verdict.ood_score is not None and verdict.in_distribution is not None:
            self._scores.append(float(verdict.ood_score))
            self._flags.append(not verdict.in_distribution)
        return self

    def ood_rate(self) -> float:
        """Share of the window's requests flagged out of distribution (0 for an empty window)."""
        return float(np.mean(self._flags)) if self._flags else 0.0

    def drift_statistic(self) -> float:
        """One-sided Kolmogorov-Smirnov distance of the window's scores above the calibration scores (0: not
        higher, 1: all higher; 0 for an empty window)."""
        if not self._scores or len(self.reference.calibration_scores) == 0:
            return 0.0
        from scipy.stats import ks_2samp

        scores = np.clip(np.asarray(self._scores), None, np.finfo(np.float64).max)
        # One-sided: only scores higher than the calibration's count, so a window of images closer to the training
        # images than the held-out ones (whole fields against crops) reads as no drift, and shifted ones raise it.
        return float(ks_2samp(scores, self.reference.calibration_scores, alternative="less").statistic)
