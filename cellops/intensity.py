"""How pixel values become a network's input scale: one :class:`Normalization`, stored with every registered model
and applied alike in training, evaluation, runtime checks, prediction and the services.

Microscope images carry no common intensity scale: a 12-bit camera writes 0-4095 into 16-bit files, a dim sample
fills a few hundred grey levels, a float export any range. Scaling by the dtype's range (65535 for 16-bit) would
show such an image to the network almost black. The field's answer (CSBDeep, StarDist, Cellpose) is to scale each
image by its own low and high percentiles, so the same picture gives the same input whether it is stored as 8-bit,
16-bit full range, 16-bit using 1 % of its range or float. That is the default (``mode="percentile"``);
``mode="dtype"`` keeps fixed scaling by the dtype's range for users whose intensities are calibrated.

Percentiles of integer images come from a histogram of all pixels (exact, and the same whether a volume is read
whole or slab by slab); float images use ``numpy.percentile``. An image whose percentiles coincide falls back to
its minimum and maximum (a sparse image: a few bright objects on a flat background); a constant image has no
contrast to scale and is refused with an :class:`cellops.io.ImageInputError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from cellops.config import FromMapping
from cellops.errors import ImageInputError

#: The normalisation modes: per-image percentiles (the default) or the dtype's fixed range.
MODES = ("percentile", "dtype")
#: Float images in fixed (``dtype``) mode must lie in [0, 1] give or take this much.
FLOAT_UNIT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Normalization(FromMapping):
    """How an image's values are scaled before the network sees them.

    Attributes
    ----------
    mode : str, optional
        ``"percentile"``: ``(x - p_low) / (p_high - p_low)`` with the image's own ``low`` and ``high``
        percentiles (not clipped: brighter than ``p_high`` stays above 1, as in CSBDeep); ``"dtype"``: integers
        divided by their dtype's maximum, floats taken as already in [0, 1] (and refused outside it).
    low : float, optional
        The low percentile (0-100) of ``percentile`` mode.
    high : float, optional
        The high percentile (0-100) of ``percentile`` mode.

    Examples
    --------
    >>> norm = Normalization(mode="percentile", low=1.0, high=99.0)
    >>> ramp = np.arange(101, dtype=np.uint16).reshape(1, 101)
    >>> scaled = norm.apply(ramp)
    >>> float(scaled[0, 1]), float(scaled[0, 99])
    (0.0, 1.0)
    >>> bool(np.allclose(norm.apply(ramp * 257), scaled)), bool(np.allclose(norm.apply(ramp / 100.0), scaled))
    (True, True)
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"normalization mode must be one of {list(MODES)}, got {self.mode!r}")
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"normalization percentiles must satisfy 0 <= low < high <= 100, got low={self.low}, "
                             f"high={self.high}")

    @classmethod
    def coerce(cls, value: Normalization | dict | None, *, default: Normalization | None = None) -> Normalization:
        """``value`` as a :class:`Normalization`: itself, from a mapping (config or registry), or ``default``.

        Parameters
        ----------
        value : Normalization or dict or None
            A normalisation, its mapping, or None.
        default : Normalization or None, optional
            What None stands for.

        Returns
        -------
        Normalization
            The normalisation.

        Raises
        ------
        ValueError
            When ``value`` and ``default`` are both None, or the mapping is invalid.

        Examples
        --------
        >>> Normalization.coerce({"mode": "dtype"}).mode, Normalization.coerce(None, default=LEGACY) is LEGACY
        ('dtype', True)
        """
        if isinstance(value, Normalization):
            return value
        if value is None:
            if default is None:
                raise ValueError("no normalization given")
            return default
        return cls.from_dict(value)

    def as_dict(self) -> dict:
        """The settings as a mapping (what configs and registry records hold).

        Returns
        -------
        dict
            ``mode``, ``low`` and ``high``.

        Examples
        --------
        >>> Normalization().as_dict()
        {'mode': 'percentile', 'low': 1.0, 'high': 99.8}
        """
        return asdict(self)

    def describe(self) -> str:
        """One line for outputs and logs: which scaling was used.

        Returns
        -------
        str
            E.g. ``"percentile 1-99.8"`` or ``"dtype range"``.

        Examples
        --------
        >>> Normalization().describe(), Normalization(mode="dtype").describe()
        ('percentile 1-99.8', 'dtype range')
        """
        return f"percentile {self.low:g}-{self.high:g}" if self.mode == "percentile" else "dtype range"

    def bounds(self, image: np.ndarray, *, source: str = "") -> tuple[float, float]:
        """The values mapped to 0 and 1 for ``image`` (all its pixels and channels together).

        Parameters
        ----------
        image : np.ndarray
            An 8- or 16-bit or float image, any shape.
        source : str, optional
            Named in error messages.

        Returns
        -------
        tuple of float
            The values mapped to 0 and to 1.

        Examples
        --------
        >>> Normalization(mode="dtype").bounds(np.zeros(3, np.uint8))
        (0.0, 255.0)
        """
        if self.mode == "dtype":
            return dtype_bounds(image, source=source)
        return percentile_bounds(image, self.low, self.high, source=source)

    def apply(self, image: np.ndarray, *, source: str = "",
              bounds: tuple[float, float] | None = None) -> np.ndarray:
        """``image`` scaled to float32 by its own :meth:`bounds` (or the ``bounds`` given, e.g. those of a whole
        volume that is processed slab by slab).

        Parameters
        ----------
        image : np.ndarray
            An 8- or 16-bit or float image, any shape.
        source : str, optional
            Named in error messages.
        bounds : tuple of float or None, optional
            The values mapped to 0 and 1, instead of the image's own.

        Returns
        -------
        np.ndarray
            float32, shape of ``image``.

        Raises
        ------
        ImageInputError
            For an empty, non-finite or constant image, or an unsupported dtype.

        Examples
        --------
        >>> Normalization(mode="dtype").apply(np.array([0, 51, 255], np.uint8)).tolist()
        [0.0, 0.20000000298023224, 1.0]
        """
        low, high = self.bounds(image, source=source) if bounds is None else bounds
        scaled = (np.asarray(image, dtype=np.float64) - low) / (high - low)
        if self.mode == "dtype" and image.dtype.kind == "f":
            scaled = np.clip(scaled, 0.0, 1.0)  # within FLOAT_UNIT_TOLERANCE of [0, 1]: rounding, not signal
        return scaled.astype(np.float32)


