"""Segmenting EM images and volumes with a trained U-Net: the one place where predict, threshold and score live.

Evaluation, validation during training, the BentoML service, the CLI, the benchmark and the tests all call
:func:`segment` with one :class:`UNetServing`; the settings used for the test metrics are stored with the
registered model, so what is served is exactly what was measured.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from cellops.inference import prepare_for_inference, sliding_window_predict
from cellops.metrics import (
    BinarySegmentationScores,
    binary_segmentation_scores,
    bootstrap_interval,
    per_slice_overlap,
    pooled_foreground_iou,
)
from cellops.uncertainty import DIHEDRAL, FLIPS, Uncertainty
from cellops.unet.specs import UNetServing


def predict_probabilities(model: nn.Module, image: np.ndarray, settings: UNetServing,
                          device: str | torch.device = "cpu", *, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Foreground probabilities of a 2-D image or 3-D stack (8/16-bit or float), normalised by
    ``settings.normalization`` over the whole image or stack, or with the ``bounds`` given (those of a whole
    volume processed slab by slab, see :func:`cellops.unet.streaming.volume_bounds`).

    ``model`` should come from :func:`cellops.inference.prepare_for_inference` (done once, not per call).

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference.
    image : np.ndarray
        2-D image (Y, X) or 3-D stack (Z, Y, X).
    settings : UNetServing
        Tiling, flips, z-smoothing and normalisation, as served.
    device : str or torch.device, optional
        Where the model is.
    bounds : tuple of float, optional
        Intensity bounds to normalise with instead of those of ``image``.

    Returns
    -------
    np.ndarray
        float32 probabilities in [0, 1], shape of ``image``.
    """
    unit = settings.normalization.apply(image, bounds=bounds)
    probabilities = _predict_view(model, unit, settings, device)
    if settings.flip_averaging:
        axes = (unit.ndim - 1, unit.ndim - 2)  # columns, rows
        for flip in ((axes[0],), (axes[1],), axes):
            probabilities += np.flip(_predict_view(model, np.flip(unit, flip), settings, device), flip)
        probabilities /= 4.0
    return _z_smoothed(probabilities, settings)


