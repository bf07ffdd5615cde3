"""Readers and writers for the formats cellops handles: TIFF stacks, PNG/TIFF uploads, CSV tables and COCO
instance annotations.

One reader per format for the whole project: datasets, the command line and the services all go through
these functions, so every caller gets the same checks and the same error messages.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    import pandas as pd

#: dtypes the segmentation models accept; everything else is refused with a clear message.
SUPPORTED_DTYPES: tuple[str, ...] = ("uint8", "uint16", "float32", "float64")


class ImageInputError(ValueError):
    """An image that cannot be used: unreadable, empty, of the wrong shape, size or dtype."""


class ImageTooLargeError(ImageInputError):
    """An image with more pixels than the caller accepts (a service answers 413 to it)."""


def write_tiff_stack(path: str | Path, array: np.ndarray) -> Path:
    """Write a 2-D image or 3-D stack as an uncompressed TIFF, byte for byte reproducibly.

    No timestamp or software tag varies between calls, so the same array always gives the same file
    (DVC versions datasets by content hash).
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

    >>> round_significant(0.123456789)
    0.123457
    """
    return float(f"{value:.{digits}g}")


def write_files_safely(contents: dict[Path, bytes], *, overwrite: bool = False) -> list[Path]:
    """Write each path's bytes, but never replace a file whose contents differ unless ``overwrite``.

    Generators of built-in datasets write where a lab keeps its own images: nothing is written at all
    when any file would be replaced, and the ``FileExistsError`` names them.
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


def read_tiff_stack(path: str | Path) -> np.ndarray:
    """Read a TIFF file (one page or a stack) into a numpy array.

    Raises
    ------
    ImageInputError
        If the file is missing or not a readable TIFF; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such file")
    try:
        return tifffile.imread(path)
    except (tifffile.TiffFileError, ValueError, OSError) as error:
        raise ImageInputError(f"{path}: not a readable TIFF file ({error})") from error


def read_image_file(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG or TIFF file (one image or a stack) as stored; errors name the file and problem.

    Raises
    ------
    ImageInputError
        Missing, empty, corrupt or unsupported file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageInputError(f"{path}: empty file")
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff_stack(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{path}: not a readable image ({error})") from error


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image and the format it came in (``"png"`` or ``"tiff"``), to answer in kind."""

    array: np.ndarray
    format: str