#: The scaling of models registered before normalisation was a setting: they were trained on dtype scaling.
LEGACY = Normalization(mode="dtype")


def _check_pixels(image: np.ndarray, source: str) -> None:

    name = source or "image"
    if image.size == 0:
        raise ImageInputError(f"{name}: empty image (shape {image.shape})")
    if image.dtype.kind not in "uf" or image.dtype.itemsize > 8 or (image.dtype.kind == "u" and image.dtype.itemsize > 2):
        raise ImageInputError(f"{name}: unsupported dtype {image.dtype.name}; expected uint8, uint16 or a float type")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ImageInputError(f"{name}: image contains NaN or infinite values")


def dtype_bounds(image: np.ndarray, *, source: str = "") -> tuple[float, float]:
    """(0, dtype maximum) for 8- and 16-bit images; (0, 1) for floats, which must lie in [0, 1] (up to
    :data:`FLOAT_UNIT_TOLERANCE`): a float image carries no fixed range to scale by.

    Parameters
    ----------
    image : np.ndarray
        An 8- or 16-bit or float image.
    source : str, optional
        Named in error messages.

    Returns
    -------
    tuple of float
        The values mapped to 0 and to 1.

    Raises
    ------
    ImageInputError
        For a float image outside [0, 1], or an unusable image.

    Examples
    --------
    >>> dtype_bounds(np.zeros(2, np.uint16)), dtype_bounds(np.array([0.0, 0.5]))
    ((0.0, 65535.0), (0.0, 1.0))
    """

    _check_pixels(image, source)
    if image.dtype.kind == "u":
        return 0.0, float(np.iinfo(image.dtype).max)
    low, high = float(np.min(image)), float(np.max(image))
    if low < -FLOAT_UNIT_TOLERANCE or high > 1.0 + FLOAT_UNIT_TOLERANCE:
        raise ImageInputError(
            f"{source or 'image'}: float values in [{low:.4g}, {high:.4g}] have no fixed range; fixed (dtype) "
            "scaling takes floats in [0, 1] only: rescale the file, or use percentile normalization")
    return 0.0, 1.0


