"""Segmenting EM volumes larger than memory: a TIFF stack (memory-mapped) or a zarr array is read slab by slab (only
the pages or chunks a slab needs) and the mask is written slab by slab, so peak memory is bounded by one slab and the
tile batch, not by the volume.

The result equals :func:`cellops.unet.predict.segment` on the whole volume: the U-Net is 2-D, and z-smoothing gets
the neighbouring slices it needs as a halo read with each slab, and the intensity normalisation the whole volume's
percentiles (:func:`volume_bounds`, one pass over the slabs first).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from torch import nn

from cellops.intensity import Normalization, dtype_bounds, integer_histogram, percentile_bounds
from cellops.microscopy import physical_pixel_sizes, write_ome_zarr
from cellops.ood import OODReference, Verdict
from cellops.unet.predict import predict_probabilities
from cellops.unet.specs import UNetServing


@dataclass(frozen=True)
class VolumeInfo:
    """Shape and dtype of a stack on disk, read from its header alone.

    Attributes
    ----------
    shape : tuple of int
        (Z, Y, X).
    dtype : np.dtype
        Voxel type.
    """

    shape: tuple[int, ...]
    dtype: np.dtype


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and any((path / n).exists() for n in ("zarr.json", ".zarray")))


def _open_zarr(path: Path):
    import zarr

    try:
        array = zarr.open_array(path, mode="r")
    except Exception as error:  # zarr raises several types for "not an array here"
        raise ValueError(f"{path}: not a readable zarr array ({type(error).__name__}: {error})") from None
    return array


def volume_info(path: str | Path) -> VolumeInfo:
    """The (Z, Y, X) shape and dtype of the TIFF stack or zarr array at ``path``, without reading its pixels; a
    clear error for anything that is not a single grey stack.

    Parameters
    ----------
    path : str or Path
        A TIFF file or a zarr array; a 2-D image counts as a stack of one slice.

    Returns
    -------
    VolumeInfo
        Its (Z, Y, X) shape and dtype.

    Raises
    ------
    ValueError
        When the file is not a single (Z, Y, X) grey stack or not a readable zarr array.
    """
    path = Path(path)
    if _is_zarr(path):
        array = _open_zarr(path)
        shape, axes = tuple(array.shape), "zarr array"
        dtype = np.dtype(array.dtype)
    else:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"{path}: a (Z, Y, X) grey stack is expected, its first series has shape {shape} ({axes})")
    return VolumeInfo(shape, dtype)


def read_slab(path: str | Path, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` of the TIFF stack or zarr array, reading only their pages or chunks (TIFF:
    memory-mapped where the file is uncompressed and contiguous). Always an in-memory copy: nothing of the file
    stays mapped once the slab is processed.

    Parameters
    ----------
    path : str or Path
        A TIFF stack or a zarr array.
    start : int
        First slice.
    stop : int
        Slice after the last one.

    Returns
    -------
    np.ndarray
        The slices (stop - start, Y, X).
    """
    path = Path(path)
    if _is_zarr(path):
        array = _open_zarr(path)
        return np.array(array[start:stop] if array.ndim == 3 else array[None][start:stop])
    try:
        return np.array(tifffile.memmap(path, mode="r")[start:stop])
    except (ValueError, tifffile.TiffFileError):  # compressed or tiled: read the pages one by one
        with tifffile.TiffFile(path) as tif:
            return tif.asarray(key=range(start, stop)).reshape(stop - start, *tif.pages[0].shape[-2:])


