"""One way in and one way out for microscope files: :func:`open_image` reads TIFF, OME-TIFF, ImageJ hyperstacks,
PNG, JPEG, OME-Zarr, plain zarr arrays, ND2, CZI and LIF into a :class:`MicroscopeImage` (pixels in ``TCZYX``
order, pixel sizes in µm, channel and scene names); :func:`write_ome_tiff` and :func:`write_ome_zarr` write results
that napari and Fiji open at the input's scale.

TIFF files are read with tifffile (pixels through :func:`cellops.files.read_tiff_stack`, with its size and truncation
checks), pictures with Pillow, OME-Zarr, ND2, CZI and LIF through bioio and its reader plugins (imported only when
such a file is opened: the services import :mod:`cellops.io` and stay light).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import tifffile

from cellops.errors import ImageInputError, ImageTooLargeError
from cellops.files import _check_input_file, read_picture_file, read_tiff_stack
from cellops.units import check_pixel_size_um

#: The canonical axis order; colour samples (RGB, RGBA) are a trailing ``S``.
AXES = "TCZYX"

#: Format -> (suffixes, the package that reads it): for messages and the documentation.
SUPPORTED_FORMATS: dict[str, tuple[tuple[str, ...], str]] = {
    "ome-tiff": ((".ome.tif", ".ome.tiff"), "tifffile"),
    "imagej-tiff": ((".tif", ".tiff"), "tifffile"),
    "tiff": ((".tif", ".tiff", ".btf", ".tf8", ".lsm"), "tifffile"),
    "png": ((".png",), "Pillow"),
    "jpeg": ((".jpg", ".jpeg"), "Pillow"),
    "ome-zarr": ((".ome.zarr", ".zarr"), "bioio-ome-zarr"),
    "zarr": ((".zarr",), "zarr"),
    "nd2": ((".nd2",), "bioio-nd2"),
    "czi": ((".czi",), "bioio-czi"),
    "lif": ((".lif",), "bioio-lif"),
}

#: Microscope formats only Bio-Formats reads (bioio-bioformats, which needs a Java runtime).
JAVA_ONLY_FORMATS: dict[str, str] = {
    ".vsi": "Olympus VSI", ".ims": "Imaris", ".oib": "Olympus OIB", ".oif": "Olympus OIF",
    ".sld": "SlideBook", ".dv": "DeltaVision", ".r3d": "DeltaVision", ".zvi": "Zeiss ZVI", ".mvd2": "Volocity",
    ".lei": "Leica LEI", ".ics": "ICS", ".ids": "ICS",
}

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2", ".lsm")
_PICTURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
_BIOIO_FORMATS = {".nd2": "nd2", ".czi": "czi", ".lif": "lif"}

#: Length units of microscope metadata (OME, ImageJ, OME-NGFF spellings), in µm.
_LENGTH_UM = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "picometer": 1e-6, "in": 25400.0, "inch": 25400.0,
}
#: Time units, in seconds.
_TIME_S = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3, "millisecond": 1e-3,
    "µs": 1e-6, "us": 1e-6, "microsecond": 1e-6, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}
#: ImageJ's word for "no calibration".
_IMAGEJ_NO_UNIT = ("", "pixel", "pixels", "px")

_SAMPLE_NAMES = {1: ("grey",), 2: ("grey", "alpha"), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}


@dataclass(frozen=True)
class MicroscopeImage:
    """One scene of a microscope file, its pixels in canonical axis order and what its metadata states.

    Attributes
    ----------
    data : np.ndarray
        The pixels, axes in ``axes`` order.
    axes : str
        A subsequence of ``"TCZYX"`` plus an optional trailing ``"S"`` (colour samples). Axes of size 1 are
        dropped, except Y and X: a 2-D grey image is ``"YX"``, a TIFF stack without metadata ``"ZYX"``, an RGB
        PNG ``"YXS"``.
    pixel_size_um : dict of str to float
        The physical sizes the file states for its spatial axes (keys among ``"Z"``, ``"Y"``, ``"X"``), in µm;
        empty when it states none.
    channel_names : tuple of str
        One name per channel when the file has channels (from its metadata, else ``"C0"``, ``"C1"``...); empty
        when it has none. Kept after a channel is selected.
    channel : str or None
        The channel selected by ``open_image(channel=...)``, else None.
    time_step_s : float or None
        Seconds between time points, when the file states it.
    scenes : tuple of str
        The names of the file's scenes (series); one entry for a single-scene file.
    scene : str or None
        The scene read.
    source : Path
        The file (or OME-Zarr folder).
    format : str
        ``"ome-tiff"``, ``"imagej-tiff"``, ``"tiff"``, ``"png"``, ``"jpeg"``, ``"ome-zarr"``, ``"zarr"``,
        ``"nd2"``, ``"czi"`` or ``"lif"``.
    """

    data: np.ndarray
    axes: str
    pixel_size_um: dict[str, float]
    channel_names: tuple[str, ...]
    channel: str | None
    time_step_s: float | None
    scenes: tuple[str, ...]
    scene: str | None
    source: Path
    format: str

    @property
    def yx_pixel_size_um(self) -> float | None:
        """The in-plane pixel size in µm: the mean of Y and X when both are known and agree within 1 %, the one
        known otherwise, None when neither is. Pixels more than 1 % from square are refused (the analyses assume
        square pixels).

        Examples
        --------
        >>> image = MicroscopeImage(np.zeros((4, 4)), "YX", {"Y": 0.5, "X": 0.5}, (), None, None, ("Image:0",),
        ...                         "Image:0", Path("a.tif"), "ome-tiff")
        >>> image.yx_pixel_size_um
        0.5
        >>> replace(image, pixel_size_um={"Y": 0.5, "X": 0.7}).yx_pixel_size_um  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cellops.errors.ImageInputError: a.tif: pixels are not square: Y 0.5 µm, X 0.7 µm; ...
        """
        y, x = self.pixel_size_um.get("Y"), self.pixel_size_um.get("X")
        if y is None or x is None:
            return y if x is None else x
        if abs(y - x) > 0.01 * max(y, x):
            raise ImageInputError(f"{self.source}: pixels are not square: Y {y:g} µm, X {x:g} µm; the analyses "
                                  "assume square pixels (resample the image to square pixels)")
        return (y + x) / 2

    def single_channel(self, purpose: str) -> "MicroscopeImage":
        """This image when it has at most one channel; refused, naming its channels, when it has several.

        Parameters
        ----------
        purpose : str
            What the one channel is for (named in the message).

        Returns
        -------
        MicroscopeImage
            ``self``.

        Examples
        --------
        >>> image = MicroscopeImage(np.zeros((2, 4, 4)), "CYX", {}, ("GFP", "DAPI"), None, None, ("Image:0",),
        ...                         "Image:0", Path("a.tif"), "ome-tiff")
        >>> image.single_channel("the nuclei analysis")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cellops.errors.ImageInputError: a.tif: 2 channels (0: GFP, 1: DAPI): choose one with --channel NAME|INDEX ...
        """
        if "C" not in self.axes:
            return self
        n = self.data.shape[self.axes.index("C")]
        raise ImageInputError(f"{self.source}: {n} channels ({_listing(self.channel_names)}): choose one with "
                              f"--channel NAME|INDEX (config key `channel`) for {purpose}")

    def describe(self) -> str:
        """One line for logs: file, format, axes and shape, dtype, pixel size, channel and scene.

        Examples
        --------
        >>> MicroscopeImage(np.zeros((3, 4, 4), np.uint16), "ZYX", {"Z": 2.0, "Y": 0.5, "X": 0.5}, (), None, None,
        ...                 ("Image:0",), "Image:0", Path("a.ome.tif"), "ome-tiff").describe()
        'a.ome.tif: ome-tiff, ZYX (3, 4, 4) uint16, pixel size Z 2 Y 0.5 X 0.5 µm, scene Image:0'
        """
        sizes = (f"pixel size {' '.join(f'{axis} {size:g}' for axis, size in self.pixel_size_um.items())} µm"
                 if self.pixel_size_um else "no pixel size")
        parts = [f"{self.format}", f"{self.axes} {tuple(self.data.shape)} {self.data.dtype}", sizes]
        if self.channel is not None:
            parts.append(f"channel {self.channel}")
        elif self.channel_names:
            parts.append(f"channels {', '.join(self.channel_names)}")
        if self.time_step_s is not None:
            parts.append(f"time step {self.time_step_s:g} s")
        if self.scene is not None:
            parts.append(f"scene {self.scene}")
        return f"{self.source.name}: " + ", ".join(parts)


@dataclass
class _Read:
    """What a format's reader found, before the axes are put in canonical order and a channel is chosen."""

    data: np.ndarray | None  # None while a TIFF's metadata is checked, before its pixels are read
    axes: str
    format: str
    pixel_size_um: dict[str, float]
    channel_names: tuple[str, ...] | None  # as the metadata names them; None when it does not
    time_step_s: float | None
    scenes: tuple[str, ...]
    scene: str


