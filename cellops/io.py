"""Readers and writers for the formats cellops handles: TIFF stacks, PNG/TIFF/JPEG files and uploads, CSV tables.
COCO instance annotations have their own module, :mod:`cellops.coco`.

One reader per format for the whole project: datasets, the command line and the services all go through
these functions, so every caller gets the same checks and the same error messages.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from cellops import files as _files
from cellops.errors import ImageInputError, ImageTooLargeError
from cellops.files import _intensities

if TYPE_CHECKING:
    import pandas as pd

    from cellops.microscopy import MicroscopeImage

# The file readers live one layer down (cellops.microscopy builds on them); most callers import them from here.
read_tiff_stack = _files.read_tiff_stack
read_picture_file = _files.read_picture_file

#: dtypes the segmentation models accept; everything else is refused with a clear message.
SUPPORTED_DTYPES: tuple[str, ...] = ("uint8", "uint16", "float32", "float64")


def write_tiff_stack(path: str | Path, array: np.ndarray) -> Path:
    """Write a 2-D image or 3-D stack as an uncompressed TIFF, byte for byte reproducibly.

    No timestamp or software tag varies between calls, so the same array always gives the same file
    (DVC versions datasets by content hash).

    Parameters
    ----------
    path : str or Path
        The file to write (its folder is created).
    array : np.ndarray
        A 2-D image or 3-D stack.

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> a = write_tiff_stack(folder / "a.tif", np.ones((2, 4, 4), np.uint8))
    >>> a.read_bytes() == write_tiff_stack(folder / "b.tif", np.ones((2, 4, 4), np.uint8)).read_bytes()
    True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(np.ascontiguousarray(array), "tiff"))
    return path


#: Significant digits of floats in written tables: enough for any measurement, few enough that the last-bit
#: differences between CPUs' SIMD and BLAS kernels never show (tables that DVC hashes stay the same bytes).
TABLE_SIGNIFICANT_DIGITS = 6


def write_table(table: "pd.DataFrame", path: str | Path) -> Path:
    """Write a table as CSV (no index, floats to :data:`TABLE_SIGNIFICANT_DIGITS` significant digits).

    Parameters
    ----------
    table : pd.DataFrame
        The table.
    path : str or Path
        The CSV file to write (its folder is created).

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> import pandas as pd, tempfile
    >>> path = write_table(pd.DataFrame({"area": [1 / 3]}), Path(tempfile.mkdtemp()) / "t.csv")
    >>> path.read_text().splitlines()
    ['area', '0.333333']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format=f"%.{TABLE_SIGNIFICANT_DIGITS}g")
    return path


def round_significant(value: float, digits: int = TABLE_SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (for metrics files that DVC hashes).

    Parameters
    ----------
    value : float
        The number.
    digits : int, optional
        Significant digits kept.

    Returns
    -------
    float
        The rounded number.

    Examples
    --------
    >>> round_significant(0.123456789)
    0.123457
    """
    return float(f"{value:.{digits}g}")


def write_files_safely(contents: dict[Path, bytes], *, overwrite: bool = False) -> list[Path]:
    """Write each path's bytes, but never replace a file whose contents differ unless ``overwrite``.

    Generators of built-in datasets write where a lab keeps its own images: nothing is written at all
    when any file would be replaced, and the ``FileExistsError`` names them.

    Parameters
    ----------
    contents : dict of Path to bytes
        Each file's bytes.
    overwrite : bool, optional
        Replace files whose contents differ.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    FileExistsError
        Naming the files that would be replaced, unless ``overwrite``.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.txt"
    >>> write_files_safely({path: b"x"}) == [path], write_files_safely({path: b"x"}) == [path]
    (True, True)
    >>> write_files_safely({path: b"y"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileExistsError: ...a.txt already exist with other contents (your own data?); ...
    """
    different = [p for p, data in contents.items() if p.exists() and p.read_bytes() != data]
    if different and not overwrite:
        shown = ", ".join(map(str, different[:5])) + (f" and {len(different) - 5} more" if len(different) > 5 else "")
        raise FileExistsError(
            f"{shown} already exist with other contents (your own data?); not overwriting them: "
            "move them away or pass overwrite=True (--force)"
        )
    for path, data in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return list(contents)


