"""Helpers shared by the classical analyses."""

from __future__ import annotations

import numpy as np

from cellops.io import ImageInputError


def to_gray_float(image: np.ndarray) -> np.ndarray:
    """A 2-D float64 image: RGB/RGBA converted to luminance, any integer or float dtype accepted.

    Raises
    ------
    ImageInputError
        For an empty image, a non-finite one, or one that is neither 2-D nor 2-D with 3/4 channels.
    """
    if image.size == 0:
        raise ImageInputError(f"empty image: shape {image.shape}")
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif image.ndim != 2:
        raise ImageInputError(f"expected a 2-D grey-level or RGB image, got shape {image.shape}")
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise ImageInputError("image contains NaN or infinite values")
    return image


def to_uint8_gray(image: np.ndarray) -> np.ndarray:
    """A 2-D uint8 image; 16-bit and float images are stretched from their own min to max.

    Examples
    --------
    >>> to_uint8_gray(np.array([[0, 1000], [2000, 4000]], np.uint16)).tolist()
    [[0, 64], [128, 255]]
    """
    if image.dtype == np.uint8 and image.ndim == 2:
        return image
    gray = to_gray_float(image)
    low, high = float(gray.min()), float(gray.max())
    if high <= low:
        return np.zeros(gray.shape, np.uint8)
    return np.clip(np.rint((gray - low) / (high - low) * 255), 0, 255).astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, colour: tuple[int, int, int] = (255, 64, 64)) -> np.ndarray:
    """The outline of every labelled object drawn on the grey image, as RGB uint8 (the overlay of the nuclear
    and calcium analyses; colonies have their own, with boxes and hulls).

    Examples
    --------
    >>> labels = np.zeros((8, 8), np.int32); labels[2:6, 2:6] = 1
    >>> rgb = label_overlay(np.zeros((8, 8), np.uint8), labels)
    >>> rgb.shape, rgb[2, 3].tolist(), rgb[3, 3].tolist()
    ((8, 8, 3), [255, 64, 64], [0, 0, 0])
    """
    from skimage.segmentation import find_boundaries

    rgb = np.repeat(to_uint8_gray(image)[..., None], 3, axis=2)
    rgb[find_boundaries(labels, mode="inner")] = colour
    return rgb
