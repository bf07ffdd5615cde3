"""Calcium-influx analysis of time-lapse fluorescence stacks.

Cells are segmented once, on a projection of the movie (the same adaptive segmenter as nuclei); each cell's
mean intensity is read in every frame; the background (median of the pixels outside cells, per frame) is
subtracted; optionally photobleaching is divided out; F0 is the mean of the baseline frames (or a low
percentile of the whole trace); dF/F0 = (F - F0) / F0. Per cell: peak dF/F0, time to peak, area under the
curve, responder yes/no; per group: mean +- SEM curves.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    cell_diameter_px : typical cell diameter in pixels (drives the segmenter's sizes).
    threshold : ``"otsu"`` or ``"local"``, as for nuclei.
    baseline_frames : frames ``[0, baseline_frames)`` before stimulation, used for F0 and bleaching.
    f0_method : ``"baseline"`` (mean of the baseline frames) or ``"percentile"``.
    f0_percentile : percentile of the trace taken as F0 with ``f0_method="percentile"``.
    bleach_correction : ``"none"`` or ``"baseline_exponential"`` (an exponential fitted to the mean baseline
        of all cells, extrapolated over the recording and divided out).
    frame_interval_s : seconds between frames, for times and areas in seconds.
    responder_threshold : peak dF/F0 above which a cell counts as responding.
    """

    projection: str = "mean"
    cell_diameter_px: float = 24.0
    threshold: str = "otsu"
    baseline_frames: int = 15
    f0_method: str = "baseline"
    f0_percentile: float = 10.0
    bleach_correction: str = "baseline_exponential"
    frame_interval_s: float = 1.0
    responder_threshold: float = 0.3


@dataclass
class CalciumResult:
    """``labels`` (H, W) cell labels; ``raw`` (n_cells, T) background-subtracted mean intensities;
    ``dff`` (n_cells, T) dF/F0; ``metrics`` one row per cell."""

    labels: np.ndarray
    raw: np.ndarray
    dff: np.ndarray
    metrics: pd.DataFrame


def segment_cells(movie: np.ndarray, params: CalciumParams = CalciumParams()) -> np.ndarray:
    """Cell labels from a projection of a (T, H, W) movie."""
    if movie.ndim != 3 or movie.shape[0] < 2:
        raise ImageInputError(f"expected a time-lapse stack (frames, rows, columns), got shape {movie.shape}")
    projections = {"mean": lambda m: m.mean(axis=0), "max": lambda m: m.max(axis=0), "first": lambda m: m[0]}
    if params.projection not in projections:
        raise ValueError(f"unknown projection {params.projection!r}: expected one of {sorted(projections)}")
    reference = projections[params.projection](movie.astype(np.float32))
    return segment_nuclei(reference, NucleusParams(nucleus_diameter_px=params.cell_diameter_px,
                                                   threshold=params.threshold))


def cell_mean_traces(movie: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean intensity of every cell in every frame, and the per-frame background (median outside cells).

    Returns
    -------
    (traces, background): (n_cells, T) and (T,) float64.
    """
    n_cells = int(labels.max())
    index = np.arange(1, n_cells + 1)
    outside = labels == 0
    traces = np.empty((n_cells, movie.shape[0]))
    background = np.empty(movie.shape[0])
    for t, frame in enumerate(movie):
        traces[:, t] = ndimage.mean(frame, labels, index) if n_cells else []
        background[t] = float(np.median(frame[outside])) if outside.any() else 0.0
    return traces, background


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


def response_metrics(dff: np.ndarray, params: CalciumParams = CalciumParams()) -> pd.DataFrame:
    """Per cell: peak dF/F0, time to peak (after the baseline), area under the curve, responder."""
    after = dff[:, params.baseline_frames :]
    peak_index = np.nanargmax(after, axis=1) if after.size else np.zeros(len(dff), int)
    peak = after[np.arange(len(dff)), peak_index] if after.size else np.zeros(len(dff))
    auc = np.trapezoid(np.nan_to_num(after), dx=params.frame_interval_s, axis=1)
    return pd.DataFrame({
        "cell": np.arange(1, len(dff) + 1),
        "peak_dff": peak,
        "time_to_peak_s": (peak_index + 1) * params.frame_interval_s,
        "auc_dff_s": auc,
        "responder": peak > params.responder_threshold,
    })


def measure_calcium_movie(movie: np.ndarray, params: CalciumParams = CalciumParams(),
                    labels: np.ndarray | None = None) -> CalciumResult:
    """Segment (unless ``labels`` are given), extract traces, normalise and measure one movie."""
    if labels is None:
        labels = segment_cells(movie, params)
    traces, background = cell_mean_traces(movie.astype(np.float64), labels)
    raw = traces - background[None, :]
    dff = delta_f_over_f0(raw, params)
    return CalciumResult(labels=labels, raw=raw, dff=dff, metrics=response_metrics(dff, params))


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