def open_image(path: str | Path, *, channel: str | int | None = None,
               scene: str | int | None = None) -> MicroscopeImage:
    """Open a microscope file (or OME-Zarr folder): its pixels in ``TCZYX`` order and what its metadata states.

    Parameters
    ----------
    path : str or Path
        A TIFF, OME-TIFF or ImageJ TIFF, PNG, JPEG, ND2, CZI or LIF file, or an OME-Zarr (or plain zarr) folder.
    channel : str or int, optional
        A channel to keep (its C axis is then dropped): its exact name, else its name in any case, else its index
        (an int or a string of digits). An RGB picture's samples are the channels ``"R"``, ``"G"``, ``"B"``.
    scene : str or int, optional
        The scene (series) to read, by name or index; required for files with several scenes.

    Returns
    -------
    MicroscopeImage
        The pixels and metadata.

    Raises
    ------
    ImageInputError
        Naming the file: missing, unreadable or unsupported, a reader package not installed, a pixel size of 0,
        NaN or over 1 mm, metadata that disagrees with the pixels, an unknown channel or scene, several scenes and
        none chosen. ``ImageTooLargeError`` (a subclass) for a TIFF plane over the decompression-bomb limit.

    Examples
    --------
    >>> import tempfile
    >>> path = write_ome_tiff(Path(tempfile.mkdtemp()) / "a.ome.tif", np.zeros((2, 3, 8, 8), np.uint16),
    ...                       axes="CZYX", pixel_size_um={"Z": 2.0, "Y": 0.4, "X": 0.4}, channel_names=["GFP", "DAPI"])
    >>> image = open_image(path, channel="dapi")
    >>> image.axes, image.data.shape, image.pixel_size_um, image.channel, image.channel_names
    ('ZYX', (3, 8, 8), {'Z': 2.0, 'Y': 0.4, 'X': 0.4}, 'DAPI', ('GFP', 'DAPI'))
    >>> open_image(path, channel=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    cellops.errors.ImageInputError: ...a.ome.tif: no channel 2; its channels are 0: GFP, 1: DAPI; ...
    """
    path = Path(path)
    read = _read(path, scene)
    return _select_channel(_canonical(read, path), channel)


def physical_pixel_sizes(path: str | Path) -> dict[str, float]:
    """The physical sizes (µm) a TIFF (OME, ImageJ, LSM) or OME-Zarr states for its Z, Y and X axes, read from its
    metadata without reading its pixels (for volumes larger than memory); ``{}`` when it states none or is another
    format.

    Examples
    --------
    >>> import tempfile
    >>> path = write_ome_tiff(Path(tempfile.mkdtemp()) / "v.ome.tif", np.zeros((3, 8, 8), np.uint8), axes="ZYX",
    ...                       pixel_size_um={"Z": 1.5, "Y": 0.5, "X": 0.5})
    >>> physical_pixel_sizes(path)
    {'Z': 1.5, 'Y': 0.5, 'X': 0.5}
    """
    path = Path(path)
    if path.suffix.lower() in _TIFF_SUFFIXES and path.is_file():
        return dict(_read_tiff(path, 0, pixels=False).pixel_size_um)
    if _is_zarr(path) and _is_dir(path):
        try:
            from bioio import BioImage
            import bioio_ome_zarr

            image = BioImage(str(path), reader=bioio_ome_zarr.Reader)
            sizes = image.physical_pixel_sizes
        except Exception:  # a plain zarr array (no NGFF metadata) states no size
            return {}
        return {axis: check_pixel_size_um(getattr(sizes, axis), source=f"{path}: scale of {axis}")
                for axis in "ZYX" if getattr(sizes, axis) is not None}
    return {}