def volume_bounds(source: str | Path, normalization: Normalization, *, slab: int = 8) -> tuple[float, float]:
    """The values :class:`cellops.intensity.Normalization` maps to 0 and 1 for the whole volume at ``source``, read
    slab by slab: exactly those of the volume read whole (8- and 16-bit volumes add up their slabs' histograms; a
    float volume in percentile mode is gathered once, at 4 bytes a voxel).

    Parameters
    ----------
    source : str or Path
        A TIFF stack or a zarr array.
    normalization : Normalization
        Mode and percentiles, as served.
    slab : int, optional
        Slices read at a time.

    Returns
    -------
    tuple of float
        The values mapped to 0 and to 1.
    """
    info = volume_info(source)
    depth = info.shape[0]
    slabs = ((start, min(depth, start + slab)) for start in range(0, depth, slab))
    if info.dtype.kind == "u" and info.dtype.itemsize <= 2:
        if normalization.mode == "dtype":
            return dtype_bounds(np.zeros(1, info.dtype))
        histogram = sum(integer_histogram(read_slab(source, a, b)) for a, b in slabs)
        return percentile_bounds(np.zeros(1, info.dtype), normalization.low, normalization.high, source=str(source),
                                 histogram=histogram)
    if normalization.mode == "dtype":
        for a, b in slabs:
            part = read_slab(source, a, b)
            dtype_bounds(part, source=str(source))  # names the first slab outside [0, 1] (or of another dtype)
        return 0.0, 1.0
    values = np.concatenate([read_slab(source, a, b).astype(np.float32).ravel() for a, b in slabs])
    return percentile_bounds(values, normalization.low, normalization.high, source=str(source))


def segment_volume_file(model: nn.Module, source: str | Path, out: str | Path, settings: UNetServing, *,
                        slab: int = 8, device: str = "cpu",
                        on_slab: Callable[[int, int], None] | None = None,
                        on_mask: Callable[[int, np.ndarray], None] | None = None,
                        on_probabilities: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                        bounds: tuple[float, float] | None = None) -> VolumeInfo:
    """Segment the TIFF stack or zarr array ``source`` into a uint8 mask OME-TIFF ``out`` (255 foreground, the
    source's voxel size), ``slab`` slices at a time.

    ``out`` is written to a temporary name beside it and renamed when complete, so an interrupted run never leaves
    a truncated mask under the final name. ``on_slab(done, total)`` reports progress; ``on_mask(start, mask)``
    receives each slab's boolean mask and ``on_probabilities(start, slices, probabilities)`` its raw slices and
    their probabilities (for statistics gathered on the way).

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference.
    source : str or Path
        A TIFF stack or a zarr array of 8- or 16-bit integers or floats.
    out : str or Path
        The mask TIFF to write.
    settings : UNetServing
        How the U-Net is applied, as served.
    slab : int, optional
        Slices segmented at a time.
    device : str, optional
        Where the model is.
    on_slab : callable, optional
        ``on_slab(done, total)`` after each slab.
    on_mask : callable, optional
        ``on_mask(start, mask)`` with each slab's boolean mask.
    on_probabilities : callable, optional
        ``on_probabilities(start, slices, probabilities)`` with each slab's raw slices and their probabilities.
    bounds : tuple of float, optional
        The normalisation bounds, when already computed (:func:`volume_bounds` of ``source``).

    Returns
    -------
    VolumeInfo
        Shape and dtype of ``source``.

    Examples
    --------
    >>> import tempfile
    >>> from cellops.inference import prepare_for_inference
    >>> from models.unet import UNet
    >>> folder = Path(tempfile.mkdtemp())
    >>> tifffile.imwrite(folder / "v.tif", np.zeros((5, 40, 48), np.uint8))
    >>> model = prepare_for_inference(UNet(base_channels=4, depth=2))
    >>> settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)
    >>> segment_volume_file(model, folder / "v.tif", folder / "mask.tif", settings, slab=2).shape
    (5, 40, 48)
    >>> tifffile.imread(folder / "mask.tif").shape
    (5, 40, 48)
    """
    if slab < 1:
        raise ValueError(f"slab must be at least 1 slice, got {slab}")
    info = volume_info(source)
    if info.dtype.kind not in "uf":
        raise ValueError(f"{source}: {info.dtype} voxels; a grey EM volume of 8- or 16-bit integers or floats is "
                         "expected")
    depth = info.shape[0]
    if bounds is None:
        bounds = volume_bounds(source, settings.normalization, slab=slab)  # the whole volume's, as if read whole
    halo = settings.z_smoothing // 2
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")

    def pages():
        for start in range(0, depth, slab):
            stop = min(depth, start + slab)
            first, last = max(0, start - halo), min(depth, stop + halo)
            slices = read_slab(source, first, last)
            probabilities = predict_probabilities(model, slices, settings, device, bounds=bounds)
            core = slice(start - first, stop - first)
            mask = probabilities[core] >= settings.threshold
            if on_probabilities is not None:
                on_probabilities(start, slices[core], probabilities[core])
            if on_mask is not None:
                on_mask(start, mask)
            yield from (mask * np.uint8(255)).astype(np.uint8)
            if on_slab is not None:
                on_slab(stop, depth)

    # One OME-TIFF series written page by page as the slabs come (memory stays one slab), with the source's own
    # voxel size, so napari and Fiji lay the mask over the volume at its scale.
    sizes = physical_pixel_sizes(source)
    metadata = {"axes": "ZYX", **{f"PhysicalSize{axis}": size for axis, size in sizes.items()},
                **{f"PhysicalSize{axis}Unit": "µm" for axis in sizes}}
    with tifffile.TiffWriter(partial, bigtiff=True, ome=True) as writer:
        writer.write(pages(), shape=info.shape, dtype=np.uint8, photometric="minisblack", metadata=metadata)
    os.replace(partial, out)
    return info


