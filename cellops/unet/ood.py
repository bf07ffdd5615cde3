"""Out-of-distribution features of the U-Net (:mod:`cellops.ood`): the input statistics of the normalised image and
statistics of the probability map it was segmented from, both at hand once an image is segmented."""

from __future__ import annotations

import numpy as np
from torch import nn

from cellops.ood import INTENSITY_FEATURES, OODReference, Verdict, intensity_features, verdict_and_features
from cellops.unet.specs import UNetServing

#: The U-Net's features, in order: the input statistics, then the probability map's.
FEATURE_NAMES = (*INTENSITY_FEATURES, "foreground_fraction", "mean_entropy", "foreground_confidence")


def output_features(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Statistics of a probability map: foreground fraction, mean binary entropy (bits) and mean probability of
    the foreground pixels (0 without foreground).

    Examples
    --------
    >>> output_features(np.array([[0.0, 1.0], [0.5, 0.5]]), 0.5).round(3).tolist()
    [0.75, 0.5, 0.667]
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    foreground = p >= threshold
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    confidence = float(p[foreground].mean()) if foreground.any() else 0.0
    return np.array([float(foreground.mean()), float(entropy.mean()), confidence])


def image_features(unit: np.ndarray, probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """The U-Net's OOD features (:data:`FEATURE_NAMES`) of one image or stack.

    Parameters
    ----------
    unit : np.ndarray
        The image (Y, X) or stack (Z, Y, X) normalised as served (``settings.normalization.apply``).
    probabilities : np.ndarray
        Its foreground probabilities, same shape.
    threshold : float
        The served probability threshold.

    Returns
    -------
    np.ndarray
        float64 vector of len(:data:`FEATURE_NAMES`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> image_features(rng.random((64, 64)), rng.random((64, 64)), 0.5).shape
    (31,)
    """
    return np.concatenate([intensity_features(unit), output_features(probabilities, threshold)])


def verdict_for(reference: OODReference | None, image: np.ndarray, probabilities: np.ndarray,
                settings: UNetServing, *, bounds: tuple[float, float] | None = None) -> Verdict:
    """The verdict of a segmented image or stack, from its raw pixels and served probabilities.

    Parameters
    ----------
    reference : OODReference or None
        The model version's reference (None: the version has none).
    image : np.ndarray
        The raw image or stack that was segmented.
    probabilities : np.ndarray
        Its probabilities (:func:`cellops.unet.predict.predict_probabilities`).
    settings : UNetServing
        As served.
    bounds : tuple of float, optional
        The normalisation bounds used (a volume segmented slab by slab).

    Returns
    -------
    Verdict
    """
    unit = settings.normalization.apply(image, bounds=bounds)
    return verdict_and_features(reference, unit, lambda: image_features(unit, probabilities, settings.threshold))[0]


def reference_crops(volume: np.ndarray, sizes: tuple[int, ...], count: int, *, seed: int = 0) -> list[np.ndarray]:
    """``count`` random square crops of the slices of ``volume``, of the sides in ``sizes`` in turn (those larger
    than a slice are left out), as users send 2-D fields of many sizes.

    Examples
    --------
    >>> crops = reference_crops(np.zeros((3, 80, 90)), (32, 64, 128), 5)
    >>> [c.shape for c in crops]
    [(32, 32), (64, 64), (32, 32), (64, 64), (32, 32)]
    """
    volume = volume if volume.ndim == 3 else volume[None]
    depth, height, width = volume.shape
    usable = [s for s in sizes if s <= min(height, width)] or [min(height, width)]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        side = usable[i % len(usable)]
        z, y, x = rng.integers(0, depth), rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crops.append(volume[z, y:y + side, x:x + side])
    return crops


def reference_rows(model: nn.Module, volume: np.ndarray, settings: UNetServing, *, count: int = 64,
                   sizes: tuple[int, ...] = (128, 256, 512), seed: int = 0) -> np.ndarray:
    """Features (count, F) of random 2-D crops of ``volume`` segmented as served: the rows a reference or its
    calibration is fitted on.

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference.
    volume : np.ndarray
        A training (reference) or validation (calibration) stack.
    settings : UNetServing
        As served.
    count : int
        Crops.
    sizes : tuple of int
        Their sides, in turn (at least the tile size is sensible).
    seed : int
        Seed of the crop positions.

    Returns
    -------
    np.ndarray
        float64 (count, len(:data:`FEATURE_NAMES`)).
    """
    from cellops.unet.predict import predict_probabilities

    rows = []
    for crop in reference_crops(volume, sizes, count, seed=seed):
        probabilities = predict_probabilities(model, crop, settings)
        rows.append(image_features(settings.normalization.apply(crop), probabilities, settings.threshold))
    return np.array(rows).reshape(-1, len(FEATURE_NAMES))
