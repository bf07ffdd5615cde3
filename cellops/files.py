"""Reading one image file from disk with every check that names its problem: the lowest layer of
:mod:`cellops.microscopy` (which adds formats, axes and physical sizes) and :mod:`cellops.io` (which re-exports these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageSequence, UnidentifiedImageError

from cellops.errors import ImageInputError, ImageTooLargeError


def _check_input_file(path: Path) -> None:
    """Raise ``ImageInputError`` naming ``path`` unless it is a non-empty regular file this process may read: a
    directory, a symbolic-link loop, a broken link, a pipe or device (reading one could block forever) are each
    named as such rather than as "no such file"."""
    import errno
    import os
    import stat

    try:
        info = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageInputError(f"{path}: symbolic link loop (the link leads back to itself)") from None
        if path.is_symlink():
            raise ImageInputError(f"{path}: broken symbolic link (it points to {os.readlink(path)}, which does not "
                                  "exist)") from None
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ImageInputError(f"{path}: no such file") from None
        raise ImageInputError(f"{path}: cannot be opened ({error.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageInputError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageInputError(f"{path}: not a regular file (a pipe, socket or device)")
    if not os.access(path, os.R_OK):
        raise ImageInputError(f"{path}: permission denied")
    if info.st_size == 0:
        raise ImageInputError(f"{path}: empty file")


def read_tiff_stack(path: str | Path) -> np.ndarray:
    """Read a TIFF file (one page or a stack) into a numpy array.

    The size of a plane is checked from the header, before anything is decompressed: above Pillow's
    decompression-bomb limit (``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels, as for a PNG) the file is refused. A
    stack that tifffile finds damaged (a page offset past the end of a truncated file) is refused rather than
    returned short.

    Parameters
    ----------
    path : str or Path
        The TIFF file.

    Returns
    -------
    np.ndarray
        The image or stack, dtype as stored.

    Raises
    ------
    ImageInputError
        If the file is missing, a directory, a symbolic-link loop, empty, not a readable TIFF, or truncated; the
        message names the file. ``ImageTooLargeError`` (a subclass) for a plane over the limit.

    Examples
    --------
    >>> import tempfile
    >>> from cellops.io import write_tiff_stack
    >>> path = write_tiff_stack(Path(tempfile.mkdtemp()) / "s.tif", np.zeros((3, 8, 8), np.uint16))
    >>> read_tiff_stack(path).shape
    (3, 8, 8)
    >>> read_tiff_stack(path.parent)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    cellops.errors.ImageInputError: ...: is a directory, not an image file
    """
    import logging.handlers
    import queue

    path = Path(path)
    _check_input_file(path)
    # tifffile logs, rather than raises, what it finds damaged (a truncated stack reads as its first pages).
    complaints: queue.SimpleQueue = queue.SimpleQueue()
    collector = logging.handlers.QueueHandler(complaints)
    collector.setLevel(logging.ERROR)
    tifffile_log = logging.getLogger("tifffile")
    tifffile_log.addHandler(collector)
    expected_planes = None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            plane = int(np.prod([n for n, axis in zip(series.shape, series.axes) if axis in "YX"]))
            expected_planes = int(np.prod([n for n, axis in zip(series.shape, series.axes) if axis not in "YXS"]))
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and plane > 2 * limit:
                raise ImageTooLargeError(f"{path}: image too large: {plane} pixels per plane (shape {series.shape}); "
                                         f"the limit is {2 * limit}")
            array = tif.asarray()
    except ImageInputError:
        raise
    except Exception as tiff_error:  # tifffile raises many types (zlib.error, missing codecs...) on such files
        # LZW/PackBits/JPEG-compressed TIFFs need the imagecodecs package in tifffile; Pillow decodes them itself.
        try:
            with Image.open(path) as img:
                pages = [np.asarray(_intensities(page.copy())) for page in ImageSequence.Iterator(img)]
        except Exception:
            raise ImageInputError(f"{path}: not a readable TIFF file ({tiff_error})") from tiff_error
        if expected_planes is not None and len(pages) != expected_planes:
            raise ImageInputError(f"{path}: corrupt or truncated TIFF: its header describes {expected_planes} planes, "
                                  f"{len(pages)} could be read ({tiff_error})") from tiff_error
        return pages[0] if len(pages) == 1 else np.stack(pages)
    finally:
        tifffile_log.removeHandler(collector)
    if not complaints.empty():
        raise ImageInputError(f"{path}: corrupt or truncated TIFF ({complaints.get().getMessage()})")
    return array


def read_picture_file(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG (or any Pillow format) file as stored: the pixels of :func:`read_image_file` for files that
    are not TIFF; errors name the file and problem.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.png"
    >>> from cellops.io import encode_image
    >>> _ = path.write_bytes(encode_image(np.full((9, 8), 7, np.uint8), "png"))
    >>> read_picture_file(path).shape
    (9, 8)
    """
    path = Path(path)
    _check_input_file(path)
    try:
        with Image.open(path) as img:
            return np.asarray(_intensities(img))
    except Image.DecompressionBombError as error:  # not an OSError: Pillow refuses from the header
        raise ImageTooLargeError(f"{path}: image too large ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageInputError(f"{path}: not a readable image ({error})") from error


def _intensities(img: Image.Image) -> Image.Image:
    """Palette, CMYK and 1-bit images as the intensities they show (their raw values are palette indices, ink
    amounts or booleans)."""
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("LA", "La"):  # grey + alpha: the alpha is not an intensity
        return img.getchannel(0)
    return img
