"""Synthetic calcium-influx time-lapse stacks (e.g. Fluo-4) of keratinocyte-like cells in three groups.

Each cell has a resting fluorescence F0 and a known response trace dF/F0(t): flat baseline, onset at a
group-dependent time, exponential rise to a peak, then a plateau or a decay. The movie is the cells'
F0 * (1 + dF/F0) on a dim background, times a photobleaching decay, with a slow background drift, a
sub-pixel stage drift and shot and read noise. Ground truth: the cell label image and every cell's
dF/F0 trace (bleach-free, noise-free). Computed in float64, so the bytes are the same on every CPU (see
:mod:`cellops.synthetic.em`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from cellops.io import encode_image, write_files_safely

#: Group -> (median peak dF/F0, fraction of responding cells, onset frame range).
GROUP_RESPONSES: dict[str, tuple[float, float, tuple[int, int]]] = {
    "Control": (0.6, 0.7, (25, 40)),
    "Coating": (1.0, 0.85, (22, 35)),
    "Film": (1.6, 0.95, (20, 30)),
}


@dataclass(frozen=True)
class CalciumMovie:
    """``movie`` uint16 (T, H, W); ``labels`` int32 (H, W); ``traces`` (n_cells, T) float64 true dF/F0 of
    cell ``i + 1``; ``cells`` one row per cell (F0, responder, onset, peak)."""

    movie: np.ndarray
    labels: np.ndarray
    traces: np.ndarray
    cells: pd.DataFrame


def response_trace(n_frames: int, onset: float, peak: float, rise_frames: float, decay_frames: float | None) -> np.ndarray:
    """dF/F0 over time: 0 before ``onset``, rising with time constant ``rise_frames`` towards ``peak``,
    then decaying with ``decay_frames`` (a plateau when None).

    >>> trace = response_trace(10, onset=2, peak=1.0, rise_frames=0.5, decay_frames=None)
    >>> trace[:3].tolist(), bool(trace[-1] > 0.99)
    ([0.0, 0.0, 0.0], True)
    """
    t = np.arange(n_frames, dtype=np.float64) - onset
    rising = np.where(t > 0, 1.0 - np.exp(-np.clip(t, 0, None) / rise_frames), 0.0)
    if decay_frames is not None:
        rising *= np.where(t > 0, np.exp(-np.clip(t, 0, None) / decay_frames), 1.0)
        rising /= max(1e-9, float(rising.max()))
    return peak * rising


def generate_calcium_movie(
    group: str,
    shape: tuple[int, int] = (256, 256),
    *,
    n_frames: int = 120,
    seed: int = 0,
    n_cells: int = 24,
    bleach_per_frame: float = 0.0015,
    noise_sigma: float = 0.01,
    size_scale: float = 1.0,
    size_spread: float = 0.0,
    drift_px: float = 0.0,
    background_drift: float = 0.0,
    photons: float = 2000.0,
) -> CalciumMovie:
    """Draw one calcium time-lapse of ``group`` (a key of :data:`GROUP_RESPONSES`).

    ``size_scale`` scales the cells (semi-axes 9-16 by 7-12 px by default); ``size_spread`` mixes sizes (the
    standard deviation of each cell's log size factor); ``drift_px`` moves the stage slowly in one direction
    by that many pixels over the recording (on top of the sub-pixel jitter); ``background_drift`` raises the
    background by that fraction over the recording; ``photons`` per unit brightness sets the shot noise.

    Examples
    --------
    >>> m = generate_calcium_movie("Film", (96, 96), n_frames=20, n_cells=4, seed=0)
    >>> m.movie.shape, m.traces.shape[1], int(m.labels.max()) == len(m.traces)
    ((20, 96, 96), 20, True)
    """
    if group not in GROUP_RESPONSES:
        raise ValueError(f"unknown group {group!r}; expected one of {sorted(GROUP_RESPONSES)}")
    rng = np.random.default_rng(seed)
    # Draws for the optional features come from their own stream: default movies stay byte-identical.
    extra = np.random.default_rng([seed, 1])
    peak_median, responder_fraction, onset_range = GROUP_RESPONSES[group]
    height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    labels = np.zeros(shape, np.int32)
    resting = np.zeros(shape, np.float64)
    rows, traces = [], []
    for _ in range(n_cells * 30):
        if len(rows) == n_cells:
            break
        a, b = rng.uniform(9, 16), rng.uniform(7, 12)
        if size_scale != 1.0 or size_spread:
            factor = size_scale * float(np.exp(extra.normal(0, size_spread))) if size_spread else size_scale
            a, b = a * factor, b * factor
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(a + 2, height - a - 2), rng.uniform(a + 2, width - a - 2)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        if (ndimage.binary_dilation(inside, iterations=3) & (labels > 0)).any():
            continue
        f0 = rng.uniform(0.15, 0.35)
        labels[inside] = len(rows) + 1
        resting[inside] = f0 * (0.9 + 0.2 * rng.random(int(inside.sum())))
        responder = bool(rng.random() < responder_fraction)
        peak = float(peak_median * np.exp(rng.normal(0, 0.25))) if responder else float(rng.uniform(0.05, 0.15))
        onset = float(rng.uniform(*onset_range))
        decay = None if rng.random() < 0.4 else float(rng.uniform(30, 90))
        traces.append(response_trace(n_frames, onset, peak, float(rng.uniform(2, 6)), decay))
        rows.append({"cell": len(rows) + 1, "f0": f0, "responder": responder, "onset_frame": onset,
                     "peak_dff": peak, "plateau": decay is None, "group": group})
    trace_array = np.array(traces)
    resting = ndimage.gaussian_filter(resting, 1.0)
    background = 0.05 * (1 + 0.2 * (xx / width))
    drift = np.cumsum(rng.normal(0, 0.05, (n_frames, 2)), axis=0)  # sub-pixel stage drift
    if drift_px:
        heading = extra.uniform(0, 2 * np.pi)
        drift = drift + np.outer(np.linspace(0, drift_px, n_frames), [np.sin(heading), np.cos(heading)])
    movie = np.empty((n_frames, height, width), np.float64)
    for t in range(n_frames):
        gain = np.zeros(shape, np.float64)
        gain[labels > 0] = trace_array[labels[labels > 0] - 1, t]
        frame = ndimage.shift(resting * (1 + gain), drift[t], order=1, mode="nearest")
        bleach = np.exp(-bleach_per_frame * t)
        frame = (frame * bleach + background * (1 + 0.001 * t + background_drift * t / max(1, n_frames - 1))) * photons
        movie[t] = (rng.poisson(frame) + rng.normal(0, noise_sigma * photons, shape)) * (2000 / photons)
    return CalciumMovie(
        movie=np.clip(np.rint(movie * 10), 0, 65535).astype(np.uint16),
        labels=labels,
        traces=trace_array,
        cells=pd.DataFrame(rows),
    )


def write_calcium_dataset(root: str | Path, *, movies_per_group: int = 2, shape: tuple[int, int] = (256, 256),
                          n_frames: int = 120, seed: int = 0, overwrite: bool = False) -> dict[str, Path]:
    """Write ``<group>/calcium_NNN.tif`` (T, H, W), ``..._labels.tif``, ``..._traces.csv`` (true dF/F0, one
    column per cell) and ``cells.csv`` under ``root``."""
    root = Path(root)
    contents: dict[Path, bytes] = {}
    tables = []
    for g, group in enumerate(GROUP_RESPONSES):
        for i in range(movies_per_group):
            m = generate_calcium_movie(group, shape, n_frames=n_frames, seed=seed * 1000 + g * 100 + i)
            stem = f"calcium_{i:03d}"
            contents[root / group / f"{stem}.tif"] = encode_image(m.movie, "tiff")
            contents[root / group / f"{stem}_labels.tif"] = encode_image(m.labels.astype(np.uint16), "tiff")
            traces = pd.DataFrame(m.traces.T, columns=[f"cell_{c}" for c in m.cells["cell"]])
            contents[root / group / f"{stem}_traces.csv"] = traces.to_csv(index_label="frame",
                                                                         float_format="%.6g").encode()
            tables.append(m.cells.assign(movie=f"{group}/{stem}.tif"))
    contents[root / "cells.csv"] = pd.concat(tables).to_csv(index=False, float_format="%.6g").encode()
    write_files_safely(contents, overwrite=overwrite)
    return {str(path.relative_to(root)): path for path in contents}