@dataclass(frozen=True)
class FileReading:
    """Which part of a microscope file an analysis or a model reads (config keys ``channel`` and ``scene``;
    ``--channel`` and ``--scene`` on the command line).

    Attributes
    ----------
    channel : str, int or None
        A channel name or index; None for files with one channel (a file with several is refused, naming them).
    scene : str, int or None
        A scene (series) name or index; None for files with one scene.
    """

    channel: str | int | None = None
    scene: str | int | None = None

    def open(self, path: str | Path, purpose: str) -> "MicroscopeImage":
        """The file at ``path`` (:func:`cellops.microscopy.open_image`) with this channel and scene, refused (naming
        its channels) when it still has several channels for ``purpose``."""
        from cellops.microscopy import open_image

        return open_image(path, channel=self.channel, scene=self.scene).single_channel(purpose)


def read_image_file(path: str | Path, *, channel: str | int | None = None,
                    scene: str | int | None = None) -> np.ndarray:
    """The pixels of one image file, through :func:`cellops.microscopy.open_image` (PNG, JPEG, TIFF, OME-TIFF,
    ImageJ hyperstacks, OME-Zarr, ND2, CZI, LIF): one channel and scene, axes in T, Z, Y, X order (a colour picture
    keeps its samples last); errors name the file and problem.

    Parameters
    ----------
    path : str or Path
        The image file (or OME-Zarr folder).
    channel, scene : str or int, optional
        The channel and scene to read (name or index); a file with several channels and no choice is refused,
        naming them.

    Returns
    -------
    np.ndarray
        The image as stored (palette, CMYK and 1-bit images as the intensities they show; grey + alpha as grey).

    Raises
    ------
    ImageInputError
        Missing, empty, corrupt or unsupported file, a directory, a symbolic-link loop, a pipe or device, a
        multi-channel file without a channel chosen. ``ImageTooLargeError`` (a subclass) for a decompression bomb:
        a header claiming more than ``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels (refused before decoding).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> read_image_file(folder / "missing.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    cellops.errors.ImageInputError: ...missing.png: no such file
    """
    return FileReading(channel, scene).open(path, "a one-channel image").data


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image and the format it came in (``"png"`` or ``"tiff"``), to answer in kind.

    Attributes
    ----------
    array : np.ndarray
        The decoded, checked image or stack.
    format : str
        ``"png"`` or ``"tiff"``.
    pixel_size_um : float or None
        The in-plane pixel size an OME-TIFF or ImageJ upload states (None when it states none).
    """

    array: np.ndarray
    format: str
    pixel_size_um: float | None = None


#: Smallest side (pixels) of an image a service or analysis accepts: a 1xN "image" has no neighbourhood to
#: segment, and every slice costs a whole padded tile.
MIN_SIDE = 8

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class _TiffComplaints(logging.Handler):
    """Collects what tifffile logs while reading: it logs, rather than raises, when a page offset is invalid
    (a truncated stack), and would otherwise return the pages before the damage as if they were the file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tiff_upload(data: bytes, max_pixels: int, colour: bool) -> np.ndarray:
    """One TIFF upload: a 2-D image, a stack of equal slices, or (``colour``) a channel-last RGB(A) image."""
    complaints = _TiffComplaints()
    logger = logging.getLogger("tifffile")
    logger.addHandler(complaints)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            n_pages = len(tif.pages)
            if len(tif.series) > 1:
                shapes = ", ".join(str(series.shape) for series in tif.series[:4])
                raise ImageInputError(f"TIFF with {len(tif.series)} images of different shapes ({shapes}"
                                      f"{', ...' if len(tif.series) > 4 else ''}): send one image or a stack "
                                      "of slices of one size")
            series = tif.series[0]
            n_pixels = int(np.prod(series.shape))
            if n_pixels > max_pixels:
                raise ImageTooLargeError(f"image too large: {n_pixels} pixels, the limit is {max_pixels}")
            if "S" in series.axes and not colour:
                raise ImageInputError(f"colour TIFF (shape {series.shape}, axes {series.axes}): send a "
                                      "single-channel grey-level image")
            array = series.asarray()
    except ImageInputError:
        raise
    except Exception as error:  # tifffile raises many types on corrupt files
        raise ImageInputError(f"corrupt or unreadable TIFF ({_clean(error)})") from error
    finally:
        logger.removeHandler(complaints)
    if complaints.messages:
        raise ImageInputError(f"corrupt or truncated TIFF ({_clean(complaints.messages[0])})")
    slices = int(np.prod([n for n, axis in zip(series.shape, series.axes) if axis not in "YXS"]))
    if slices != n_pages:
        raise ImageInputError(f"corrupt or truncated TIFF: its header describes {slices} slices, the file holds "
                              f"{n_pages} pages")
    return array