def decode_image(data: bytes, *, max_pixels: int, allowed_ndim: tuple[int, ...] = (2, 3)) -> DecodedImage:
    """Decode PNG or TIFF bytes into a grey-level array and check that a model can use it.

    Parameters
    ----------
    data : the raw bytes of the upload.
    max_pixels : the largest number of pixels (all slices together) accepted.
    allowed_ndim : 2 for a single image, 3 for a stack of slices.

    Raises
    ------
    ImageInputError
        With a message naming the problem: empty upload, not a PNG or TIFF, RGB/multi-channel, wrong
        number of dimensions, too many pixels, unsupported dtype, non-finite values.

    Examples
    --------
    >>> buf = encode_image(np.zeros((8, 8), np.uint8), "png")
    >>> decode_image(buf, max_pixels=100).array.shape
    (8, 8)
    """
    if not data:
        raise ImageInputError("empty upload: the file has no bytes")
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                series = tif.series[0]
                n_pixels = int(np.prod(series.shape))
                if n_pixels > max_pixels:
                    raise ImageTooLargeError(f"image too large: {n_pixels} pixels, the limit is {max_pixels}")
                array = series.asarray()
        except ImageInputError:
            raise
        except Exception as error:  # tifffile raises many types on corrupt files
            raise ImageInputError(f"corrupt or unreadable TIFF ({error})") from error
        fmt = "tiff"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise ImageTooLargeError(
                        f"image too large: {img.width * img.height} pixels, the limit is {max_pixels}"
                    )
                if img.mode not in ("L", "I;16", "I;16B", "I", "F"):
                    raise ImageInputError(
                        f"PNG in colour mode {img.mode!r}: send a single-channel grey-level image"
                    )
                array = np.asarray(img)
        except ImageInputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ImageInputError(f"corrupt or unreadable PNG ({error})") from error
        fmt = "png"
    else:
        raise ImageInputError("not an image: expected PNG or TIFF bytes")

    if array.size == 0:
        raise ImageInputError(f"empty image: shape {array.shape}")
    if array.ndim not in allowed_ndim:
        raise ImageInputError(
            f"wrong dimensionality: got a {array.ndim}-D array of shape {array.shape}, "
            f"expected {' or '.join(f'{n}-D' for n in allowed_ndim)} (a grey-level image or a stack of slices)"
        )
    if array.size > max_pixels:
        raise ImageTooLargeError(f"image too large: {array.size} pixels, the limit is {max_pixels}")
    if array.dtype.name not in SUPPORTED_DTYPES:
        raise ImageInputError(f"unsupported dtype {array.dtype.name}: expected one of {', '.join(SUPPORTED_DTYPES)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ImageInputError("image contains NaN or infinite values")
    return DecodedImage(array=array, format=fmt)


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """Encode a 2-D array as PNG or a 2-D/3-D array as TIFF bytes."""
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
    """Scale an image to float32 in [0, 1] by its dtype's range (floats are taken as already in [0, 1]).

    Training and inference both use this, so a model sees the same scale whatever path the data took.
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype.kind == "f":
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise ImageInputError(f"unsupported dtype {image.dtype.name}: expected one of {', '.join(SUPPORTED_DTYPES)}")


def labels_to_coco(labels_per_image: dict[str, np.ndarray], category: str = "colony") -> dict:
    """COCO instance annotations (RLE masks, boxes, areas) from label images keyed by file name.

    >>> coco = labels_to_coco({"a.png": np.array([[0, 1], [2, 2]])})
    >>> [a["area"] for a in coco["annotations"]], coco_to_labels(coco, "a.png").tolist()
    ([1.0, 2.0], [[0, 1], [2, 2]])
    """
    from pycocotools import mask as coco_mask

    images, annotations = [], []
    for image_id, (file_name, labels) in enumerate(sorted(labels_per_image.items()), start=1):
        images.append({"id": image_id, "file_name": file_name, "height": int(labels.shape[0]),
                       "width": int(labels.shape[1])})
        for label in range(1, int(labels.max()) + 1):
            mask = np.asfortranarray((labels == label).astype(np.uint8))
            if not mask.any():
                continue
            rle = coco_mask.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                "area": float(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)], "iscrowd": 0,
            })
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": category}]}


def coco_to_labels(coco: dict, file_name: str) -> np.ndarray:
    """The label image of ``file_name`` rebuilt from COCO annotations (instance ``i`` labelled ``i``)."""
    matches = [img for img in coco["images"] if img["file_name"] == file_name]
    if not matches:
        raise KeyError(f"{file_name} is not among the images of the annotation file")
    from pycocotools import mask as coco_mask

    info = matches[0]
    labels = np.zeros((info["height"], info["width"]), np.int32)
    for i, ann in enumerate(a for a in coco["annotations"] if a["image_id"] == info["id"]):
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):  # polygons
            rles = coco_mask.frPyObjects(segmentation, info["height"], info["width"])
            segmentation = coco_mask.merge(rles)
        labels[coco_mask.decode(segmentation).astype(bool)] = i + 1
    return labels


def ground_truth_file(image: str | Path, suffix: str) -> Path:
    """The ground-truth file that goes with ``image``: its stem plus ``suffix`` (e.g. ``_labels.tif``).

    >>> ground_truth_file("Control/nuclei_000.tif", "_labels.tif").as_posix()
    'Control/nuclei_000_labels.tif'
    """
    image = Path(image)
    return image.with_name(image.stem + suffix)


#: Image file types a class-folder dataset may hold (what microscopes and labs export).
CLASS_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ClassFolderDataset:
    """Image files labelled by the folder they sit in (``root/<class>/<image>``), the layout labs keep.

    ``files[i]`` has label ``labels[i]``, an index into ``classes`` (folder names, sorted).
    """

    files: list[Path]
    labels: list[int]
    classes: list[str]

    def counts(self) -> dict[str, int]:
        return {name: self.labels.count(i) for i, name in enumerate(self.classes)}


def list_class_folders(root: str | Path) -> ClassFolderDataset:
    """The images of every class folder under ``root`` (any number of classes; PNG, TIFF or JPEG files).

    Raises a ``FileNotFoundError`` naming the problem when ``root`` is missing, holds fewer than two class folders,
    or a class folder holds no image (other files, such as notes, are ignored).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("non_ec/a.png", "ec/b.tif", "ec/c.jpg", "ec/notes.txt"):
    ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_bytes(b"x")
    >>> data = list_class_folders(root)
    >>> data.classes, data.counts()
    (['ec', 'non_ec'], {'ec': 2, 'non_ec': 1})
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected one sub-folder of images per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise FileNotFoundError(f"{root}: found {len(classes)} class folder(s) {classes}; a classifier needs at least two")
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        images = sorted(p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in CLASS_IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"{root / name}: no images ({', '.join(CLASS_IMAGE_SUFFIXES)}) in class {name!r}")
        files += images
        labels += [index] * len(images)
    return ClassFolderDataset(files=files, labels=labels, classes=classes)
