"""Segmentation metrics, computed from a confusion matrix accumulated over whole volumes.

Counting true/false positives and negatives once over every voxel (rather than averaging per-slice
scores) is what the Lucchi benchmark reports, and it keeps empty slices from distorting the figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class BinarySegmentationScores:
    """Scores of a binary segmentation against ground truth, over all voxels.

    Attributes
    ----------
    foreground_iou : Jaccard index of the foreground (mitochondria) class, TP / (TP + FP + FN).
    dice : Dice coefficient of the foreground class, 2 TP / (2 TP + FP + FN).
    background_iou : Jaccard index of the background class.
    mean_iou : mean of the foreground and background IoU (the "mean IoU" some papers report).
    precision, recall : of the foreground class.
    """

    foreground_iou: float
    dice: float
    background_iou: float
    mean_iou: float
    precision: float
    recall: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float:
    # Both empty: the prediction is perfect, by the usual convention.
    return 1.0 if denominator == 0 else numerator / denominator


def binary_segmentation_scores(prediction: np.ndarray, target: np.ndarray) -> BinarySegmentationScores:
    """Compare two binary masks of the same shape (any non-zero value is foreground).

    Examples
    --------
    >>> pred = np.array([[1, 1, 0, 0]])
    >>> true = np.array([[1, 0, 0, 0]])
    >>> s = binary_segmentation_scores(pred, true)
    >>> s.foreground_iou, round(s.dice, 4), round(s.background_iou, 4)
    (0.5, 0.6667, 0.6667)
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
    pred = prediction.astype(bool, copy=False)
    true = target.astype(bool, copy=False)
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred & ~true))
    fn = int(np.count_nonzero(~pred & true))
    tn = pred.size - tp - fp - fn
    fg_iou = _ratio(tp, tp + fp + fn)
    bg_iou = _ratio(tn, tn + fp + fn)
    return BinarySegmentationScores(
        foreground_iou=fg_iou,
        dice=_ratio(2 * tp, 2 * tp + fp + fn),
        background_iou=bg_iou,
        mean_iou=(fg_iou + bg_iou) / 2.0,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
    )