def _clean(error: object) -> str:
    """An exception's message without memory addresses or file paths (an answer must not leak them)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))
    text = re.sub(r"<[^<>]*>", "", text)
    return re.sub(r"(/[\w.\-]+){2,}", "<path>", text).strip()[:300]


def check_pixels(array: np.ndarray, *, source: str = "", max_pixels: int | None = None,
                 allowed_ndim: tuple[int, ...] = (2, 3), min_side: int = MIN_SIDE,
                 unit_floats: bool = True) -> np.ndarray:
    """Check a decoded grey-level image or stack before analysis, or raise ``ImageInputError`` naming ``source``
    and the problem: empty, wrong dimensionality, a side under ``min_side``, too many pixels, unsupported dtype
    (complex, bool, int32...), NaN or infinity, or, with ``unit_floats`` (the classical analyses, which read
    floats as intensities in [0, 1]), a float image outside [0, 1]: such an image would be clipped, a 0-255 float
    image would come out white. The models take floats of any range (their
    :class:`cellops.intensity.Normalization` decides).

    Parameters
    ----------
    array : np.ndarray
        The decoded image or stack.
    source : str, optional
        Named in error messages.
    max_pixels : int or None, optional
        Largest number of pixels accepted (None: no limit).
    allowed_ndim : tuple of int, optional
        Dimensionalities accepted.
    min_side : int, optional
        Smallest height and width accepted.
    unit_floats : bool, optional
        Refuse float images outside [0, 1].

    Returns
    -------
    np.ndarray
        ``array`` itself.

    Raises
    ------
    ImageInputError
        Naming ``source`` and the problem; ``ImageTooLargeError`` (a subclass) for too many pixels.

    Examples
    --------
    >>> check_pixels(np.zeros((8, 8), np.uint8)).shape
    (8, 8)
    >>> check_pixels(np.full((8, 8), 200.0), source="a.tif")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    cellops.errors.ImageInputError: a.tif: float image with values from 200 to 200; ...
    """
    prefix = f"{source}: " if source else ""
    if array.size == 0:
        raise ImageInputError(f"{prefix}empty image: shape {array.shape}")
    if array.ndim not in allowed_ndim:
        raise ImageInputError(
            f"{prefix}wrong dimensionality: got a {array.ndim}-D array of shape {array.shape}, "
            f"expected {' or '.join(f'{n}-D' for n in allowed_ndim)} (a grey-level image or a stack of slices)"
        )
    if min(array.shape[-2:]) < min_side:
        raise ImageInputError(f"{prefix}image too small: {array.shape[-2]}x{array.shape[-1]} pixels; each side "
                              f"must be at least {min_side}")
    if max_pixels is not None and array.size > max_pixels:
        raise ImageTooLargeError(f"{prefix}image too large: {array.size} pixels, the limit is {max_pixels}")
    if array.dtype.name not in SUPPORTED_DTYPES:
        raise ImageInputError(f"{prefix}unsupported dtype {array.dtype.name}: expected one of "
                              f"{', '.join(SUPPORTED_DTYPES)}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageInputError(f"{prefix}image contains NaN or infinite values")
        if not unit_floats:
            return array
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_UNIT_TOLERANCE or high > 1.0 + FLOAT_UNIT_TOLERANCE:
            raise ImageInputError(f"{prefix}float image with values from {low:g} to {high:g}; float images are read "
                                  "as intensities in [0, 1]: scale it to [0, 1] or save it as 8- or 16-bit integers")
    return array


def decode_image(data: bytes, *, max_pixels: int, allowed_ndim: tuple[int, ...] = (2, 3),
                 min_side: int = MIN_SIDE, unit_floats: bool = True) -> DecodedImage:
    """Decode PNG or TIFF bytes into a grey-level array and check that a model can use it.

    Parameters
    ----------
    data : bytes
        The raw bytes of the upload.
    max_pixels : int
        The largest number of pixels (all slices together) accepted; checked from the header, before
        anything is decompressed.
    allowed_ndim : tuple of int, optional
        2 for a single image, 3 for a stack of slices.
    min_side : int, optional
        The smallest height and width accepted.
    unit_floats : bool, optional
        Refuse float images outside [0, 1] (see :func:`check_pixels`).

    Returns
    -------
    DecodedImage
        The checked array and the format it came in.

    Raises
    ------
    ImageInputError
        With a message naming the problem: empty upload, not a PNG or TIFF, colour (PNG or TIFF), a TIFF
        holding images of different sizes or fewer pages than its header says (truncated), wrong number of
        dimensions, a side under ``min_side``, unsupported dtype, non-finite values, floats outside [0, 1] where
        ``unit_floats`` (see :func:`check_pixels`). ``ImageTooLargeError`` (a subclass) for too many pixels.

    Examples
    --------
    >>> buf = encode_image(np.zeros((8, 8), np.uint8), "png")
    >>> decode_image(buf, max_pixels=100).array.shape
    (8, 8)
    """
    if not data:
        raise ImageInputError("empty upload: the file has no bytes")
    if data[:4] in _TIFF_MAGIC:
        array, fmt = _read_tiff_upload(data, max_pixels, colour=False), "tiff"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        array, fmt = _read_pillow_upload(data, max_pixels, formats=("PNG",), grey_only=True), "png"
    else:
        raise ImageInputError("not an image: expected PNG or TIFF bytes")
    return DecodedImage(array=check_pixels(array, max_pixels=max_pixels, allowed_ndim=allowed_ndim,
                                           min_side=min_side, unit_floats=unit_floats), format=fmt)


def _read_pillow_upload(data: bytes, max_pixels: int, formats: tuple[str, ...], grey_only: bool) -> np.ndarray:
    """A PNG or JPEG upload through Pillow, its size checked from the header before decoding."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in formats:
                raise ImageInputError(f"unsupported image format {img.format}: send {', '.join(formats)} or TIFF")
            if img.width * img.height > max_pixels:
                raise ImageTooLargeError(
                    f"image too large: {img.width}x{img.height} = {img.width * img.height} pixels, the limit is "
                    f"{max_pixels}")
            if grey_only and img.mode not in ("L", "I;16", "I;16B", "I", "F"):
                raise ImageInputError(f"{img.format} in colour mode {img.mode!r}: send a single-channel grey-level "
                                      "image")
            return np.asarray(_intensities(img))
    except ImageInputError:
        raise
    except Image.DecompressionBombError as error:  # not an OSError: Pillow refuses before we can ask the size
        raise ImageTooLargeError(f"image too large ({_clean(error)})") from error
    except UnidentifiedImageError as error:
        raise ImageInputError(f"not an image, or a damaged one: expected {', '.join(formats)} or TIFF bytes") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageInputError(f"corrupt or truncated image ({_clean(error)})") from error


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """Encode a 2-D array as PNG or a 2-D/3-D array as TIFF bytes.

    Parameters
    ----------
    array : np.ndarray
        A 2-D image (PNG or TIFF) or a 3-D stack (TIFF).
    fmt : str
        ``"png"`` or ``"tiff"``.

    Returns
    -------
    bytes
        The encoded file.

    Raises
    ------
    ValueError
        For an unknown format, or a stack as PNG.

    Examples
    --------
    >>> encode_image(np.zeros((8, 8), np.uint8), "png")[1:4]
    b'PNG'
    """
    buffer = io.BytesIO()
    if fmt == "png":
        if array.ndim != 2:
            raise ValueError(f"PNG holds one 2-D image, got shape {array.shape}")
        Image.fromarray(array).save(buffer, format="PNG")
    elif fmt == "tiff":
        tifffile.imwrite(buffer, array, photometric="minisblack", metadata=None)
    else:
        raise ValueError(f"unknown image format {fmt!r}: expected 'png' or 'tiff'")
    return buffer.getvalue()


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 by its dtype's fixed range (``Normalization(mode="dtype")``): 8- and 16-bit
    integers by their maximum, floats taken as already in [0, 1] and refused outside it (a float image carries no
    range to scale by). Models are fed through their stored :class:`cellops.intensity.Normalization` instead.

    Parameters
    ----------
    image : np.ndarray
        An 8- or 16-bit or float image, any shape.

    Returns
    -------
    np.ndarray
        float32 in [0, 1], shape of ``image``.

    Examples
    --------
    >>> to_unit_range(np.array([0, 255], np.uint8)).tolist()
    [0.0, 1.0]
    """
    from cellops.intensity import LEGACY

    return LEGACY.apply(image)


def to_grey(image: np.ndarray) -> np.ndarray:
    """One grey plane of a decoded picture: the mean of its colour channels, computed in float.

    Parameters
    ----------
    image : np.ndarray
        A 2-D grey image, or a channel-last ``HxWxC`` picture: ``C`` = 1 (grey), 2 (grey + alpha), 3 (RGB) or
        4 (RGBA). Any integer or float dtype.

    Returns
    -------
    np.ndarray
        ``(H, W)``. A grey image (2-D, ``HxWx1`` or grey + alpha) keeps its dtype and values: its single channel
        as stored. A colour image gives float64, the unweighted mean of red, green and blue on the input's own
        scale (a uint8 picture gives values in [0, 255], fractions kept): no rounding or integer cast, so no
        intensity is lost. Alpha is dropped, not averaged in.

    Raises
    ------
    ImageInputError
        For an array that is neither 2-D nor channel-last with 1 to 4 channels.

    Examples
    --------
    >>> to_grey(np.array([[[10, 20, 31]]], np.uint8)).tolist()
    [[20.333333333333332]]
    >>> to_grey(np.array([[[0, 0, 255, 7]]], np.uint8)).tolist()
    [[85.0]]
    >>> to_grey(np.array([[1, 2]], np.uint16)).dtype
    dtype('uint16')
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.ndim != 3 or not 1 <= image.shape[-1] <= 4:
        raise ImageInputError(f"expected a 2-D grey image or an HxWxC picture with 1 to 4 channels, got shape "
                              f"{image.shape}")
    if image.shape[-1] <= 2:  # grey, or grey + alpha
        return image[..., 0]
    return image[..., :3].astype(np.float64).mean(axis=-1)