def integer_histogram(image: np.ndarray) -> np.ndarray:
    """Counts of every grey level of an 8- or 16-bit image (what :func:`histogram_percentiles` reads; sums of the
    histograms of a volume's slabs equal the histogram of the volume).

    Parameters
    ----------
    image : np.ndarray
        An 8- or 16-bit image.

    Returns
    -------
    np.ndarray
        Counts, one per grey level from 0 to the dtype's maximum.

    Examples
    --------
    >>> counts = integer_histogram(np.array([0, 2, 2], np.uint8))
    >>> len(counts), counts[:3].tolist()
    (256, [1, 0, 2])
    """
    values = np.ascontiguousarray(image).reshape(-1)
    return np.bincount(values.astype(np.uint16, copy=False), minlength=int(np.iinfo(image.dtype).max) + 1)


def histogram_percentiles(histogram: np.ndarray, percentiles: Iterable[float]) -> list[float]:
    """Percentiles (numpy's default, linear interpolation between order statistics) of the values whose counts
    ``histogram`` holds, value ``i`` counted ``histogram[i]`` times.

    Parameters
    ----------
    histogram : np.ndarray
        Count of every value from 0.
    percentiles : iterable of float
        Percentiles in [0, 100].

    Returns
    -------
    list of float
        The values at those percentiles.

    Examples
    --------
    >>> values = np.array([3, 1, 4, 1, 5, 9, 2, 6], np.uint8)
    >>> histogram_percentiles(np.bincount(values), [0, 10, 50, 99.8]) == list(np.percentile(values, [0, 10, 50, 99.8]))
    True
    """
    cumulative = np.cumsum(histogram)
    n = int(cumulative[-1])
    found = []
    for q in percentiles:
        position = q / 100.0 * (n - 1)
        below = int(np.floor(position))
        above = min(below + 1, n - 1)
        v0 = float(np.searchsorted(cumulative, below, side="right"))
        v1 = float(np.searchsorted(cumulative, above, side="right"))
        found.append(v0 + (position - below) * (v1 - v0))
    return found


def percentile_bounds(image: np.ndarray, low: float, high: float, *, source: str = "",
                      histogram: np.ndarray | None = None) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of ``image`` (its minimum and maximum where they coincide); a constant
    image raises an :class:`cellops.io.ImageInputError` naming ``source``. ``histogram`` (integer images) may be
    given instead of reading the pixels, for volumes read slab by slab.

    Parameters
    ----------
    image : np.ndarray
        An 8- or 16-bit or float image (only its dtype is read when ``histogram`` is given).
    low : float
        The low percentile, in [0, 100].
    high : float
        The high percentile.
    source : str, optional
        Named in error messages.
    histogram : np.ndarray or None, optional
        Counts of every grey level of the whole image or volume (:func:`integer_histogram`).

    Returns
    -------
    tuple of float
        The values mapped to 0 and to 1.

    Raises
    ------
    ImageInputError
        For a constant or otherwise unusable image.

    Examples
    --------
    >>> percentile_bounds(np.arange(101, dtype=np.uint8), 1.0, 99.0)
    (1.0, 99.0)
    """

    if histogram is None:
        _check_pixels(image, source)
    if histogram is not None or image.dtype.kind == "u":
        counts = integer_histogram(image) if histogram is None else histogram
        p_low, p_high = histogram_percentiles(counts, (low, high))
        levels = np.flatnonzero(counts)
        minimum, maximum = float(levels[0]), float(levels[-1])
    else:
        values = np.asarray(image, dtype=np.float64)
        p_low, p_high = (float(v) for v in np.percentile(values, (low, high)))
        minimum, maximum = float(values.min()), float(values.max())
    if p_high > p_low:
        return p_low, p_high
    if maximum > minimum:  # a sparse image: its percentiles fall on the flat background
        return minimum, maximum
    raise ImageInputError(f"{source or 'image'}: constant image (every pixel is {minimum:g}): no contrast to "
                          "normalise, nothing to segment or classify")


__all__ = ["MODES", "LEGACY", "Normalization", "dtype_bounds", "percentile_bounds", "integer_histogram",
           "histogram_percentiles"]