def _read(path: Path, scene: str | int | None) -> _Read:
    """Dispatch on what ``path`` is: a zarr folder, or a file by its suffix."""
    if _is_dir(path):
        if _is_zarr(path):
            return _read_zarr(path, scene)
        if path.suffix.lower() == ".zarr":
            raise ImageInputError(f"{path}: not a zarr store (no zarr.json, .zgroup or .zarray in the folder)")
    _check_input_file(path)  # missing, a directory, a link loop, empty...
    suffix = path.suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        return _read_tiff(path, scene)
    if suffix in _PICTURE_FORMATS:
        return _read_picture(path, _PICTURE_FORMATS[suffix], scene)
    if suffix in _BIOIO_FORMATS:
        return _read_bioio(path, _BIOIO_FORMATS[suffix], scene)
    raise ImageInputError(_unsupported_message(path))


def _unsupported_message(path: Path) -> str:
    suffix = path.suffix.lower()
    known = "; ".join(f"{fmt} ({' '.join(suffixes)}, read by {package})"
                      for fmt, (suffixes, package) in SUPPORTED_FORMATS.items())
    if suffix in JAVA_ONLY_FORMATS:
        return (f"{path}: {JAVA_ONLY_FORMATS[suffix]} ({suffix}) files are not supported: only bioio-bioformats reads "
                "them, and it needs a Java runtime; convert the file to OME-TIFF (Fiji: File > Save As > OME-TIFF, "
                f"or bfconvert). Supported: {known}")
    if suffix == ".zarr":
        return f"{path}: a file, but a zarr store is a folder (zipped stores are not read: unzip it)"
    named = f"suffix {suffix!r}" if suffix else "no suffix"
    return f"{path}: unsupported file type ({named}). Supported: {known}"


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a link loop: _check_input_file names it
        return False


def _is_zarr(path: Path) -> bool:
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


# -- choosing channels and scenes ---------------------------------------------------------------------------------


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(f"{i}: {name}" for i, name in enumerate(names[:20]))
    return shown + (f" and {len(names) - 20} more" if len(names) > 20 else "")


def _choose(choice: str | int, names: Sequence[str], what: str, path: Path) -> int | None:
    """The index of ``choice`` among ``names`` (exact name, then any case, then an index); None when not found."""
    if isinstance(choice, str):
        if choice in names:
            return list(names).index(choice)
        folded = [name.casefold() for name in names]
        if folded.count(choice.casefold()) == 1:
            return folded.index(choice.casefold())
        if not choice.strip().isdigit():
            return None
        index = int(choice.strip())
    elif isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
        index = int(choice)
    else:
        raise ImageInputError(f"{path}: a {what} is chosen by name or index, got {choice!r}")
    return index if 0 <= index < len(names) else None


def _choose_scene(choice: str | int | None, scenes: tuple[str, ...], path: Path) -> int:
    if choice is None:
        if len(scenes) > 1:
            raise ImageInputError(f"{path}: {len(scenes)} scenes ({_listing(scenes)}): choose one with --scene "
                                  "NAME|INDEX (config key `scene`)")
        return 0
    index = _choose(choice, scenes, "scene", path)
    if index is None:
        raise ImageInputError(f"{path}: no scene {choice!r}; its scenes are {_listing(scenes)}; choose one with "
                              "--scene NAME|INDEX")
    return index


def _select_channel(image: MicroscopeImage, channel: str | int | None) -> MicroscopeImage:
    """``image`` with only ``channel`` (C axis dropped), or an error listing the channels there are."""
    if channel is None:
        return image
    path = image.source
    if "C" in image.axes or image.channel_names:
        names = image.channel_names
        index = _choose(channel, names, "channel", path)
        if index is None:
            raise ImageInputError(f"{path}: no channel {channel!r}; its channels are {_listing(names)}; choose one "
                                  "with --channel NAME|INDEX")
        if "C" not in image.axes:  # one named channel: nothing to drop
            return replace(image, channel=names[index])
        axis = image.axes.index("C")
        return replace(image, data=np.take(image.data, index, axis=axis), axes=image.axes.replace("C", ""),
                       channel=names[index])
    if image.axes.endswith("S"):  # a colour image: its samples are the channels
        names = _SAMPLE_NAMES.get(image.data.shape[-1], tuple(f"S{i}" for i in range(image.data.shape[-1])))
        index = _choose(channel, names, "channel", path)
        if index is None:
            raise ImageInputError(f"{path}: no channel {channel!r}; this colour image's channels are "
                                  f"{_listing(names)}; choose one with --channel NAME|INDEX")
        return replace(image, data=image.data[..., index], axes=image.axes[:-1], channel_names=names,
                       channel=names[index])
    if _choose(channel, ("C0",), "channel", path) == 0:  # one grey channel: channel 0 is all of it
        return image
    raise ImageInputError(f"{path}: has one grey channel and no channel names, so channel {channel!r} does not "
                          "exist; leave --channel unset (or give 0)")


# -- canonical order ----------------------------------------------------------------------------------------------