def ground_truth_file(image: str | Path, suffix: str) -> Path:
    """The ground-truth file that goes with ``image``: its stem plus ``suffix`` (e.g. ``_labels.tif``).

    Parameters
    ----------
    image : str or Path
        The image file.
    suffix : str
        What replaces its extension.

    Returns
    -------
    Path
        The ground-truth file, beside the image.

    Examples
    --------
    >>> ground_truth_file("Control/nuclei_000.tif", "_labels.tif").as_posix()
    'Control/nuclei_000_labels.tif'
    """
    image = Path(image)
    return image.with_name(image.stem + suffix)


#: Float images whose values all lie in [0, 1] give or take this much are taken as already scaled (and clipped);
#: any other float image is rescaled by its own minimum and maximum.
FLOAT_UNIT_TOLERANCE = 0.01


def image_geometry(image: np.ndarray, *, source: str = "") -> tuple[int, int, int]:
    """Height, width and number of channels of one decoded image, or an ``ImageInputError`` naming ``source``.

    A 2-D array is one grey image (1 channel); a 3-D array is one image when its last axis has at most 4 entries
    (channel-last: 1 grey, 3 RGB, 4 RGBA, 2 grey + alpha) or its first axis has one (a one-plane stack). Any
    other 3-D array is a stack of planes (a z-stack, a time series or a channel-first colour TIFF) and is
    refused, as are empty arrays and arrays of other dimensionality. The channel count is not checked here.

    Parameters
    ----------
    image : np.ndarray
        A decoded image.
    source : str, optional
        Named in error messages.

    Returns
    -------
    height : int
        Rows.
    width : int
        Columns.
    channels : int
        Channels (1 for grey).

    Raises
    ------
    ImageInputError
        For an empty array, a stack of planes or another dimensionality.

    Examples
    --------
    >>> image_geometry(np.zeros((20, 30, 3), np.uint8)), image_geometry(np.zeros((1, 20, 30), np.uint16))
    ((20, 30, 3), (20, 30, 1))
    >>> image_geometry(np.zeros((3, 20, 30), np.uint8), source="stack.tif")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    cellops.errors.ImageInputError: stack.tif: a stack of 3 planes (shape (3, 20, 30)), not one image; expected ...
    """
    name = source or "image"
    if image.size == 0:
        raise ImageInputError(f"{name}: empty image (shape {image.shape})")
    if image.ndim == 2:
        return int(image.shape[0]), int(image.shape[1]), 1
    if image.ndim == 3:
        if image.shape[-1] <= 4:
            return int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
        if image.shape[0] == 1:
            return int(image.shape[1]), int(image.shape[2]), 1
        raise ImageInputError(
            f"{name}: a stack of {image.shape[0]} planes (shape {image.shape}), not one image; expected a 2-D grey "
            "image or a channel-last RGB(A) image (save a channel-first colour TIFF channel-last)"
        )
    raise ImageInputError(
        f"{name}: a {image.ndim}-D array (shape {image.shape}), not one image; expected a 2-D grey image or a "
        "channel-last RGB(A) image"
    )


