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


@dataclass(frozen=True)
class InstanceMatch:
    """Object-level agreement of two label images at an IoU threshold.

    Attributes
    ----------
    true_positives, false_positives, false_negatives : object counts.
    precision, recall, f1 : from those counts.
    pairs : (true label, predicted label, IoU) of every matched pair.
    """

    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float
    recall: float
    f1: float
    pairs: list[tuple[int, int, float]]


def label_iou_matrix(truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (true object, predicted object) pair, from one joint histogram of the two label images.

    Returns
    -------
    (iou, true_ids, predicted_ids): ``iou[i, j]`` is the IoU of object ``true_ids[i]`` and
    ``predicted_ids[j]``; label 0 is background and is left out.
    """
    if truth.shape != prediction.shape:
        raise ValueError(f"label images differ in shape: {truth.shape} and {prediction.shape}")
    true_ids, true_inv = np.unique(truth, return_inverse=True)
    pred_ids, pred_inv = np.unique(prediction, return_inverse=True)
    joint = np.bincount(true_inv.ravel() * len(pred_ids) + pred_inv.ravel(),
                        minlength=len(true_ids) * len(pred_ids)).reshape(len(true_ids), len(pred_ids))
    true_area = joint.sum(axis=1, keepdims=True)
    pred_area = joint.sum(axis=0, keepdims=True)
    iou = joint / np.maximum(true_area + pred_area - joint, 1)
    keep_t, keep_p = true_ids != 0, pred_ids != 0
    return iou[np.ix_(keep_t, keep_p)], true_ids[keep_t], pred_ids[keep_p]


def match_instances(truth: np.ndarray, prediction: np.ndarray, *, iou_threshold: float = 0.5) -> InstanceMatch:
    """Match objects one-to-one by IoU (Hungarian assignment), counting a match only above ``iou_threshold``.

    Examples
    --------
    >>> truth = np.array([[1, 1, 0, 2, 2]])
    >>> pred = np.array([[3, 3, 0, 0, 4]])
    >>> m = match_instances(truth, pred)
    >>> m.true_positives, m.false_positives, m.false_negatives, m.f1
    (1, 1, 1, 0.5)
    """
    from scipy.optimize import linear_sum_assignment

    iou, true_ids, pred_ids = label_iou_matrix(truth, prediction)
    pairs: list[tuple[int, int, float]] = []
    if iou.size:
        rows, cols = linear_sum_assignment(-iou)
        pairs = [(int(true_ids[r]), int(pred_ids[c]), float(iou[r, c])) for r, c in zip(rows, cols)
                 if iou[r, c] > iou_threshold]
    tp = len(pairs)
    fp, fn = len(pred_ids) - tp, len(true_ids) - tp
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return InstanceMatch(tp, fp, fn, precision, recall, f1, pairs)
