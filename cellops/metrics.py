"""Segmentation metrics, computed from a confusion matrix accumulated over whole volumes.

Counting true/false positives and negatives once over every voxel (rather than averaging per-slice
scores) is what the Lucchi benchmark reports, and it keeps empty slices from distorting the figure.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class BinarySegmentationScores:
    """Scores of a binary segmentation against ground truth, over all voxels.

    Attributes
    ----------
    foreground_iou : float
        Jaccard index of the foreground (mitochondria) class, TP / (TP + FP + FN).
    dice : float
        Dice coefficient of the foreground class, 2 TP / (2 TP + FP + FN).
    background_iou : float
        Jaccard index of the background class.
    mean_iou : float
        Mean of the foreground and background IoU (the "mean IoU" some papers report).
    precision : float
        Precision of the foreground class.
    recall : float
        Recall of the foreground class.
    """

    foreground_iou: float
    dice: float
    background_iou: float
    mean_iou: float
    precision: float
    recall: float

    def as_dict(self) -> dict[str, float]:
        """Every score by name (what MLflow logs and the registry compares).

        Returns
        -------
        dict of str to float
            The fields.
        """
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float:
    # Both empty: the prediction is perfect, by the usual convention.
    return 1.0 if denominator == 0 else numerator / denominator


def binary_segmentation_scores(prediction: np.ndarray, target: np.ndarray) -> BinarySegmentationScores:
    """Compare two binary masks of the same shape (any non-zero value is foreground).

    Parameters
    ----------
    prediction : np.ndarray
        Predicted mask, any shape.
    target : np.ndarray
        Ground truth, same shape.

    Returns
    -------
    BinarySegmentationScores
        The scores over all voxels (1.0 where a ratio is 0 / 0: nothing predicted and nothing true).

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
    true_positives : int
        Matched objects.
    false_positives : int
        Predicted objects left unmatched.
    false_negatives : int
        True objects left unmatched.
    precision : float
        TP / (TP + FP).
    recall : float
        TP / (TP + FN).
    f1 : float
        2 TP / (2 TP + FP + FN).
    pairs : list of tuple of (int, int, float)
        (true label, predicted label, IoU) of every matched pair.
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

    Parameters
    ----------
    truth : np.ndarray
        True label image (0 background).
    prediction : np.ndarray
        Predicted label image, same shape.

    Returns
    -------
    iou : np.ndarray
        ``iou[i, j]`` is the IoU of object ``true_ids[i]`` and ``predicted_ids[j]``.
    true_ids : np.ndarray
        Labels of the true objects; label 0 is background and is left out.
    predicted_ids : np.ndarray
        Labels of the predicted objects.

    Examples
    --------
    >>> iou, true_ids, predicted_ids = label_iou_matrix(np.array([[1, 1, 0]]), np.array([[0, 5, 5]]))
    >>> iou.tolist(), true_ids.tolist(), predicted_ids.tolist()
    ([[0.3333333333333333]], [1], [5])
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

    Parameters
    ----------
    truth : np.ndarray
        True label image (0 background).
    prediction : np.ndarray
        Predicted label image, same shape.
    iou_threshold : float, optional
        IoU a match must exceed.

    Returns
    -------
    InstanceMatch
        Object counts, precision, recall, F1 and the matched pairs.

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


def per_slice_overlap(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground intersection and union of two binary volumes, one count per slice along the first axis.

    These are the per-unit counts that :func:`bootstrap_interval` resamples for the U-Net: summed over all slices
    they give the volume's foreground IoU (``binary_segmentation_scores(...).foreground_iou``).

    Parameters
    ----------
    prediction : np.ndarray
        (slices, ...) predicted mask; any non-zero value is foreground.
    target : np.ndarray
        Ground truth, same shape.

    Returns
    -------
    intersection : np.ndarray
        int64 foreground intersection of each slice.
    union : np.ndarray
        int64 foreground union of each slice.

    Examples
    --------
    >>> pred = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    >>> true = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 1]]])
    >>> per_slice_overlap(pred, true)
    (array([1, 0]), array([2, 1]))
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
    if prediction.ndim < 2 or not prediction.shape[0]:
        raise ValueError(f"need a (slices, ...) volume with at least one slice, got shape {prediction.shape}")
    pred = prediction.astype(bool, copy=False).reshape(len(prediction), -1)
    true = target.astype(bool, copy=False).reshape(len(target), -1)
    intersection = np.count_nonzero(pred & true, axis=1).astype(np.int64)
    union = np.count_nonzero(pred | true, axis=1).astype(np.int64)
    return intersection, union


# Ready statistics for :func:`bootstrap_interval`: each pools counts over units (ratio of sums, as the point
# estimates are computed) rather than averaging per-unit ratios, so empty units weigh nothing. Each takes ``axis``
# so that scipy can evaluate all resamples in one vectorised call.