def decode_picture(data: bytes, *, max_pixels: int, min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode one uploaded picture as stored: PNG, JPEG or TIFF, grey or colour (RGB/RGBA, channel-last), 8/16-bit
    or float (what :func:`cellops.classifier.data.to_model_input` takes). Errors name the problem; too many pixels
    raise :class:`ImageTooLargeError`.

    Parameters
    ----------
    data : bytes
        The raw bytes of the upload.
    max_pixels : int
        The largest number of pixels accepted; checked from the header, before decoding.
    min_side : int, optional
        The smallest height and width accepted.

    Returns
    -------
    np.ndarray
        The picture, (H, W) or channel-last (H, W, C).

    Raises
    ------
    ImageInputError
        Naming the problem.

    Examples
    --------
    >>> decode_picture(encode_image(np.zeros((8, 8), np.uint8), "png"), max_pixels=100).shape
    (8, 8)
    """
    if not data:
        raise ImageInputError("empty upload: the file has no bytes")
    if data[:4] in _TIFF_MAGIC:
        picture = _read_tiff_upload(data, max_pixels, colour=True)
    else:
        picture = _read_pillow_upload(data, max_pixels, formats=("PNG", "JPEG"), grey_only=False)
    height, width, _ = image_geometry(picture)
    if min(height, width) < min_side:
        raise ImageInputError(f"image too small: {height}x{width} pixels; each side must be at least {min_side}")
    if picture.dtype.kind not in "uf" or picture.dtype.itemsize > 8 or picture.dtype.name in ("uint32", "uint64"):
        raise ImageInputError(f"unsupported dtype {picture.dtype.name}: expected uint8, uint16 or a float type")
    if picture.dtype.kind == "f" and not np.isfinite(picture).all():
        raise ImageInputError("image contains NaN or infinite values")
    return picture