#: Slices of a volume whose features make its out-of-distribution verdict (evenly spaced, as
#: :func:`cellops.ood.grey_planes` picks a stack's).
VERDICT_SLICES = 8


def verdict_slices(depth: int, count: int = VERDICT_SLICES) -> list[int]:
    """The slices of a ``depth``-slice volume its verdict is taken from: ``count`` evenly spaced, ends included.

    Examples
    --------
    >>> verdict_slices(100), verdict_slices(3)
    ([0, 14, 28, 42, 57, 71, 85, 99], [0, 1, 2])
    """
    return np.unique(np.linspace(0, depth - 1, min(count, depth)).round().astype(int)).tolist()


class VolumeVerdict:
    """A volume's out-of-distribution verdict, gathered as its slabs are segmented: each of the
    :func:`verdict_slices` is described as a 2-D image would be when served
    (:func:`cellops.unet.ood.image_features` of the slice normalised with the volume's bounds, and its
    probabilities), and the verdict is that of the mean of those features. The reference is fitted on 2-D crops of
    training slices, so each slice is on its scale; averaging keeps the verdict's cost at a few slices whatever the
    depth. Slices too small or uniform to score are left out (all of them: the verdict says why, unscored).

    Parameters
    ----------
    reference : OODReference or None
        The model version's reference (None: the verdict says it has none, and nothing is computed).
    settings : UNetServing
        As served.
    depth : int
        Slices of the volume.
    bounds : tuple of float
        The volume's normalisation bounds (:func:`volume_bounds`).
    """

    def __init__(self, reference: OODReference | None, settings: UNetServing, depth: int,
                 bounds: tuple[float, float]) -> None:
        self.reference, self.settings, self.bounds = reference, settings, bounds
        self.picked = set(verdict_slices(depth)) if reference is not None else set()
        self.rows: list[np.ndarray] = []
        self.reasons: list[str] = []

    def add(self, start: int, slices: np.ndarray, probabilities: np.ndarray) -> None:
        """Describe the picked slices among ``slices`` (raw, the first being slice ``start``) and their
        probabilities (a callback of :func:`segment_volume_file`)."""
        from cellops.ood import unscorable_reason
        from cellops.unet.ood import image_features

        for offset in range(len(slices)):
            if start + offset not in self.picked:
                continue
            unit = self.settings.normalization.apply(slices[offset], bounds=self.bounds)
            reason = unscorable_reason(unit)
            if reason is not None:
                self.reasons.append(f"slice {start + offset}: {reason}")
                continue
            self.rows.append(image_features(unit, probabilities[offset], self.settings.threshold))

    def verdict(self) -> Verdict:
        """The verdict of the mean features of the slices described."""
        from cellops.ood import no_reference_verdict

        if self.reference is None:
            return no_reference_verdict()
        if not self.rows:
            return Verdict(None, self.reference.threshold, None,
                           "; ".join(self.reasons) or "no slice could be described")
        judged = self.reference.verdict(np.mean(self.rows, axis=0))
        return Verdict(judged.ood_score, judged.threshold, judged.in_distribution,
                       f"{judged.reason}; mean features of {len(self.rows)} evenly spaced slices")