def _canonical(read: _Read, path: Path) -> MicroscopeImage:
    """The reader's result with axes in ``TCZYX`` (+ ``S``) order, size-1 axes other than Y and X dropped."""
    data, axes = read.data, read.axes
    if len(axes) != data.ndim or len(set(axes)) != len(axes):
        raise ImageInputError(f"{path}: axes {axes!r} do not fit the pixels' shape {data.shape}")
    for axis, size in zip(list(axes), data.shape):
        if axis not in AXES + "S":
            if size != 1:
                raise ImageInputError(f"{path}: unsupported axis {axis!r} of size {size} (axes {axes}, shape "
                                      f"{data.shape}); cellops reads T, C, Z, Y, X and colour samples")
            data, axes = data.squeeze(axes.index(axis)), axes.replace(axis, "")
    if "Y" not in axes or "X" not in axes:
        raise ImageInputError(f"{path}: no Y and X axes (axes {axes}, shape {data.shape}): not an image")
    order = [axis for axis in AXES + "S" if axis in axes]
    data = np.moveaxis(data, [axes.index(axis) for axis in order], list(range(len(order))))
    n_channels = data.shape[order.index("C")] if "C" in order else 1
    keep = [i for i, axis in enumerate(order) if axis in "YX" or data.shape[i] != 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(order[i] for i in keep)
    if read.channel_names is not None:
        if len(read.channel_names) != n_channels:
            raise ImageInputError(f"{path}: its metadata names {len(read.channel_names)} channels "
                                  f"({', '.join(read.channel_names)}) but the pixels have {n_channels}")
        names = tuple(read.channel_names)
    else:
        names = tuple(f"C{i}" for i in range(n_channels)) if n_channels > 1 else ()
    sizes = {axis: read.pixel_size_um[axis] for axis in "ZYX" if axis in read.pixel_size_um and axis in axes}
    return MicroscopeImage(data=data, axes=axes, pixel_size_um=sizes, channel_names=names, channel=None,
                           time_step_s=read.time_step_s if "T" in axes else None, scenes=read.scenes,
                           scene=read.scene, source=path, format=read.format)


# -- units ---------------------------------------------------------------------------------------------------------


def _unit_factor(unit: object, table: dict[str, float], source: str, kind: str) -> float:
    name = str(unit).strip()
    if "\\u" in name:  # ImageJ writes µ as the escape \u00B5
        name = name.encode("ascii", "backslashreplace").decode("unicode_escape")
    factor = table.get(name) or table.get(name.lower())
    if factor is None:
        raise ImageInputError(f"{source}: unknown {kind} unit {str(unit)!r}")
    return factor


def _length_um(value: object, unit: object, source: str) -> float:
    """``value`` in ``unit`` as a checked pixel size in µm (0, NaN, negative or over 1 mm refused)."""
    factor = _unit_factor(unit, _LENGTH_UM, source, "length")
    try:
        # 12 significant digits: no unit-conversion noise (108.3 nm is 0.1083 µm, not 0.10830000000000001)
        size: object = float(f"{float(value) * factor:.12g}")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        size = value  # check_pixel_size_um names it
    return check_pixel_size_um(size, source=f"{source} = {value} {unit}")


def _seconds(value: object, unit: object, source: str) -> float | None:
    """A time step in seconds; None for 0 (not stated), an error for NaN, infinite or negative."""
    factor = _unit_factor(unit, _TIME_S, source, "time")
    try:
        seconds = float(value) * factor  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ImageInputError(f"{source}: a time step must be a number, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ImageInputError(f"{source}: a time step must be a finite number of seconds ≥ 0, got {value!r} {unit}")
    return seconds or None


# -- TIFF ----------------------------------------------------------------------------------------------------------


def _read_tiff(path: Path, scene: str | int | None, *, pixels: bool = True) -> _Read:
    """TIFF, OME-TIFF, ImageJ hyperstacks and LSM through tifffile: metadata from the header, pixels through
    :func:`cellops.files.read_tiff_stack` (its size and truncation checks); ``pixels=False``: the metadata only."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # not a TIFF tifffile can parse: read_tiff_stack names the problem, or reads it via Pillow
        pixels = read_tiff_stack(path)
        return _Read(pixels, _axes_by_ndim(path, pixels), "tiff", {}, None, None, ("Image:0",), "Image:0")
    with tif:
        try:
            series = list(tif.series)
            if tif.is_ome:
                images = _ome_images(path, tif.ome_metadata or "")
                if len(images) != len(series):
                    raise ImageInputError(f"{path}: its OME metadata describes {len(images)} images, tifffile finds "
                                          f"{len(series)} series in the file")
                scenes = _unique_names([image["name"] for image in images])
            else:
                images = []
                scenes = tuple(f"Image:{i}" for i in range(len(series)))
            index = _choose_scene(scene, scenes, path)
            chosen = series[index]
            axes, shape = chosen.axes, tuple(chosen.shape)
            # The metadata is checked against the header's shape before any pixel is decompressed.
            if tif.is_ome:
                read = _ome_read(path, shape, axes, images[index], scenes, index)
            elif tif.is_imagej:
                read = _imagej_read(path, tif, shape, axes, scenes)
            else:
                axes = _plain_axes(path, axes, shape)
                sizes, time_step = _lsm_sizes(path, tif.lsm_metadata or {}, axes) if tif.is_lsm else ({}, None)
                read = _Read(None, axes, "tiff", sizes, None, time_step, scenes, scenes[index])
            if not pixels:
                return read
            pixels = read_tiff_stack(path) if index == 0 else _read_tiff_series(path, chosen)
            if pixels.shape != shape:
                if pixels.size != int(np.prod(shape)):
                    raise ImageInputError(f"{path}: the pixels read have shape {pixels.shape}, its header describes "
                                          f"{shape} (axes {axes})")
                pixels = pixels.reshape(shape)  # read page by page through Pillow
            read.data = pixels
            return read
        except ImageInputError:
            raise
        except Exception as error:  # tifffile's parsing of damaged metadata raises many types
            raise ImageInputError(f"{path}: not a readable TIFF file ({type(error).__name__}: {error})") from error


def _axes_by_ndim(path: Path, pixels: np.ndarray) -> str:
    if pixels.ndim >= 3 and pixels.shape[-1] in (3, 4) and pixels.shape[-2] > 4:
        return "ZYXS"[-pixels.ndim:]
    if pixels.ndim > 4:
        raise ImageInputError(f"{path}: a {pixels.ndim}-D TIFF (shape {pixels.shape}) without axis names")
    return "TZYX"[-pixels.ndim:]


def _plain_axes(path: Path, axes: str, shape: tuple[int, ...]) -> str:
    """tifffile's axes of a TIFF without hyperstack metadata: its one unnamed stack axis (I, Q...) is Z."""
    unnamed = [i for i, axis in enumerate(axes) if axis not in AXES + "S"]
    if len(unnamed) == 1 and "Z" not in axes:
        return axes[: unnamed[0]] + "Z" + axes[unnamed[0] + 1:]
    if len([i for i in unnamed if shape[i] > 1]) > 1:
        raise ImageInputError(f"{path}: a TIFF with {len(unnamed)} unnamed stack axes (shape {shape}): which is "
                              "time, channel or depth is not stated; save it as OME-TIFF or an ImageJ hyperstack")
    return "".join(axis if axis in AXES + "S" else f"{i}" for i, axis in enumerate(axes))  # size-1 extras: dropped


def _check_plane_size(path: Path, shape: tuple[int, ...], axes: str) -> None:
    """Refuse, before reading, a plane over :func:`cellops.files.read_tiff_stack`'s limit (twice Pillow's
    decompression-bomb limit)."""
    from PIL import Image

    plane = int(np.prod([n for n, axis in zip(shape, axes) if axis in "YX"]))
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and plane > 2 * limit:
        raise ImageTooLargeError(f"{path}: image too large: {plane} pixels per plane (shape {shape}); the limit is "
                                 f"{2 * limit}")


def _read_tiff_series(path: Path, series: tifffile.TiffPageSeries) -> np.ndarray:
    """A series other than the first, with :func:`cellops.files.read_tiff_stack`'s checks (plane size from the
    header, damage that tifffile only logs)."""
    import logging.handlers
    import queue

    _check_plane_size(path, tuple(series.shape), series.axes)
    complaints: queue.SimpleQueue = queue.SimpleQueue()
    collector = logging.handlers.QueueHandler(complaints)
    collector.setLevel(logging.ERROR)
    tifffile_log = logging.getLogger("tifffile")
    tifffile_log.addHandler(collector)
    try:
        pixels = series.asarray()
    finally:
        tifffile_log.removeHandler(collector)
    if not complaints.empty():
        raise ImageInputError(f"{path}: corrupt or truncated TIFF ({complaints.get().getMessage()})")
    return pixels


def _unique_names(names: Sequence[str | None]) -> tuple[str, ...]:
    """Scene names, or ``Image:i`` for all when some are missing or repeated."""
    if all(names) and len(set(names)) == len(names):
        return tuple(str(name) for name in names)
    return tuple(f"Image:{i}" for i in range(len(names)))


def _ome_images(path: Path, xml: str) -> list[dict]:
    """Each OME ``Image``: its name, ``Pixels`` attributes, channel names and samples, planes' DeltaT."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise ImageInputError(f"{path}: its OME-XML metadata cannot be parsed ({error})") from error
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    images = []
    for image in root.findall(f"{ns}Image"):
        pixels = image.find(f"{ns}Pixels")
        if pixels is None:
            raise ImageInputError(f"{path}: OME Image {image.get('ID')} has no Pixels element")
        channels = pixels.findall(f"{ns}Channel")
        planes = [(int(plane.get("TheT", 0)), plane.get("DeltaT"), plane.get("DeltaTUnit", "s"))
                  for plane in pixels.findall(f"{ns}Plane")
                  if int(plane.get("TheZ", 0)) == 0 and int(plane.get("TheC", 0)) == 0]
        images.append({"name": image.get("Name") or image.get("ID"), "pixels": dict(pixels.attrib),
                       "channel_names": [channel.get("Name") for channel in channels],
                       "samples": [int(channel.get("SamplesPerPixel", 1)) for channel in channels],
                       "planes": planes})
    if not images:
        raise ImageInputError(f"{path}: its OME-XML metadata describes no image")
    return images


def _ome_read(path: Path, shape: tuple[int, ...], axes: str, image: dict, scenes: tuple[str, ...],
              index: int) -> _Read:
    """The OME metadata of one image, checked against the shape tifffile gives its series (pixels not read)."""
    attrs = image["pixels"]
    field = f"{path}: OME"
    found = {axis: size for axis, size in zip(axes, shape)}
    stated = {axis: int(attrs.get(f"Size{axis}", 1)) for axis in "XYZCT"}
    actual = {"X": found.get("X", 1), "Y": found.get("Y", 1), "Z": found.get("Z", 1), "T": found.get("T", 1),
              "C": found.get("C", 1) * found.get("S", 1)}
    unnamed = {axis: size for axis, size in found.items() if axis not in AXES + "S" and size > 1}
    if stated != actual or unnamed:
        said = ", ".join(f"Size{axis}={size}" for axis, size in stated.items())
        raise ImageInputError(f"{path}: its OME metadata says {said} but the pixels have shape {shape} (axes {axes})")
    sizes = {}
    for axis in "ZYX":
        if attrs.get(f"PhysicalSize{axis}") is not None:
            sizes[axis] = _length_um(attrs[f"PhysicalSize{axis}"], attrs.get(f"PhysicalSize{axis}Unit", "µm"),
                                     f"{field} PhysicalSize{axis}")
    time_step = None
    if attrs.get("TimeIncrement") is not None:
        time_step = _seconds(attrs["TimeIncrement"], attrs.get("TimeIncrementUnit", "s"), f"{field} TimeIncrement")
    elif actual["T"] > 1:
        time_step = _ome_delta_t(image["planes"], field)
    names = image["channel_names"]
    n_channels = found.get("C", 1)
    channel_names = None
    if any(names):
        if len(names) != n_channels and not (len(names) == 1 and n_channels == 1):
            raise ImageInputError(f"{path}: its OME metadata describes {len(names)} channels "
                                  f"({', '.join(str(n) for n in names)}) but the pixels have {n_channels}")
        channel_names = tuple(name or f"C{i}" for i, name in enumerate(names))
    return _Read(None, axes, "ome-tiff", sizes, channel_names, time_step, scenes, scenes[index])


def _ome_delta_t(planes: list[tuple[int, str | None, str]], field: str) -> float | None:
    """The mean step between the DeltaT of the first and last time points (None when the planes don't say)."""
    times = {}
    for t, delta, unit in planes:
        if delta is not None:
            times[t] = _seconds(delta, unit, f"{field} Plane DeltaT") or 0.0
    if len(times) < 2:
        return None
    first, last = min(times), max(times)
    step = (times[last] - times[first]) / (last - first)
    return step if step > 0 else None


def _imagej_read(path: Path, tif: tifffile.TiffFile, shape: tuple[int, ...], axes: str,
                 scenes: tuple[str, ...]) -> _Read:
    """The ImageJ metadata, checked against the shape tifffile gives the hyperstack (pixels not read)."""
    meta = tif.imagej_metadata or {}
    axes = _plain_axes(path, axes, shape)  # a stack without hyperstack keys: tifffile's I axis is Z
    found = {axis: size for axis, size in zip(axes, shape)}
    counts = {"channels": found.get("C", 1), "slices": found.get("Z", 1), "frames": found.get("T", 1)}
    stated = {key: int(meta[key]) for key in counts if key in meta}
    planes = int(np.prod([size for axis, size in found.items() if axis not in "YXS"]))
    if any(stated[key] != counts[key] for key in stated) or ("images" in meta and int(meta["images"]) != planes):
        said = ", ".join([f"{key}={value}" for key, value in stated.items()]
                         + ([f"images={meta['images']}"] if "images" in meta else []))
        raise ImageInputError(f"{path}: its ImageJ metadata says {said} but the pixels have shape {shape} "
                              f"(axes {axes})")
    sizes: dict[str, float] = {}
    unit = str(meta.get("unit", "")).strip()
    if unit.lower() not in _IMAGEJ_NO_UNIT:
        page = tif.pages.first
        for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
            resolution = page.tags.get(tag)
            if resolution is None:
                continue
            pixels_per_unit, per = resolution.value  # a rational: pixels per `per` units
            size = per / pixels_per_unit if pixels_per_unit else float("inf")
            axis_unit = meta.get("yunit", unit) if axis == "Y" else unit
            sizes[axis] = _length_um(size, axis_unit, f"{path}: ImageJ {tag} ({pixels_per_unit}/{per} per {unit})")
        if "spacing" in meta and "Z" in found:
            sizes["Z"] = _length_um(meta["spacing"], meta.get("zunit", unit), f"{path}: ImageJ spacing")
    time_step = None
    if meta.get("finterval") is not None and "T" in found:
        time_step = _seconds(meta["finterval"], meta.get("tunit", "s"), f"{path}: ImageJ finterval")
    return _Read(None, axes, "imagej-tiff", sizes, None, time_step, scenes, scenes[0])


def _lsm_sizes(path: Path, meta: dict, axes: str) -> tuple[dict[str, float], float | None]:
    """Zeiss LSM voxel sizes (metres) and time interval (seconds)."""
    sizes = {axis: _length_um(meta[f"VoxelSize{axis}"], "m", f"{path}: LSM VoxelSize{axis}")
             for axis in "XYZ" if meta.get(f"VoxelSize{axis}") is not None and (axis != "Z" or "Z" in axes)}
    step = meta.get("TimeIntervall")
    return sizes, (_seconds(step, "s", f"{path}: LSM TimeIntervall") if step is not None and "T" in axes else None)


# -- PNG, JPEG -----------------------------------------------------------------------------------------------------


def _read_picture(path: Path, fmt: str, scene: str | int | None) -> _Read:
    pixels = read_picture_file(path)
    scenes = ("Image:0",)
    _choose_scene(scene, scenes, path)
    axes = "YX" if pixels.ndim == 2 else "YXS"
    return _Read(pixels, axes, fmt, {}, None, None, scenes, scenes[0])


# -- zarr, OME-Zarr ------------------------------------------------------------------------------------------------


def _read_zarr(path: Path, scene: str | int | None) -> _Read:
    """An OME-Zarr image (NGFF multiscales) through bioio-ome-zarr, or a plain zarr array."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise ImageInputError(f"{path}: not a readable zarr store ({type(error).__name__}: {error})") from error
    if isinstance(node, zarr.Array):
        return _read_plain_zarr(path, node, scene)
    attrs = dict(node.attrs)
    ngff = attrs.get("ome", attrs)
    if "multiscales" in ngff:
        return _read_bioio(path, "ome-zarr", scene)
    if "bioformats2raw.layout" in ngff:
        images = sorted((name for name in node.group_keys() if name.isdigit()), key=int)
        raise ImageInputError(f"{path}: a bioformats2raw collection of {len(images)} images: open one of them, "
                              f"e.g. {path / (images[0] if images else '0')}")
    if "plate" in ngff or "well" in ngff:
        raise ImageInputError(f"{path}: an OME-Zarr {'plate' if 'plate' in ngff else 'well'}: open one image "
                              "of it (a folder row/column/field, e.g. A/1/0)")
    arrays = sorted(node.array_keys())
    raise ImageInputError(f"{path}: a zarr group without OME-NGFF multiscales metadata; open one of its arrays "
                          f"({', '.join(arrays[:5]) or 'none'})")


def _read_plain_zarr(path: Path, array, scene: str | int | None) -> _Read:
    scenes = ("Image:0",)
    _choose_scene(scene, scenes, path)
    names = [str(name).upper() for name in (getattr(array.metadata, "dimension_names", None) or ())]
    if len(names) == array.ndim and all(len(name) == 1 and name in AXES for name in names):
        axes = "".join(names)
    elif 2 <= array.ndim <= len(AXES):
        axes = AXES[-array.ndim:]  # the NGFF order: a 3-D array is a Z stack
    else:
        raise ImageInputError(f"{path}: a {array.ndim}-D zarr array (shape {array.shape}); expected 2-D (Y, X) to "
                              "5-D (T, C, Z, Y, X)")
    _check_plane_size(path, tuple(array.shape), axes)
    try:
        pixels = np.asarray(array[...])
    except Exception as error:
        raise ImageInputError(f"{path}: the zarr array cannot be read ({type(error).__name__}: {error})") from error
    return _Read(pixels, axes, "zarr", {}, None, None, scenes, scenes[0])


# -- bioio: OME-Zarr, ND2, CZI, LIF --------------------------------------------------------------------------------


def _bioio_reader(path: Path, fmt: str):
    """The bioio plugin module that reads ``fmt``, or an error saying which package to install."""
    package = SUPPORTED_FORMATS[fmt][1]
    what = "OME-Zarr folders" if fmt == "ome-zarr" else f"{path.suffix.lower()} files"
    try:
        import bioio  # noqa: F401  (each plugin needs it; named first when it is the one missing)

        # Named one by one, not imported by a name built at run time: the formats are a fixed, reviewed set.
        if fmt == "ome-zarr":
            import bioio_ome_zarr as plugin
        elif fmt == "nd2":
            import bioio_nd2 as plugin
        elif fmt == "czi":
            import bioio_czi as plugin
        else:
            import bioio_lif as plugin
        return plugin
    except ImportError as error:
        missing = f"bioio {package}" if error.name == "bioio" else package
        raise ImageInputError(f"{path}: reading {what} needs the {package} package: pip install {missing}") from error


def _read_bioio(path: Path, fmt: str, scene: str | int | None) -> _Read:
    plugin = _bioio_reader(path, fmt)
    from bioio import BioImage

    try:
        image = BioImage(str(path), reader=plugin.Reader)
        scenes = tuple(str(name) for name in image.scenes)
        index = _choose_scene(scene, scenes, path)
        image.set_scene(index)
        axes = str(image.dims.order)
        _check_plane_size(path, tuple(image.shape), axes)
        pixels = np.asarray(image.data)
        physical = image.physical_pixel_sizes
        try:
            properties = image.dimension_properties
        except Exception:  # a reader without per-axis units
            properties = None
        names = image.channel_names
        interval = image.time_interval
        if interval is None and fmt != "ome-zarr" and "T" in axes and pixels.shape[axes.index("T")] > 1:
            interval = _recorded_interval(image)  # bioio-lif states it only there
    except ImageInputError:
        raise
    except Exception as error:  # each plugin raises its own types for damaged files
        raise ImageInputError(f"{path}: not a readable {fmt.upper()} file ({type(error).__name__}: "
                              f"{str(error)[:300]})") from error

    def unit_of(axis: str) -> object | None:
        return getattr(getattr(properties, axis, None), "unit", None)

    sizes = {}
    for axis in "ZYX":
        value, unit = getattr(physical, axis, None) if physical is not None else None, unit_of(axis)
        # bioio gives µm for ND2, CZI and LIF; an OME-Zarr axis without a unit has no physical size
        if value is None or (unit is None and fmt == "ome-zarr"):
            continue
        sizes[axis] = _length_um(value, _pint_name(unit) if unit is not None else "µm",
                                 f"{path}: {fmt} physical pixel size {axis}")
    time_step = None
    if interval is not None:
        if hasattr(interval, "total_seconds"):
            time_step = interval.total_seconds() or None
        elif unit_of("T") is not None or fmt != "ome-zarr":
            unit = unit_of("T")
            time_step = _seconds(interval, _pint_name(unit) if unit is not None else "s", f"{path}: {fmt} T step")
    n_channels = pixels.shape[axes.index("C")] if "C" in axes else 1
    channel_names = tuple(str(name) for name in names) if names else None
    if channel_names is not None and len(channel_names) != n_channels:
        raise ImageInputError(f"{path}: its metadata names {len(channel_names)} channels "
                              f"({', '.join(channel_names)}) but the pixels have {n_channels}")
    return _Read(pixels, axes, fmt, sizes, channel_names, time_step, scenes, scenes[index])


def _recorded_interval(image) -> object | None:
    try:
        return image.standard_metadata.timelapse_interval
    except Exception:  # metadata a plugin cannot summarise: no time step, the pixels are still good
        return None


def _pint_name(unit: object) -> str:
    """A pint unit's name (``micrometer``, ``second``...), as the unit tables spell it."""
    return str(unit)


# -- writers -------------------------------------------------------------------------------------------------------


def _check_axes_to_write(path: Path, data: np.ndarray, axes: str, allowed: str) -> str:
    if not isinstance(axes, str) or len(axes) != data.ndim:
        raise ImageInputError(f"{path}: axes {axes!r} do not fit data of shape {data.shape}")
    axes = axes.upper()
    positions = [allowed.find(axis) for axis in axes]
    if -1 in positions or positions != sorted(set(positions)) or "Y" not in axes or "X" not in axes:
        raise ImageInputError(f"{path}: axes {axes!r}: expected Y and X, in the order {allowed} (e.g. 'YX', 'ZYX', "
                              f"'CZYX'{', YXS' if 'S' in allowed else ''})")
    return axes


def _sizes_to_write(path: Path, pixel_size_um: dict[str, float] | float | None) -> dict[str, float]:
    if pixel_size_um is None:
        return {}
    if not isinstance(pixel_size_um, dict):
        size = check_pixel_size_um(pixel_size_um, source=f"{path}: pixel size")
        return {"Y": size, "X": size}
    sizes = {}
    for axis, size in pixel_size_um.items():
        if str(axis).upper() not in ("Z", "Y", "X"):
            raise ImageInputError(f"{path}: pixel sizes are for the axes Z, Y and X, got {axis!r}")
        sizes[str(axis).upper()] = check_pixel_size_um(size, source=f"{path}: pixel size {str(axis).upper()}")
    return {axis: sizes[axis] for axis in "ZYX" if axis in sizes}


def _channel_names_to_write(path: Path, data: np.ndarray, axes: str,
                            channel_names: Sequence[str] | None) -> list[str] | None:
    if channel_names is None:
        return None
    names = [str(name) for name in channel_names]
    n = data.shape[axes.index("C")] if "C" in axes else 1
    if len(names) != n:
        raise ImageInputError(f"{path}: {len(names)} channel names ({', '.join(names)}) for {n} channels")
    return names


def _storable(path: Path, data: np.ndarray, allowed: tuple[str, ...]) -> np.ndarray:
    """``data`` in a dtype the format stores, values unchanged: 64-bit labels as 32-bit when they fit."""
    if data.dtype.name in allowed:
        return data
    narrower = {"int64": np.int32, "uint64": np.uint32, "float16": np.float32}.get(data.dtype.name)
    if narrower is not None:
        converted = data.astype(narrower)
        if data.dtype.kind == "f" or np.array_equal(converted, data):
            return converted
    raise ImageInputError(f"{path}: cannot store {data.dtype} pixels{' (values beyond 32 bits)' if narrower else ''}; "
                          f"expected one of {', '.join(allowed)}")


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} already exists; not overwriting it: move it away or pass overwrite=True "
                              "(--force)")


def _temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


_OME_TIFF_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "float32", "float64",
                    "complex64", "complex128")