def segment(model: nn.Module, image: np.ndarray, settings: UNetServing,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Boolean mitochondria mask of a 2-D image or 3-D stack.

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference (:func:`load_for_inference`).
    image : np.ndarray
        2-D image (Y, X) or 3-D stack (Z, Y, X).
    settings : UNetServing
        How the model is applied and the probability threshold.
    device : str or torch.device, optional
        Where the model is.

    Returns
    -------
    np.ndarray
        Boolean mask, shape of ``image``: probability >= ``settings.threshold``.

    Examples
    --------
    >>> from models.unet import UNet
    >>> model = prepare_for_inference(UNet(base_channels=4, depth=2))
    >>> settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)
    >>> segment(model, np.zeros((2, 40, 48), np.uint8), settings).shape
    (2, 40, 48)
    """
    return predict_probabilities(model, image, settings, device) >= settings.threshold


def score(model: nn.Module, image: np.ndarray, mask: np.ndarray, settings: UNetServing,
          device: str | torch.device = "cpu") -> tuple[BinarySegmentationScores, np.ndarray]:
    """Segment ``image`` and score it against the ground-truth ``mask`` (non-zero = foreground) over all voxels.

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference (:func:`load_for_inference`).
    image : np.ndarray
        2-D image or 3-D stack.
    mask : np.ndarray
        Its ground truth, same shape (non-zero = foreground).
    settings : UNetServing
        How the model is applied, as served.
    device : str or torch.device, optional
        Where the model is.

    Returns
    -------
    scores : BinarySegmentationScores
        The scores over all voxels.
    prediction : np.ndarray
        The predicted boolean mask (for overlays).
    """
    prediction = segment(model, image, settings, device)
    return binary_segmentation_scores(prediction, mask > 0), prediction


def score_with_interval(model: nn.Module, image: np.ndarray, mask: np.ndarray, settings: UNetServing,
                        device: str | torch.device = "cpu") -> tuple[dict[str, float], np.ndarray]:
    """The metrics a U-Net version is registered with: :func:`score` of the test volume, and the promotion
    metric's bootstrap 95 % interval over its slices (``foreground_iou_ci_low``, ``foreground_iou_ci_high``).

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference (:func:`load_for_inference`).
    image : np.ndarray
        The test stack (Z, Y, X).
    mask : np.ndarray
        Its ground truth, same shape (non-zero = foreground).
    settings : UNetServing
        How the model is applied, as served.
    device : str or torch.device, optional
        Where the model is.

    Returns
    -------
    metrics : dict of str to float
        The scores and the interval.
    prediction : np.ndarray
        The predicted boolean mask.
    """
    scores, prediction = score(model, image, mask, settings, device)
    interval = bootstrap_interval(pooled_foreground_iou, *per_slice_overlap(prediction, mask > 0))
    return ({**scores.as_dict(), "foreground_iou_ci_low": interval.low, "foreground_iou_ci_high": interval.high},
            prediction)


def load_for_inference(model: nn.Module) -> nn.Module:
    """The model as it is served: eval mode, BatchNorm folded, channels-last (see ``prepare_for_inference``).

    Parameters
    ----------
    model : nn.Module
        The trained U-Net (left as it is).

    Returns
    -------
    nn.Module
        A copy ready for :func:`segment`.
    """
    return prepare_for_inference(model)


#: How :func:`segment_with_uncertainty` scores an image from its views (see :class:`TTAStatistics`): the mean
#: pixel uncertainty over the pixels any view calls foreground. Chosen by how well it ranks images by their true
#: error (1 - Dice of the served mask): small U-Nets trained briefly on synthetic EM (3 seeds, 48 test images of
#: 96x96 each; ``benchmarks/uncertainty_cost.py --part rank``) give it a Spearman correlation of 0.75 on average
#: (0.45, 0.97, 0.83), against 0.72 for 1 - the mean pairwise IoU of the views' masks and 0.39 for the mean over
#: every pixel (which background-heavy images dilute); it was the best of the three for every seed.
IMAGE_SCORE = "foreground-spread"


def tta_probabilities(model: nn.Module, image: np.ndarray, settings: UNetServing, device: str | torch.device = "cpu",
                      *, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Foreground probabilities of a 2-D image or 3-D stack under each of the eight dihedral test-time
    augmentations (:data:`cellops.uncertainty.DIHEDRAL`, the identity first), each brought back to the image's
    frame; no flip averaging and no z-smoothing (:func:`predict_probabilities` does those).

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference.
    image : np.ndarray
        2-D image (Y, X) or 3-D stack (Z, Y, X).
    settings : UNetServing
        Tiling and normalisation, as served.
    device : str or torch.device, optional
        Where the model is.
    bounds : tuple of float, optional
        Intensity bounds to normalise with instead of those of ``image``.

    Returns
    -------
    np.ndarray
        float32 (8, *image.shape) in [0, 1].
    """
    unit = settings.normalization.apply(image, bounds=bounds)
    views = np.empty((len(DIHEDRAL), *unit.shape), np.float32)
    for i, view in enumerate(DIHEDRAL):
        views[i] = view.invert(_predict_view(model, view.apply(unit), settings, device))
    return views


def _predict_view(model: nn.Module, unit: np.ndarray, settings: UNetServing, device: str | torch.device) -> np.ndarray:
    """Probabilities of one (normalised, possibly flipped) view, tiled as served."""
    return sliding_window_predict(model, np.ascontiguousarray(unit), tile_size=settings.tile_size,
                                  overlap=settings.tile_overlap, batch_size=settings.batch_size, device=device)


def served_probabilities(views: np.ndarray, settings: UNetServing) -> np.ndarray:
    """The probabilities :func:`predict_probabilities` serves, from :func:`tta_probabilities`' views: the identity
    (with its three flips when ``flip_averaging``, added in the same order, so the result is bit for bit the
    same), then z-smoothing.

    Parameters
    ----------
    views : np.ndarray
        (8, ...) from :func:`tta_probabilities`.
    settings : UNetServing
        Flip averaging and z-smoothing, as served.

    Returns
    -------
    np.ndarray
        float32 probabilities, shape of one view.
    """
    probabilities = views[DIHEDRAL.index(FLIPS[0])].copy()
    if settings.flip_averaging:
        for flip in FLIPS[1:]:
            probabilities += views[DIHEDRAL.index(flip)]
        probabilities /= 4.0
    return _z_smoothed(probabilities, settings)


