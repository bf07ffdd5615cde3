"""Calcium-influx analysis of time-lapse fluorescence stacks.

Cells are segmented once, on a projection of the movie (the same adaptive segmenter as nuclei); each cell's
mean intensity is read in every frame; the background (median of the pixels outside cells, per frame) is
subtracted; optionally photobleaching is divided out; F0 is the mean of the baseline frames (or a low
percentile of the whole trace); dF/F0 = (F - F0) / F0. Per cell: peak dF/F0, time to peak, area under the
curve, responder yes/no; per group: mean +- SEM curves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import ndimage

from cellops.classical.nuclei import NucleusParams, segment_nuclei
from cellops.io import ImageInputError


@dataclass(frozen=True)
class CalciumParams:
    """Every tunable of the calcium analysis (set from the YAML config).

    Attributes
    ----------
    projection : image the cells are segmented on: ``"mean"``, ``"max"`` or ``"first"`` (reference frame).
    cell_diameter_px : typical cell diameter in pixels (drives the segmenter's sizes), or ``"auto"`` to measure
        it on the projection (as for nuclei).
    threshold : ``"auto"``, ``"otsu"`` or ``"local"``, as for nuclei.
    baseline_frames : frames ``[0, baseline_frames)`` before stimulation, used for F0 and bleaching.
    f0_method : ``"baseline"`` (mean of the baseline frames) or ``"percentile"``.
    f0_percentile : percentile of the trace taken as F0 with ``f0_method="percentile"``.
    bleach_correction : ``"none"`` or ``"baseline_exponential"`` (an exponential fitted to the mean baseline
        of all cells, extrapolated over the recording and divided out).
    frame_interval_s : seconds between frames, for times and areas in seconds.
    responder_threshold : peak dF/F0 above which a cell counts as responding.
    cell_diameter_um : the diameter in micrometres; when given it replaces ``cell_diameter_px`` and is converted
        with each movie's own pixel size (:meth:`at_pixel_size`).
    pixel_size_um : the pixel size used for movies whose metadata has none (a file's own pixel size wins).
    motion_correction : register every frame to the baseline (rigid, sub-pixel phase correlation) before
        anything else, so stage drift does not move cells out of their masks.
    """

    projection: str = "mean"
    cell_diameter_px: float | str = "auto"
    threshold: str = "auto"
    baseline_frames: int = 15
    f0_method: str = "baseline"
    f0_percentile: float = 10.0
    bleach_correction: str = "baseline_exponential"
    frame_interval_s: float = 1.0
    responder_threshold: float = 0.3
    cell_diameter_um: float | None = None
    pixel_size_um: float | None = None
    motion_correction: bool = True

    def segmenter(self) -> NucleusParams:
        """The nucleus segmenter's settings for these cells (the same checks apply)."""
        return NucleusParams(nucleus_diameter_px=self.cell_diameter_px, threshold=self.threshold,
                             nucleus_diameter_um=self.cell_diameter_um, pixel_size_um=self.pixel_size_um)

    def __post_init__(self) -> None:
        self.segmenter()

    def at_pixel_size(self, pixel_size_um: float | None) -> "CalciumParams":
        """These settings for a movie whose pixel size is ``pixel_size_um`` (None: the file states none, and
        ``pixel_size_um`` of the config, if any, is used).

        >>> CalciumParams(cell_diameter_um=15.0).at_pixel_size(0.5).segmenter().diameter_px
        30.0
        """
        return self if pixel_size_um is None else replace(self, pixel_size_um=pixel_size_um)


@dataclass
class CalciumResult:
    """``labels`` (H, W) cell labels; ``cell_ids`` (n_cells,) the label of each row below; ``raw`` (n_cells, T)
    background-subtracted mean intensities; ``dff`` (n_cells, T) dF/F0; ``metrics`` one row per cell."""

    labels: np.ndarray
    cell_ids: np.ndarray
    raw: np.ndarray
    dff: np.ndarray
    metrics: pd.DataFrame


def _check_movie(movie: np.ndarray) -> None:
    if movie.ndim != 3 or movie.shape[0] < 2:
        raise ImageInputError(f"expected a time-lapse stack (frames, rows, columns), got shape {movie.shape}")


def segment_cells(movie: np.ndarray, params: CalciumParams = CalciumParams()) -> np.ndarray:
    """Cell labels from a projection of a (T, H, W) movie."""
    _check_movie(movie)
    projections = {"mean": lambda m: m.mean(axis=0), "max": lambda m: m.max(axis=0), "first": lambda m: m[0]}
    if params.projection not in projections:
        raise ValueError(f"unknown projection {params.projection!r}: expected one of {sorted(projections)}")
    reference = projections[params.projection](movie.astype(np.float32))
    return segment_nuclei(reference, params.segmenter())


def _vertex(values: np.ndarray, row: int, col: int, axis: int) -> float:
    """Sub-pixel offset of a peak along ``axis``: the vertex of a parabola through it and its two neighbours."""
    index = [row, col]
    if not 0 < index[axis] < values.shape[axis] - 1:
        return 0.0
    before, after = list(index), list(index)
    before[axis] -= 1
    after[axis] += 1
    a, b, c = values[tuple(before)], values[row, col], values[tuple(after)]
    curvature = a - 2 * b + c
    return float(np.clip(0.5 * (a - c) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0


def register_frames(movie: np.ndarray, reference_frames: int = 15,
                    max_shift_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Movie with stage drift undone, and each frame's (dy, dx) shift: every frame is registered to the mean
    of the first ``reference_frames`` by cross-correlation of band-passed images (shifts up to
    ``max_shift_fraction`` of the frame) and moved back by whole pixels.

    Whole pixels keep the movie's own values (and dtype): sub-pixel interpolation would make every later
    figure depend on the CPU's floating-point kernels in the last digits (the reports are hashed by DVC),
    and half a pixel is well inside a cell. The estimate is in float64 with SciPy and NumPy, whose results do
    not depend on the CPU's SIMD level.

    >>> frame = np.zeros((64, 64), np.uint16); frame[20:30, 20:30] = 100
    >>> moved = np.stack([frame] + [np.roll(frame, (2, -3), axis=(0, 1))] * 4)
    >>> registered, shifts = register_frames(moved, reference_frames=1)
    >>> shifts[3].tolist(), registered.dtype, bool((registered[3] == frame).all())
    ([2.0, -3.0], dtype('uint16'), True)
    """
    def band(image: np.ndarray) -> np.ndarray:
        # Band-pass: slow background changes and pixel noise do not pull the correlation.
        smooth = ndimage.gaussian_filter(image, 1.0)
        return smooth - ndimage.gaussian_filter(smooth, 8.0)

    reference = np.fft.rfft2(band(movie[: max(1, min(reference_frames, len(movie)))].astype(np.float64).mean(axis=0)))
    height, width = movie.shape[1:]
    limit = max(2, int(max_shift_fraction * min(height, width)))
    shifts = np.zeros((len(movie), 2))
    for t, frame in enumerate(movie):
        correlation = np.fft.irfft2(np.fft.rfft2(band(frame.astype(np.float64))) * np.conj(reference), s=(height, width))
        # Only shifts within the limit: a calcium wave must not be mistaken for a jump of the stage.
        window = np.roll(correlation, (limit, limit), axis=(0, 1))[: 2 * limit + 1, : 2 * limit + 1]
        py, px = np.unravel_index(int(np.argmax(window)), window.shape)
        shifts[t] = py - limit + _vertex(window, py, px, 0), px - limit + _vertex(window, py, px, 1)
    # Drift is slow: a running median over frames rejects the odd failed correlation.
    shifts = np.round(ndimage.median_filter(shifts, size=(min(9, len(movie)), 1), mode="nearest"))
    registered = np.empty_like(movie)
    for t, frame in enumerate(movie):
        registered[t] = ndimage.shift(frame, -shifts[t], order=0, mode="nearest")
    return registered, shifts


def check_cell_masks(labels: np.ndarray, movie_shape: tuple[int, ...], source: str = "masks") -> np.ndarray:
    """Cell masks drawn elsewhere (Fiji, napari, Cellpose) as an int64 label image, or a clear error.

    A label image has one integer per pixel, 0 for background and one value per cell (gaps allowed: the
    values are kept as cell ids); a stack of one frame is accepted.

    >>> check_cell_masks(np.array([[0, 3], [3, 7]], np.uint16), (5, 2, 2)).tolist()
    [[0, 3], [3, 7]]
    >>> check_cell_masks(np.zeros((2, 2), np.uint8), (5, 2, 2))
    Traceback (most recent call last):
    cellops.errors.ImageInputError: masks: no cell (every pixel is 0)
    """
    if labels.ndim == 3 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 2:
        raise ImageInputError(f"{source}: a label image has 2 dimensions (rows, columns), got shape {labels.shape}")
    if labels.shape != tuple(movie_shape[-2:]):
        raise ImageInputError(f"{source}: masks are {labels.shape[0]}x{labels.shape[1]} but the movie's frames are "
                              f"{movie_shape[-2]}x{movie_shape[-1]}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ImageInputError(f"{source}: a label image holds whole numbers (cell ids), got {labels.dtype} values "
                                  "with fractions (is this an intensity image?)")
    if labels.min() < 0:
        raise ImageInputError(f"{source}: negative label {int(labels.min())}; labels are 0 (background) or a cell id")
    if not labels.any():
        raise ImageInputError(f"{source}: no cell (every pixel is 0)")
    return labels.astype(np.int64)


def cell_mean_traces(movie: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean intensity of every cell in every frame, and the per-frame background (median outside cells).

    Returns
    -------
    (cell_ids, traces, background): (n_cells,) the labels present, (n_cells, T) and (T,) float64.
    """
    index = np.setdiff1d(np.unique(labels), [0])
    n_cells = len(index)
    outside = labels == 0
    traces = np.empty((n_cells, movie.shape[0]))
    background = np.empty(movie.shape[0])
    for t, frame in enumerate(movie):
        traces[:, t] = ndimage.mean(frame, labels, index) if n_cells else []
        background[t] = float(np.median(frame[outside])) if outside.any() else 0.0
    return index, traces, background


def bleach_curve(traces: np.ndarray, baseline_frames: int) -> np.ndarray:
    """Photobleaching factor over time (1 at frame 0), from an exponential fitted to the log of the mean
    baseline of all cells; baseline frames carry no response, so their slope is bleaching alone."""
    n_frames = traces.shape[1]
    mean = traces[:, :baseline_frames].mean(axis=0)
    if baseline_frames < 3 or np.any(mean <= 0):
        return np.ones(n_frames)
    slope, _ = np.polyfit(np.arange(baseline_frames), np.log(mean), 1)
    return np.exp(min(slope, 0.0) * np.arange(n_frames))


def delta_f_over_f0(traces: np.ndarray, params: CalciumParams = CalciumParams()) -> np.ndarray:
    """dF/F0 of background-subtracted traces (n_cells, T).

    Examples
    --------
    >>> traces = np.array([[10.0, 10.0, 10.0, 15.0, 20.0]])
    >>> delta_f_over_f0(traces, CalciumParams(baseline_frames=3, bleach_correction="none")).tolist()
    [[0.0, 0.0, 0.0, 0.5, 1.0]]
    """
    if params.bleach_correction == "baseline_exponential":
        traces = traces / bleach_curve(traces, params.baseline_frames)
    elif params.bleach_correction != "none":
        raise ValueError(f"unknown bleach correction {params.bleach_correction!r}")
    if params.f0_method == "baseline":
        f0 = traces[:, : params.baseline_frames].mean(axis=1, keepdims=True)
    elif params.f0_method == "percentile":
        f0 = np.percentile(traces, params.f0_percentile, axis=1, keepdims=True)
    else:
        raise ValueError(f"unknown F0 method {params.f0_method!r}: expected 'baseline' or 'percentile'")
    return (traces - f0) / np.where(np.abs(f0) > 1e-12, f0, np.nan)


def response_metrics(dff: np.ndarray, params: CalciumParams = CalciumParams(),
                     cell_ids: np.ndarray | None = None) -> pd.DataFrame:
    """Per cell: peak dF/F0, time to peak (after the baseline), area under the curve, responder."""
    after = dff[:, params.baseline_frames :]
    peak_index = np.nanargmax(after, axis=1) if after.size else np.zeros(len(dff), int)
    peak = after[np.arange(len(dff)), peak_index] if after.size else np.zeros(len(dff))
    auc = np.trapezoid(np.nan_to_num(after), dx=params.frame_interval_s, axis=1)
    return pd.DataFrame({
        "cell": np.arange(1, len(dff) + 1) if cell_ids is None else cell_ids,
        "peak_dff": peak,
        "time_to_peak_s": (peak_index + 1) * params.frame_interval_s,
        "auc_dff_s": auc,
        "responder": peak > params.responder_threshold,
    })


def measure_calcium_movie(movie: np.ndarray, params: CalciumParams = CalciumParams(),
                    labels: np.ndarray | None = None) -> CalciumResult:
    """Segment (unless ``labels``, the user's own cell masks, are given), extract traces, normalise and measure
    one movie."""
    _check_movie(movie)
    if params.motion_correction:
        movie, _ = register_frames(movie, params.baseline_frames)
    labels = segment_cells(movie, params) if labels is None else check_cell_masks(labels, movie.shape)
    cell_ids, traces, background = cell_mean_traces(movie.astype(np.float64), labels)
    raw = traces - background[None, :]
    dff = delta_f_over_f0(raw, params)
    return CalciumResult(labels=labels, cell_ids=cell_ids, raw=raw, dff=dff,
                         metrics=response_metrics(dff, params, cell_ids))


def group_curves(dff_by_group: dict[str, np.ndarray], frame_interval_s: float = 1.0) -> pd.DataFrame:
    """Mean and SEM of dF/F0 over the cells of each group, per frame (long format)."""
    rows = []
    for group, dff in dff_by_group.items():
        n = np.sum(np.isfinite(dff), axis=0)
        mean = np.nanmean(dff, axis=0)
        sem = np.nanstd(dff, axis=0, ddof=1) / np.sqrt(np.maximum(n, 1)) if len(dff) > 1 else np.zeros_like(mean)
        rows.append(pd.DataFrame({"group": group, "frame": np.arange(dff.shape[1]),
                                  "time_s": np.arange(dff.shape[1]) * frame_interval_s,
                                  "mean_dff": mean, "sem_dff": sem, "n_cells": n}))
    return pd.concat(rows, ignore_index=True)