def pooled_foreground_iou(intersection: np.ndarray, union: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Foreground IoU, sum(intersection) / sum(union), over units (EM slices); 1.0 when every union is empty.

    Parameters
    ----------
    intersection : np.ndarray
        Foreground intersection of each unit.
    union : np.ndarray
        Foreground union of each unit.
    axis : int, optional
        Axis of the units (scipy passes resamples along the others).

    Returns
    -------
    np.ndarray or float
        The pooled IoU (an array for resamples).

    Examples
    --------
    >>> pooled_foreground_iou(np.array([1, 0, 3]), np.array([2, 0, 4]))
    0.6666666666666666
    """
    numerator = np.sum(intersection, axis=axis)
    denominator = np.sum(union, axis=axis)
    # Nothing predicted and nothing true: perfect, as in binary_segmentation_scores.
    return _ratio_or(numerator, denominator, empty=1.0)


def pooled_f1(true_positives: np.ndarray, detections: np.ndarray, truth: np.ndarray,
              axis: int = -1) -> np.ndarray | float:
    """F1 of matched instances, 2 sum(TP) / (sum(detections) + sum(truth)), over units (images); 0.0 when
    there are neither detections nor ground truth (as ``match_f1`` reports).

    Parameters
    ----------
    true_positives : np.ndarray
        Matched detections of each unit.
    detections : np.ndarray
        Detections of each unit.
    truth : np.ndarray
        Ground truth instances of each unit.
    axis : int, optional
        Axis of the units.

    Returns
    -------
    np.ndarray or float
        The pooled F1.

    Examples
    --------
    >>> pooled_f1(np.array([1, 2]), np.array([2, 2]), np.array([1, 3]))
    0.75
    """
    numerator = 2 * np.sum(true_positives, axis=axis)
    denominator = np.sum(detections, axis=axis) + np.sum(truth, axis=axis)
    return _ratio_or(numerator, denominator, empty=0.0)


def pooled_sensitivity(true_positives: np.ndarray, positives: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Sensitivity, sum(TP) / sum(positives), over units (images, each 0 or 1 in both arrays); NaN without any
    positive unit (undefined, as ``classification_scores`` reports it).

    Parameters
    ----------
    true_positives : np.ndarray
        1 where a unit is positive and found.
    positives : np.ndarray
        1 where a unit is positive.
    axis : int, optional
        Axis of the units.

    Returns
    -------
    np.ndarray or float
        The pooled sensitivity.

    Examples
    --------
    >>> pooled_sensitivity(np.array([1, 0, 0, 1]), np.array([1, 1, 0, 1]))
    0.6666666666666666
    """
    numerator = np.sum(true_positives, axis=axis)
    denominator = np.sum(positives, axis=axis)
    return _ratio_or(numerator, denominator, empty=float("nan"))


def _ratio_or(numerator: np.ndarray, denominator: np.ndarray, *, empty: float) -> np.ndarray | float:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    ratio = np.divide(numerator, denominator, out=np.full(np.broadcast(numerator, denominator).shape, empty),
                      where=denominator != 0)
    return float(ratio) if ratio.ndim == 0 else ratio


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a metric, from resampling the test units (images or EM slices).

    Attributes
    ----------
    low : float
        Lower bound; equal to ``estimate`` when resampling cannot vary the metric (one unit, or every
        unit alike).
    high : float
        Upper bound, likewise.
    estimate : float
        The metric on all units (what the promotion compares).
    confidence : float
        Coverage, e.g. 0.95.
    n_units : int
        How many units were resampled.
    method : str
        ``"percentile"`` (scipy's percentile bootstrap), ``"degenerate"`` (no resampling possible or needed),
        ``"wilson"`` (:func:`proportion_interval`), or ``"percentile, K of N resamples undefined"`` when the
        metric was undefined on K resamples (e.g. no positive image drawn) and the interval comes from the rest.
    """

    low: float
    high: float
    estimate: float
    confidence: float
    n_units: int
    method: str

    def as_dict(self) -> dict[str, float | int | str]:
        """The fields by name.

        Returns
        -------
        dict
            ``low``, ``high``, ``estimate``, ``confidence``, ``n_units`` and ``method``.
        """
        return asdict(self)


def proportion_interval(successes: int, trials: int, *, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion over independent yes/no units (``scipy.stats.binomtest``), e.g. a
    sensitivity: positive images found out of positive images. Unlike a percentile bootstrap it keeps its width at
    0 and 1: 60 positives all found is not certainty.

    Parameters
    ----------
    successes : int
        Units that succeeded.
    trials : int
        Units, at least 1.
    confidence : float, optional
        Coverage of the interval.

    Returns
    -------
    Interval
        The Wilson interval, method ``"wilson"``.

    Examples
    --------
    >>> ci = proportion_interval(60, 60)
    >>> round(ci.low, 3), ci.high, ci.estimate, ci.method
    (0.94, 1.0, 1.0, 'wilson')
    """
    from scipy import stats

    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    bounds = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(float(bounds.low), float(bounds.high), successes / trials, confidence, int(trials), "wilson")


def bootstrap_interval(statistic, *per_unit_arrays: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000,
                       seed: int = 0) -> Interval:
    """Percentile-bootstrap confidence interval of ``statistic`` over units resampled with replacement.

    Units (test images, EM slices) are resampled whole, their counts staying paired, with
    ``scipy.stats.bootstrap(..., paired=True, method="percentile")``; the percentile method stays well defined
    on the skewed, bounded and often tied values of small test sets where BCa fails.

    Parameters
    ----------
    statistic : callable
        ``statistic(*per_unit_arrays)`` -> float. If it accepts ``axis`` (as :func:`pooled_foreground_iou`,
        :func:`pooled_f1` and :func:`pooled_sensitivity` do) it is called once on all resamples along that axis.
    *per_unit_arrays : np.ndarray
        1-D arrays, one value per unit each, all of the same length.
    confidence : float, optional
        Coverage of the interval, in (0, 1).
    n_resamples : int, optional
        Bootstrap resamples.
    seed : int, optional
        Seed of the resampling; the same seed gives the same interval.

    Returns
    -------
    Interval
        The interval, the estimate on all units and the method used.

    Examples
    --------
    >>> intersection = np.array([40, 55, 30, 60, 52, 47])
    >>> union = np.array([50, 60, 50, 70, 60, 55])
    >>> ci = bootstrap_interval(pooled_foreground_iou, intersection, union, n_resamples=500)
    >>> round(ci.low, 3), round(ci.estimate, 3), round(ci.high, 3), ci.n_units, ci.method
    (0.73, 0.823, 0.885, 6, 'percentile')
    """
    from scipy import stats

    if not per_unit_arrays:
        raise ValueError("bootstrap_interval needs at least one per-unit array")
    arrays = [np.asarray(a) for a in per_unit_arrays]
    if any(a.ndim != 1 for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise ValueError(f"per-unit arrays must be 1-D and of one length, got shapes {[a.shape for a in arrays]}")
    n_units = len(arrays[0])
    if not n_units:
        raise ValueError("bootstrap_interval needs at least one unit, got empty arrays")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    estimate = float(statistic(*arrays))
    # One unit, or every unit alike: every resample is the same multiset, so the interval is the estimate
    # (scipy would refuse the first and warn on the second).
    if n_units == 1 or all(np.all(a == a[0]) for a in arrays):
        return Interval(estimate, estimate, estimate, confidence, n_units, "degenerate")
    vectorised = "axis" in inspect.signature(statistic).parameters
    with warnings.catch_warnings():
        # scipy warns when a resample's statistic is undefined (NaN); those resamples are handled below.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(arrays, statistic, paired=True, vectorized=vectorised, confidence_level=confidence,
                                 n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    distribution = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    undefined = int(np.count_nonzero(~np.isfinite(distribution)))
    if not undefined:
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        return Interval(low, high, estimate, confidence, n_units, "percentile")
    if undefined == len(distribution):
        return Interval(float("nan"), float("nan"), estimate, confidence, n_units,
                        f"percentile, {undefined} of {len(distribution)} resamples undefined")
    # The same percentiles scipy takes, over the resamples where the metric is defined.
    alpha = (1 - confidence) / 2
    low, high = np.quantile(distribution[np.isfinite(distribution)], [alpha, 1 - alpha])
    return Interval(float(low), float(high), estimate, confidence, n_units,
                    f"percentile, {undefined} of {len(distribution)} resamples undefined")


def sensitivity_interval(predicted: np.ndarray, labels: np.ndarray, positive: int) -> dict[str, float]:
    """The 95 % Wilson score interval of the sensitivity: each positive image found or not (a bootstrap of a
    proportion at 1 would have no width).

    Parameters
    ----------
    predicted : np.ndarray
        Predicted class index of each image, shape (N,).
    labels : np.ndarray
        True class index of each image, shape (N,).
    positive : int
        Index of the positive class.

    Returns
    -------
    dict of str to float
        ``sensitivity_ci_low`` and ``sensitivity_ci_high``; both NaN when no image is positive (the sensitivity is
        undefined, and so is its interval).

    Examples
    --------
    >>> interval = sensitivity_interval(np.array([0, 0, 1]), np.array([0, 0, 0]), positive=0)
    >>> round(interval["sensitivity_ci_low"], 3), round(interval["sensitivity_ci_high"], 3)
    (0.208, 0.939)
    """
    is_positive = np.asarray(labels) == positive
    if not is_positive.any():
        return {"sensitivity_ci_low": float("nan"), "sensitivity_ci_high": float("nan")}
    found = int(np.sum((np.asarray(predicted) == positive) & is_positive))
    interval = proportion_interval(found, int(np.sum(is_positive)))
    return {"sensitivity_ci_low": interval.low, "sensitivity_ci_high": interval.high}
