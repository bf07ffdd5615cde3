"""The U-Net in faster CPU runtimes (:mod:`cellops.runtimes`), each checked on the test volume: foreground IoU
within a tolerance of torch fp32's, timed over the whole sliding-window segmentation of that volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cellops.intensity import Normalization
from cellops.runtimes import RuntimeCheck, default_skips, export_runtime_files, load_runtime, measure_runtimes
from cellops.unet.predict import load_for_inference, score
from cellops.unet.specs import UNetServing


def calibration_tiles(volume: np.ndarray, tile_size: int, normalization: Normalization, *, batches: int = 8,
                      batch_size: int = 4, seed: int = 0) -> list[np.ndarray]:
    """``batches`` batches of random ``tile_size`` tiles (N, 1, T, T) of ``volume``, normalised as served, for int8
    calibration.

    Parameters
    ----------
    volume : np.ndarray
        Stack (Z, Y, X) or image (Y, X) whose slices are at least ``tile_size`` on each side.
    tile_size : int
        Side of the tiles.
    normalization : Normalization
        How the volume is scaled, as served.
    batches : int, optional
        Number of batches.
    batch_size : int, optional
        Tiles per batch.
    seed : int, optional
        Seed of the tile positions.

    Returns
    -------
    list of np.ndarray
        float32 batches (batch_size, 1, tile_size, tile_size).

    Examples
    --------
    >>> volume = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    >>> tiles = calibration_tiles(volume, 32, Normalization(), batches=2, batch_size=3)
    >>> len(tiles), tiles[0].shape, tiles[0].dtype
    (2, (3, 1, 32, 32), dtype('float32'))
    """
    unit = normalization.apply(volume if volume.ndim == 3 else volume[None])
    rng = np.random.default_rng(seed)
    depth, height, width = unit.shape
    if height < tile_size or width < tile_size:
        raise ValueError(f"calibration slices of {height}x{width} are smaller than a {tile_size} px tile")
    batches_out = []
    for _ in range(batches):
        z = rng.integers(0, depth, batch_size)
        y = rng.integers(0, height - tile_size + 1, batch_size)
        x = rng.integers(0, width - tile_size + 1, batch_size)
        batches_out.append(np.stack([unit[a, b:b + tile_size, c:c + tile_size] for a, b, c in zip(z, y, x)])[:, None]
                           .astype(np.float32))
    return batches_out


def export_unet(model: nn.Module, calibration_volume: np.ndarray, settings: UNetServing,
                folder: str | Path) -> nn.Module:
    """Fold ``model`` for inference and write its fp32 and int8 ONNX graphs (tiles of the settings' size, any batch)
    into ``folder``; returns the folded torch model.

    Parameters
    ----------
    model : nn.Module
        The trained U-Net (left as it is).
    calibration_volume : np.ndarray
        Stack whose tiles calibrate the int8 quantisation (:func:`calibration_tiles`).
    settings : UNetServing
        Tile size, batch size and normalisation, as served.
    folder : str or Path
        Where the runtime files are written.

    Returns
    -------
    nn.Module
        The model prepared for inference (:func:`cellops.unet.predict.load_for_inference`).
    """
    fast = load_for_inference(model)
    tile = settings.tile_size
    example = torch.zeros(settings.batch_size, 1, tile, tile).contiguous(memory_format=torch.channels_last)
    export_runtime_files(fast, example, calibration_tiles(calibration_volume, tile, settings.normalization), folder)
    return fast


def runtime_checks(model: nn.Module, calibration_volume: np.ndarray, test_image: np.ndarray,
                        test_mask: np.ndarray, settings: UNetServing, folder: str | Path, *,
                        runtimes: tuple[str, ...], tolerance: float, repeats: int = 1) -> list[RuntimeCheck]:
    """Export the U-Net into ``folder`` and measure each runtime on the test volume (metric: foreground IoU,
    ``tolerance``: the largest IoU change accepted, either way).

    Parameters
    ----------
    model : nn.Module
        The trained U-Net.
    calibration_volume : np.ndarray
        Stack for int8 calibration (not the test volume).
    test_image : np.ndarray
        Test stack segmented by every runtime.
    test_mask : np.ndarray
        Its ground truth (non-zero = foreground).
    settings : UNetServing
        How the U-Net is applied, as served.
    folder : str or Path
        Where the runtime files are written.
    runtimes : tuple of str
        Names of the runtimes to measure (:mod:`cellops.runtimes`).
    tolerance : float
        Largest foreground-IoU change from torch fp32 accepted.
    repeats : int, optional
        Timed repetitions of each segmentation.

    Returns
    -------
    list of RuntimeCheck
        One result per runtime: metric, time, and whether it stayed within ``tolerance``.
    """
    fast = export_unet(model, calibration_volume, settings, folder)

    def evaluate(module: nn.Module) -> float:
        return score(module, test_image, test_mask, settings)[0].foreground_iou

    return measure_runtimes(lambda runtime: load_runtime(runtime, folder, fast), evaluate, runtimes, tolerance,
                            repeats=repeats, untimed=default_skips(runtimes))