def _z_smoothed(probabilities: np.ndarray, settings: UNetServing) -> np.ndarray:
    if settings.z_smoothing > 1 and probabilities.ndim == 3:
        return ndimage.uniform_filter1d(probabilities, settings.z_smoothing, axis=0, mode="nearest")
    return probabilities


class TTAStatistics:
    """What the test-time views of an image (or of a volume, slab by slab) say about how sure the U-Net is,
    gathered without keeping the views.

    Per pixel the uncertainty is twice the standard deviation of the eight views' probabilities (in [0, 1]: 0 when
    every view agrees, 1 when half say 0 and half say 1). Per image, :data:`IMAGE_SCORE` picks one of:

    ``foreground-spread``
        the mean pixel uncertainty over the pixels any view calls foreground (0 when none does);
    ``pairwise-iou``
        1 - the mean IoU of every pair of the views' masks;
    ``all-spread``
        the mean pixel uncertainty over every pixel.

    Parameters
    ----------
    threshold : float
        Probability from which a view calls a pixel foreground.

    Examples
    --------
    >>> stats = TTAStatistics(0.5)
    >>> views = np.zeros((8, 2, 2), np.float32); views[:4, 0, 0] = 1.0
    >>> pixels = stats.add(views)
    >>> float(pixels[0, 0]), stats.scores()["foreground-spread"]
    (1.0, 1.0)
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.pixels = 0
        self.foreground = 0
        self.spread_all = 0.0
        self.spread_foreground = 0.0
        self.intersections = np.zeros((len(DIHEDRAL), len(DIHEDRAL)), np.int64)

    def add(self, views: np.ndarray) -> np.ndarray:
        """Count the views of one image or slab (the views of :func:`tta_probabilities`, smoothed as served).

        Parameters
        ----------
        views : np.ndarray
            (8, ...) probabilities.

        Returns
        -------
        np.ndarray
            float32 pixel uncertainty in [0, 1], shape of one view.
        """
        spread = np.clip(2.0 * views.std(axis=0, dtype=np.float64), 0.0, 1.0).astype(np.float32)
        masks = (views >= self.threshold).reshape(len(views), -1)
        union = masks.any(axis=0)
        self.pixels += spread.size
        self.foreground += int(union.sum())
        self.spread_all += float(spread.sum(dtype=np.float64))
        self.spread_foreground += float(spread.ravel()[union].sum(dtype=np.float64))
        for i in range(len(masks)):
            for j in range(i, len(masks)):
                self.intersections[i, j] += int(np.count_nonzero(masks[i] & masks[j]))
        return spread

    def scores(self) -> dict[str, float]:
        """Every candidate image score (see the class), each in [0, 1].

        Returns
        -------
        dict of str to float
            ``foreground-spread``, ``pairwise-iou`` and ``all-spread``.
        """
        areas = np.diag(self.intersections)
        ious = []
        for i in range(len(areas)):
            for j in range(i + 1, len(areas)):
                union = areas[i] + areas[j] - self.intersections[i, j]
                ious.append(self.intersections[i, j] / union if union else 1.0)
        return {"foreground-spread": self.spread_foreground / self.foreground if self.foreground else 0.0,
                "pairwise-iou": float(np.clip(1.0 - np.mean(ious), 0.0, 1.0)),
                "all-spread": self.spread_all / self.pixels if self.pixels else 0.0}

    def uncertainty(self, pixels: np.ndarray | None = None) -> Uncertainty:
        """The image's :class:`Uncertainty` (score :data:`IMAGE_SCORE`, method ``flip-tta``).

        Parameters
        ----------
        pixels : np.ndarray, optional
            The pixel map to hand on (None for a volume gathered slab by slab).

        Returns
        -------
        Uncertainty
            The image score, and the pixel map when given.
        """
        return Uncertainty(float(np.clip(self.scores()[IMAGE_SCORE], 0.0, 1.0)), "flip-tta", pixels=pixels)


def segment_with_uncertainty(model: nn.Module, image: np.ndarray, settings: UNetServing,
                             device: str | torch.device = "cpu", *, bounds: tuple[float, float] | None = None,
                             ) -> tuple[np.ndarray, Uncertainty]:
    """:func:`segment`'s mask (the same, bit for bit) and how sure the U-Net is of it, from its agreement with
    itself under the eight flips and quarter turns of the image (:class:`TTAStatistics`). Costs eight forward
    passes (four more than ``flip_averaging``, seven more than without); :func:`segment` is unchanged.

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference (:func:`load_for_inference`).
    image : np.ndarray
        2-D image (Y, X) or 3-D stack (Z, Y, X).
    settings : UNetServing
        How the model is applied and the probability threshold, as served.
    device : str or torch.device, optional
        Where the model is.
    bounds : tuple of float, optional
        Intensity bounds to normalise with instead of those of ``image``.

    Returns
    -------
    mask : np.ndarray
        Boolean mask, shape of ``image``: what :func:`segment` returns.
    uncertainty : Uncertainty
        ``image``: :data:`IMAGE_SCORE` in [0, 1]; ``pixels``: float32 map in [0, 1], shape of ``image``;
        method ``flip-tta``.

    Examples
    --------
    >>> from models.unet import UNet
    >>> model = prepare_for_inference(UNet(base_channels=4, depth=2))
    >>> settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)
    >>> mask, uncertainty = segment_with_uncertainty(model, np.zeros((40, 48), np.uint8), settings)
    >>> mask.shape, uncertainty.pixels.shape, 0.0 <= uncertainty.image <= 1.0
    ((40, 48), (40, 48), True)
    """
    probabilities, uncertainty = probabilities_with_uncertainty(model, image, settings, device, bounds=bounds)
    return probabilities >= settings.threshold, uncertainty


def probabilities_with_uncertainty(model: nn.Module, image: np.ndarray, settings: UNetServing,
                                   device: str | torch.device = "cpu", *,
                                   bounds: tuple[float, float] | None = None) -> tuple[np.ndarray, Uncertainty]:
    """:func:`segment_with_uncertainty` before the threshold: the served probabilities (those the mask is
    thresholded from, which the OOD verdict describes) and the uncertainty of the eight views.

    Examples
    --------
    >>> from models.unet import UNet
    >>> model = prepare_for_inference(UNet(base_channels=4, depth=2))
    >>> settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)
    >>> probabilities, _ = probabilities_with_uncertainty(model, np.zeros((40, 48), np.uint8), settings)
    >>> probabilities.shape, probabilities.dtype
    ((40, 48), dtype('float32'))
    """
    views = tta_probabilities(model, image, settings, device, bounds=bounds)
    probabilities = served_probabilities(views, settings)
    if settings.z_smoothing > 1 and views.ndim == 4:
        views = np.stack([_z_smoothed(view, settings) for view in views])
    statistics = TTAStatistics(settings.threshold)
    return probabilities, statistics.uncertainty(statistics.add(views))


def stack_uncertainty(model: nn.Module, slabs: Iterable[tuple[np.ndarray, slice]], settings: UNetServing,
                      device: str | torch.device = "cpu", *, bounds: tuple[float, float] | None = None) -> Uncertainty:
    """The uncertainty of a volume too large to hold, gathered slab by slab (as
    :func:`cellops.unet.streaming.segment_volume_file` segments it): each slab is read with its z-smoothing halo
    and only its own slices are counted. The image score is :data:`IMAGE_SCORE` over the whole volume; no pixel
    map is kept.

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference.
    slabs : iterable of (np.ndarray, slice)
        Each slab (Z, Y, X) as read, halo included, and the slices of it that are its own.
    settings : UNetServing
        As served.
    device : str or torch.device, optional
        Where the model is.
    bounds : tuple of float, optional
        The whole volume's intensity bounds (:func:`cellops.unet.streaming.volume_bounds`).

    Returns
    -------
    Uncertainty
        Method ``flip-tta``, ``pixels`` None.
    """
    statistics = TTAStatistics(settings.threshold)
    for slab, own in slabs:
        views = tta_probabilities(model, slab, settings, device, bounds=bounds)
        views = np.stack([_z_smoothed(view, settings) for view in views])
        statistics.add(views[:, own])
    return statistics.uncertainty()