def segment_volume_to_files(model: nn.Module, source: str | Path, out_dir: str | Path, stem: str,
                            settings: UNetServing, *, slab: int = 8, device: str = "cpu",
                            reference: OODReference | None = None, policy: str = "flag") -> dict:
    """Segment ``source`` into ``<stem>_mask.tif`` (OME-TIFF), ``<stem>_mask.ome.zarr`` (the same mask as OME-Zarr;
    both with the source's voxel size) and ``<stem>_slices.csv`` (foreground fraction per slice) under
    ``out_dir``: a batch predictor (:func:`cellops.batch.run_batch`); returns the outputs, the volume's shape and
    mitochondria volume fraction, and its out-of-distribution verdict (:class:`VolumeVerdict`: from the slices
    and probabilities of the segmentation itself, no second pass).

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference.
    source : str or Path
        A TIFF stack or a zarr array.
    out_dir : str or Path
        Folder of the outputs.
    stem : str
        Prefix of the output names.
    settings : UNetServing
        How the U-Net is applied, as served.
    slab : int, optional
        Slices segmented at a time.
    device : str, optional
        Where the model is.
    reference : OODReference, optional
        The model version's OOD reference (None: it has none, and the verdict says so).
    policy : str, optional
        ``flag`` (answer and flag) or ``refuse``: a volume out of distribution raises
        :class:`cellops.ood.OutOfDistribution` (a ValueError) and its mask is removed.

    Returns
    -------
    dict
        ``outputs`` (the file names written), ``shape`` (``"ZxYxX"``), ``foreground_fraction``, then
        ``ood_score``, ``ood_threshold``, ``in_distribution`` and ``ood_reason``.
    """
    import pandas as pd

    from cellops.ood import check_policy, enforce

    check_policy(policy)
    out_dir = Path(out_dir)
    fractions: list[float] = []
    mask_file = out_dir / f"{stem}_mask.tif"
    bounds = volume_bounds(source, settings.normalization, slab=slab)
    judge = VolumeVerdict(reference, settings, volume_info(source).shape[0], bounds)
    info = segment_volume_file(model, source, mask_file, settings, slab=slab, device=device, bounds=bounds,
                               on_mask=lambda start, mask: fractions.extend(mask.mean(axis=(1, 2)).tolist()),
                               on_probabilities=judge.add if reference is not None else None)
    try:
        verdict = enforce(judge.verdict(), policy)
    except ValueError:
        mask_file.unlink(missing_ok=True)
        raise
    # The same mask as OME-Zarr, chunked plane by plane, copied from the memory-mapped TIFF (never whole in memory).
    write_ome_zarr(out_dir / f"{stem}_mask.ome.zarr", tifffile.memmap(mask_file, mode="r"), axes="ZYX",
                   pixel_size_um=physical_pixel_sizes(mask_file) or None, overwrite=True)
    table = pd.DataFrame({"slice": range(len(fractions)), "foreground_fraction": np.round(fractions, 6)})
    table.to_csv(out_dir / f"{stem}_slices.csv", index=False)
    return {"outputs": [f"{stem}_mask.tif", f"{stem}_mask.ome.zarr", f"{stem}_slices.csv"],
            "shape": "x".join(map(str, info.shape)), "foreground_fraction": round(float(np.mean(fractions)), 6),
            **verdict.as_dict()}
