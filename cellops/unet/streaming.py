"""Segmenting EM volumes larger than memory: a TIFF stack is read slab by slab (only the pages a slab needs) and the
mask is written slab by slab, so peak memory is bounded by one slab and the tile batch, not by the volume.

The result equals :func:`cellops.unet.predict.segment` on the whole volume: the U-Net is 2-D, and z-smoothing gets
the neighbouring slices it needs as a halo read with each slab.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from torch import nn

from cellops.unet.predict import InferenceSettings, predict_probabilities


@dataclass(frozen=True)
class VolumeInfo:
    """Shape and dtype of a stack on disk, read from its header alone."""

    shape: tuple[int, ...]
    dtype: np.dtype


def volume_info(path: str | Path) -> VolumeInfo:
    """The (Z, Y, X) shape and dtype of the TIFF stack at ``path``, without reading its pixels; a clear error for
    anything that is not a single grey stack."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = tuple(series.shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise ValueError(f"{path}: a (Z, Y, X) grey stack is expected, its first series has shape {shape} "
                             f"({series.axes})")
        return VolumeInfo(shape, np.dtype(series.dtype))


def read_slab(path: str | Path, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` of the TIFF stack, reading only their pages (memory-mapped where the file is
    uncompressed and contiguous)."""
    try:
        return np.asarray(tifffile.memmap(path, mode="r")[start:stop])
    except (ValueError, tifffile.TiffFileError):  # compressed or tiled: read the pages one by one
        with tifffile.TiffFile(path) as tif:
            return tif.asarray(key=range(start, stop)).reshape(stop - start, *tif.pages[0].shape[-2:])


def segment_volume_file(model: nn.Module, source: str | Path, out: str | Path, settings: InferenceSettings, *,
                        slab: int = 8, device: str = "cpu",
                        on_slab: Callable[[int, int], None] | None = None) -> VolumeInfo:
    """Segment the TIFF stack ``source`` into a uint8 mask TIFF ``out`` (255 foreground), ``slab`` slices at a time.

    ``out`` is written to a temporary name beside it and renamed when complete, so an interrupted run never leaves
    a truncated mask under the final name. ``on_slab(done, total)`` reports progress.

    Examples
    --------
    >>> import tempfile
    >>> from cellops.inference import prepare_for_inference
    >>> from models.unet import UNet
    >>> folder = Path(tempfile.mkdtemp())
    >>> tifffile.imwrite(folder / "v.tif", np.zeros((5, 40, 48), np.uint8))
    >>> model = prepare_for_inference(UNet(base_channels=4, depth=2))
    >>> settings = InferenceSettings(tile_size=32, tile_overlap=0.25, batch_size=4, threshold=0.5)
    >>> segment_volume_file(model, folder / "v.tif", folder / "mask.tif", settings, slab=2).shape
    (5, 40, 48)
    >>> tifffile.imread(folder / "mask.tif").shape
    (5, 40, 48)
    """
    if slab < 1:
        raise ValueError(f"slab must be at least 1 slice, got {slab}")
    info = volume_info(source)
    depth = info.shape[0]
    halo = settings.z_smoothing // 2
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    with tifffile.TiffWriter(partial, bigtiff=True) as writer:
        for start in range(0, depth, slab):
            stop = min(depth, start + slab)
            first, last = max(0, start - halo), min(depth, stop + halo)
            probabilities = predict_probabilities(model, read_slab(source, first, last), settings, device)
            mask = probabilities[start - first:stop - first] > settings.threshold
            for page in mask:  # 2-D pages appended to one contiguous series: a (Z, Y, X) stack for any reader
                writer.write((page * np.uint8(255)).astype(np.uint8), contiguous=True, photometric="minisblack")
            if on_slab is not None:
                on_slab(stop, depth)
    os.replace(partial, out)
    return info
