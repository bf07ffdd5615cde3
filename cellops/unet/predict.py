"""Segmenting EM images and volumes with a trained U-Net: the one place where predict, threshold and score live.

Evaluation, validation during training, the BentoML service, the CLI, the benchmark and the tests all call
:func:`segment` with one :class:`InferenceSettings`; the settings used for the test metrics are stored with the
registered model, so what is served is exactly what was measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from cellops.config import from_mapping
from cellops.inference import prepare_for_inference, sliding_window_predict
from cellops.intensity import LEGACY, Normalization
from cellops.metrics import BinarySegmentationScores, binary_segmentation_scores


@dataclass(frozen=True)
class InferenceSettings:
    """How a U-Net is applied to an image larger than its tiles.

    Attributes
    ----------
    tile_size : side of the square tiles (a multiple of ``2 ** depth`` of the U-Net).
    tile_overlap : fraction of a tile shared with its neighbour, in [0, 1).
    batch_size : tiles per forward pass.
    threshold : foreground probability from which a pixel is mitochondrion (>=, as it was chosen on validation).
    flip_averaging : average the probabilities of the image and its three flips (test-time augmentation; the
        U-Net is trained on flipped patches, so the four views are equally valid; four times the compute).
    z_smoothing : for stacks, average each slice's probabilities with its neighbours over this many slices
        (odd; 1 = off): mitochondria are 3-D, a 2-D U-Net's slice-to-slice noise is not.
    normalization : how intensities are scaled, for a 2-D image or a whole stack at once
        (:class:`cellops.intensity.Normalization`; training patches are cut from volumes scaled the same way).
    """

    tile_size: int
    tile_overlap: float
    batch_size: int
    threshold: float
    flip_averaging: bool = False  # defaults only so that versions registered before these existed still load
    z_smoothing: int = 1
    normalization: Normalization = LEGACY  # versions registered before it was a setting were trained on dtype scaling

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalization", Normalization.coerce(self.normalization))
        if self.tile_size < 8:
            raise ValueError(f"tile_size must be at least 8, got {self.tile_size}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ValueError(f"tile_overlap must lie in [0, 1), got {self.tile_overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.z_smoothing < 1 or self.z_smoothing % 2 == 0:
            raise ValueError(f"z_smoothing must be an odd number of slices (1 = off), got {self.z_smoothing}")

    @classmethod
    def from_dict(cls, values: dict) -> InferenceSettings:
        """From a config or registry mapping; an unknown or missing key is named in the error."""
        return from_mapping(cls, values)

    def as_dict(self) -> dict:
        return asdict(self)


def predict_probabilities(model: nn.Module, image: np.ndarray, settings: InferenceSettings,
                          device: str | torch.device = "cpu", *, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Foreground probabilities of a 2-D image or 3-D stack (8/16-bit or float), normalised by
    ``settings.normalization`` over the whole image or stack, or with the ``bounds`` given (those of a whole
    volume processed slab by slab, see :func:`cellops.unet.streaming.volume_bounds`).

    ``model`` should come from :func:`cellops.inference.prepare_for_inference` (done once, not per call).
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


def segment(model: nn.Module, image: np.ndarray, settings: InferenceSettings,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Boolean mitochondria mask of a 2-D image or 3-D stack.

    Examples
    --------
    >>> from models.unet import UNet
    >>> model = prepare_for_inference(UNet(base_channels=4, depth=2))
    >>> settings = InferenceSettings(tile_size=32, tile_overlap=0.25, batch_size=4, threshold=0.5)
    >>> segment(model, np.zeros((2, 40, 48), np.uint8), settings).shape
    (2, 40, 48)
    """
    return predict_probabilities(model, image, settings, device) >= settings.threshold


def score(model: nn.Module, image: np.ndarray, mask: np.ndarray, settings: InferenceSettings,
          device: str | torch.device = "cpu") -> tuple[BinarySegmentationScores, np.ndarray]:
    """Segment ``image`` and score it against the ground-truth ``mask`` (non-zero = foreground) over all voxels.

    Returns the scores and the predicted mask (for overlays).
    """
    prediction = segment(model, image, settings, device)
    return binary_segmentation_scores(prediction, mask > 0), prediction


def load_for_inference(model: nn.Module) -> nn.Module:
    """The model as it is served: eval mode, BatchNorm folded, channels-last (see ``prepare_for_inference``)."""
    return prepare_for_inference(model)