def write_ome_tiff(path: str | Path, data: np.ndarray, *, axes: str,
                   pixel_size_um: dict[str, float] | float | None = None,
                   channel_names: Sequence[str] | None = None, time_step_s: float | None = None,
                   overwrite: bool = False) -> Path:
    """Write an image, label image or mask as a zlib-compressed OME-TIFF with its physical sizes.

    The file states ``PhysicalSizeX/Y/Z`` in µm, channel names and ``TimeIncrement`` in its OME-XML (what
    Bio-Formats, Fiji, napari and bioio read) and the X/Y resolution in pixels per cm (what Fiji's plain TIFF
    opener reads). Pixel values round-trip exactly (64-bit labels are stored as 32-bit when they fit). The file is
    written beside its destination and renamed into place, and is the same bytes for the same inputs.

    Parameters
    ----------
    path : str or Path
        The file to write (``.ome.tif`` is conventional).
    data : np.ndarray
        The pixels, axes in ``axes`` order.
    axes : str
        A subsequence of ``"TCZYX"``, optionally with a trailing ``"S"`` (RGB or RGBA samples).
    pixel_size_um : dict or float, optional
        Sizes in µm by axis (``"Z"``, ``"Y"``, ``"X"``); a float is Y and X.
    channel_names : sequence of str, optional
        One per channel.
    time_step_s : float, optional
        Seconds between time points.
    overwrite : bool, optional
        Replace an existing file.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    FileExistsError
        When ``path`` exists and not ``overwrite``.
    ImageInputError
        For axes that do not fit the data, a pixel size of 0, NaN or over 1 mm, names that do not fit the channels.

    Examples
    --------
    >>> import tempfile
    >>> labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    >>> path = write_ome_tiff(Path(tempfile.mkdtemp()) / "labels.ome.tif", labels, axes="YX", pixel_size_um=0.65)
    >>> back = open_image(path)
    >>> bool((back.data == labels).all()), back.data.dtype, back.yx_pixel_size_um
    (True, dtype('int32'), 0.65)
    """
    path = Path(path)
    data = _storable(path, np.asarray(data), _OME_TIFF_DTYPES)
    axes = _check_axes_to_write(path, data, axes, AXES + "S")
    sizes = _sizes_to_write(path, pixel_size_um)
    names = _channel_names_to_write(path, data, axes, channel_names)
    _refuse_existing(path, overwrite)
    metadata: dict = {"axes": axes}
    for axis, size in sizes.items():
        metadata[f"PhysicalSize{axis}"] = size
        metadata[f"PhysicalSize{axis}Unit"] = "µm"
    if names is not None:
        metadata["Channel"] = {"Name": names}
    if time_step_s is not None:
        step = _seconds(time_step_s, "s", f"{path}: time step")
        if step:
            metadata["TimeIncrement"], metadata["TimeIncrementUnit"] = step, "s"
    extra: dict = {}
    if "X" in sizes and "Y" in sizes:
        extra = {"resolution": (1e4 / sizes["X"], 1e4 / sizes["Y"]), "resolutionunit": "CENTIMETER"}
    if axes.endswith("S"):
        if data.shape[-1] not in (3, 4):
            raise ImageInputError(f"{path}: colour samples (S) are RGB or RGBA, got {data.shape[-1]}")
        photometric = "rgb"
    else:
        photometric = "minisblack"
    # The same inputs give the same file (DVC versions outputs by content): the OME UUID comes from them.
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes())
    digest.update(repr((data.dtype.str, data.shape, sorted(metadata.items(), key=str))).encode())
    metadata["UUID"] = str(uuid.UUID(bytes=digest.digest()[:16]))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_beside(path)
    try:
        tifffile.imwrite(temporary, data, ome=True, photometric=photometric, compression="zlib",
                         metadata=metadata, **extra)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


