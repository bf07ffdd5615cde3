"""Segmenting EM images and volumes with a trained U-Net: the one place where predict, threshold and score live.

Evaluation, validation during training, the BentoML service, the CLI, the benchmark and the tests all call
:func:`segment` with one :class:`UNetServing`; the settings used for the test metrics are stored with the
registered model, so what is served is exactly what was measured.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from cellops.inference import prepare_for_inference, sliding_window_predict
from cellops.unet.specs import UNetServing
from cellops.metrics import BinarySegmentationScores, binary_segmentation_scores


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

    def predict(view: np.ndarray) -> np.ndarray:
        return sliding_window_predict(model, np.ascontiguousarray(view), tile_size=settings.tile_size,
                                      overlap=settings.tile_overlap, batch_size=settings.batch_size, device=device)

    probabilities = predict(unit)
    if settings.flip_averaging:
        axes = (unit.ndim - 1, unit.ndim - 2)  # columns, rows
        for flip in ((axes[0],), (axes[1],), axes):
            probabilities += np.flip(predict(np.flip(unit, flip)), flip)
        probabilities /= 4.0
    if settings.z_smoothing > 1 and probabilities.ndim == 3:
        probabilities = ndimage.uniform_filter1d(probabilities, settings.z_smoothing, axis=0, mode="nearest")
    return probabilities


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