_ZARR_COLOURS = ("FFFFFF", "00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF")


def write_ome_zarr(path: str | Path, data: np.ndarray, *, axes: str,
                   pixel_size_um: dict[str, float] | float | None = None,
                   channel_names: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Write an image, label image or volume as OME-Zarr (NGFF 0.5 on zarr 3) with ome-zarr-py: one resolution
    level, the pixel sizes as the scale of its coordinate transformations (axes in micrometer), channel names as
    omero metadata. Written to a folder beside ``path`` and renamed into place.

    Parameters
    ----------
    path : str or Path
        The folder to write (``.ome.zarr`` is conventional).
    data : np.ndarray
        The pixels, axes in ``axes`` order.
    axes : str
        A subsequence of ``"TCZYX"`` with Y and X (OME-Zarr has no colour-sample axis).
    pixel_size_um : dict or float, optional
        Sizes in µm by axis (``"Z"``, ``"Y"``, ``"X"``); a float is Y and X. Axes without one get scale 1 and no
        unit (read back as unknown).
    channel_names : sequence of str, optional
        One per channel.
    overwrite : bool, optional
        Replace an existing folder.

    Returns
    -------
    Path
        The folder written.

    Raises
    ------
    FileExistsError
        When ``path`` exists and not ``overwrite``.
    ImageInputError
        For axes that do not fit the data, a pixel size of 0, NaN or over 1 mm, names that do not fit the channels.

    Examples
    --------
    >>> import tempfile
    >>> volume = np.arange(2 * 4 * 5, dtype=np.uint16).reshape(2, 4, 5)
    >>> path = write_ome_zarr(Path(tempfile.mkdtemp()) / "v.ome.zarr", volume, axes="ZYX",
    ...                       pixel_size_um={"Z": 2.0, "Y": 0.5, "X": 0.5})
    >>> back = open_image(path)
    >>> back.format, back.axes, back.pixel_size_um, bool((back.data == volume).all())
    ('ome-zarr', 'ZYX', {'Z': 2.0, 'Y': 0.5, 'X': 0.5}, True)
    """
    path = Path(path)
    data = np.asarray(data)
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    axes = _check_axes_to_write(path, data, axes, AXES)
    sizes = _sizes_to_write(path, pixel_size_um)
    names = _channel_names_to_write(path, data, axes, channel_names)
    _refuse_existing(path, overwrite)
    import zarr
    from ome_zarr.writer import write_image

    metadata: dict = {}
    if names is not None:
        channel_axis = axes.index("C") if "C" in axes else None
        windows = []
        for i in range(len(names)):
            plane = data if channel_axis is None else np.take(data, i, axis=channel_axis)
            finite = plane[np.isfinite(plane)] if plane.dtype.kind in "fc" else plane
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            windows.append({"min": low, "max": high, "start": low, "end": high})
        metadata["omero"] = {"channels": [{"label": name, "color": _ZARR_COLOURS[i % len(_ZARR_COLOURS)],
                                           "window": window, "active": True}
                                          for i, (name, window) in enumerate(zip(names, windows))]}
    # Chunks of whole planes (at most 1024 x 1024), a few planes deep: a volume reads plane by plane.
    chunks = tuple(min(size, {"Y": 1024, "X": 1024, "Z": 8}.get(axis, 1)) for axis, size in zip(axes, data.shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_beside(path)
    try:
        write_image(data, zarr.open_group(str(temporary), mode="w"), axes=[axis.lower() for axis in axes],
                    scale={axis.lower(): sizes.get(axis, 1.0) for axis in axes},
                    axes_units={axis.lower(): "micrometer" for axis in sizes if axis in axes},
                    scale_factors=[], storage_options={"chunks": chunks}, **metadata)
        _replace_folder(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return path


def _replace_folder(new: Path, path: Path) -> None:
    """Move ``new`` to ``path``, the old ``path`` (folder or file) out of the way first and removed after."""
    if not (path.exists() or path.is_symlink()):
        os.rename(new, path)
        return
    old = _temporary_beside(path).with_suffix(".old")
    os.rename(path, old)
    os.rename(new, path)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)

