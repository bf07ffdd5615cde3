"""Decision thresholds chosen on the validation split, one chooser per model family.

Every family turns a continuous output into a decision: the U-Net's foreground probability, Mask R-CNN's detection
score, the classifier's positive-class probability. Each threshold is the candidate that maximises the family's
validation metric, stored as a served setting and then applied unchanged to the test split, so that no test score
depends on a number fixed by hand or tuned on the test images. Ties go to the candidate closest to 0.5 (the
conventional default), and between two equally close, to the lower one.

Each chooser counts once and reads the metric of every candidate off cumulative counts, so a 6-million-voxel
validation volume costs one pass, not one per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellops.maskrcnn.evaluation import MatchedDetections

#: Probability thresholds tried for the U-Net and the classifier.
PROBABILITY_CANDIDATES = np.round(np.linspace(0.05, 0.95, 19), 2)
#: Detection score thresholds tried for Mask R-CNN.
SCORE_CANDIDATES = np.round(np.arange(0.05, 0.96, 0.05), 2)
# Voxels counted per chunk: bounds the temporary arrays whatever the volume's size.
_CHUNK = 1 << 22


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold chosen on validation data, with the curve it was read from.

    Attributes
    ----------
    value : float
        The chosen threshold.
    metric : str
        Name of the metric maximised (``"foreground_iou"``, ``"f1_50"``, ``"youden_j"``).
    metric_value : float
        The metric at ``value`` on the validation data.
    curve : tuple of tuple of float
        (candidate, metric) for every candidate tried, in ascending order of candidate.
    """

    value: float
    metric: str
    metric_value: float
    curve: tuple[tuple[float, float], ...]

    def as_dict(self) -> dict:
        """JSON-ready: what is logged and stored with the served settings.

        Returns
        -------
        dict
            ``value``, ``metric``, ``metric_value`` and ``curve`` (a list of pairs).

        Examples
        --------
        >>> choice = ThresholdChoice(0.5, "foreground_iou", 0.8, ((0.4, 0.7), (0.5, 0.8)))
        >>> ThresholdChoice.from_dict(choice.as_dict()) == choice
        True
        """
        return {"value": self.value, "metric": self.metric, "metric_value": self.metric_value,
                "curve": [[candidate, metric] for candidate, metric in self.curve]}

    @classmethod
    def from_dict(cls, data: dict) -> ThresholdChoice:
        """The choice :meth:`as_dict` wrote.

        Parameters
        ----------
        data : dict
            ``value``, ``metric``, ``metric_value`` and ``curve``.

        Returns
        -------
        ThresholdChoice
            The choice, numbers as floats and the curve as tuples.
        """
        return cls(value=float(data["value"]), metric=str(data["metric"]), metric_value=float(data["metric_value"]),
                   curve=tuple((float(c), float(m)) for c, m in data["curve"]))


def _checked_candidates(candidates) -> np.ndarray:
    values = np.asarray(candidates, dtype=np.float64)
    if values.ndim != 1 or not values.size:
        raise ValueError(f"candidates must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"candidates must lie in [0, 1], got {values.tolist()}")
    return np.unique(values)  # sorted, without repeats


def _best(candidates: np.ndarray, metric: np.ndarray, name: str) -> ThresholdChoice:
    """The candidate of highest metric; ties to the one closest to 0.5, then the lower (candidates ascending)."""
    defined = np.where(np.isnan(metric), -np.inf, metric)
    # Equal counts give bit-identical metrics; the tolerance only absorbs rounding between different counts.
    tied = np.flatnonzero(defined >= defined.max() - 1e-12)
    distance = np.round(np.abs(candidates[tied] - 0.5), 9)  # 0.45 and 0.55 are equally close
    chosen = tied[np.argmin(distance)]  # the first of the closest: the lower
    return ThresholdChoice(value=float(candidates[chosen]), metric=name, metric_value=float(metric[chosen]),
                           curve=tuple((float(c), float(m)) for c, m in zip(candidates, metric)))


def _counts_at_or_above(values: np.ndarray, groups: np.ndarray, candidates: np.ndarray, n_groups: int) -> np.ndarray:
    """counts[g, j]: how many ``values`` of group ``g`` are >= ``candidates[j]`` (candidates ascending)."""
    # Exact, not a quantised histogram: a value is >= candidates[j] exactly when j < (number of candidates <= value).
    levels = len(candidates) + 1
    histogram = np.zeros(n_groups * levels, np.int64)
    for start in range(0, len(values), _CHUNK):
        chunk = values[start:start + _CHUNK]
        if not np.all(np.isfinite(chunk)):
            raise ValueError("probabilities contain NaN or infinite values")
        level = np.searchsorted(candidates, chunk, side="right")
        group = groups[start:start + _CHUNK].astype(np.int64)
        histogram += np.bincount(group * levels + level, minlength=n_groups * levels)
    histogram = histogram.reshape(n_groups, levels)
    # Reverse cumulative sum over levels: at_or_above[:, k] = count of values whose level is >= k.
    at_or_above = np.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]
    return at_or_above[:, 1:]


def foreground_iou_curve(probabilities: np.ndarray, truth: np.ndarray, candidates=PROBABILITY_CANDIDATES
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Foreground IoU of ``probabilities >= t`` against ``truth`` for every candidate ``t``, in one pass.

    Parameters
    ----------
    probabilities : np.ndarray
        Foreground probabilities, any shape.
    truth : np.ndarray
        Ground truth of the same shape; any non-zero value is foreground.
    candidates : sequence of float, optional
        Thresholds in [0, 1].

    Returns
    -------
    candidates : np.ndarray
        The candidates in ascending order, without repeats.
    iou : np.ndarray
        The IoU at each (1.0 where both masks are empty, as :func:`cellops.metrics.binary_segmentation_scores`
        counts it).

    Examples
    --------
    >>> p = np.array([0.1, 0.4, 0.6, 0.9])
    >>> foreground_iou_curve(p, np.array([0, 0, 1, 1]), candidates=[0.3, 0.5, 0.7])
    (array([0.3, 0.5, 0.7]), array([0.66666667, 1.        , 0.5       ]))
    """
    probabilities = np.asarray(probabilities)
    truth = np.asarray(truth)
    if probabilities.shape != truth.shape:
        raise ValueError(f"probabilities shape {probabilities.shape} differs from truth shape {truth.shape}")
    if not probabilities.size:
        raise ValueError("probabilities are empty: nothing to choose a threshold on")
    candidates = _checked_candidates(candidates)
    # Compare in the probabilities' own precision, as ``probabilities >= threshold`` does for a float32 map and a
    # Python float threshold: float32(0.7) must count as >= 0.7.
    compared = candidates.astype(probabilities.dtype) if np.issubdtype(probabilities.dtype, np.floating) else candidates
    is_foreground = truth.reshape(-1).astype(bool, copy=False).view(np.uint8)
    predicted = _counts_at_or_above(probabilities.reshape(-1), is_foreground, compared, 2)
    false_positives, true_positives = predicted[0], predicted[1]
    false_negatives = int(np.count_nonzero(is_foreground)) - true_positives
    union = true_positives + false_positives + false_negatives
    iou = np.divide(true_positives, union, out=np.ones(len(candidates)), where=union > 0)
    return candidates, iou


def choose_probability_threshold(probabilities: np.ndarray, truth: np.ndarray, *,
                                 candidates=PROBABILITY_CANDIDATES) -> ThresholdChoice:
    """The U-Net's foreground probability threshold: the candidate of highest foreground IoU on validation data.

    Parameters
    ----------
    probabilities : np.ndarray
        Foreground probabilities of the validation volume(s), any shape.
    truth : np.ndarray
        Their ground truth, same shape; any non-zero value is foreground.
    candidates : sequence of float, optional
        Thresholds tried, in [0, 1]; a voxel is foreground when its probability is >= the threshold.

    Returns
    -------
    ThresholdChoice
        With metric ``"foreground_iou"``.

    Examples
    --------
    >>> p = np.array([0.1, 0.62, 0.75, 0.9])  # only 0.65, 0.7 and 0.75 separate the classes
    >>> choice = choose_probability_threshold(p, np.array([0, 0, 1, 1]))
    >>> choice.value, choice.metric, choice.metric_value
    (0.65, 'foreground_iou', 1.0)
    """
    candidates, iou = foreground_iou_curve(probabilities, truth, candidates)
    return _best(candidates, iou, "foreground_iou")


def choose_score_threshold(matched: MatchedDetections, *, candidates=SCORE_CANDIDATES) -> ThresholdChoice:
    """Mask R-CNN's detection score threshold: the candidate of highest F1 of one-to-one mask matches on the
    validation images.

    Parameters
    ----------
    matched : MatchedDetections
        :func:`cellops.maskrcnn.evaluation.match_detections` of the validation predictions, matched at
        IoU 0.5 with no score threshold (or one below every candidate).
    candidates : sequence of float, optional
        Thresholds tried, in [0, 1]; a detection counts when its score is >= the threshold.

    Returns
    -------
    ThresholdChoice
        With metric ``"f1_50"``.

    Examples
    --------
    >>> from cellops.maskrcnn.evaluation import match_detections
    >>> square = [[0, 0, 2, 0, 2, 2, 0, 2]]
    >>> gt = {"images": [{"id": 1, "height": 4, "width": 4}], "categories": [{"id": 1}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": square}]}
    >>> det = [{"image_id": 1, "category_id": 1, "score": s, "segmentation": square} for s in (0.9, 0.6)]
    >>> choice = choose_score_threshold(match_detections(gt, det))
    >>> choice.value, choice.metric_value
    (0.65, 1.0)
    """
    candidates = _checked_candidates(candidates)
    if candidates[0] < matched.min_score:
        raise ValueError(f"candidate {candidates[0]} is below the min_score {matched.min_score} the detections were "
                         "matched with; match with a lower min_score")
    if not len(matched.image_ids):
        raise ValueError("no validation images: nothing to choose a score threshold on")
    f1 = np.array([matched.f1_at(float(t))[0] for t in candidates])  # O(detections) each, no matching again
    return _best(candidates, f1, "f1_50")


def choose_operating_point(probabilities_positive: np.ndarray, is_positive: np.ndarray, *,
                           candidates=PROBABILITY_CANDIDATES) -> ThresholdChoice:
    """The classifier's operating point: the positive-class probability threshold of highest Youden's J
    (sensitivity + specificity - 1) on validation images.

    Sensitivity alone (the promotion metric) would always pick the lowest threshold, calling every image
    positive; J weighs the positives found against the negatives kept.

    Parameters
    ----------
    probabilities_positive : np.ndarray
        (N,) each image's probability of the positive class.
    is_positive : np.ndarray
        (N,) whether each image is of the positive class; both kinds must occur.
    candidates : sequence of float, optional
        Thresholds tried, in [0, 1]; an image is positive when its probability is >= the threshold.

    Returns
    -------
    ThresholdChoice
        With metric ``"youden_j"``; pass its ``value`` as ``threshold`` to
        :func:`cellops.classifier.metrics.classification_scores`.

    Examples
    --------
    >>> p = np.array([0.2, 0.6, 0.65, 0.75, 0.8, 0.9])
    >>> choice = choose_operating_point(p, np.array([0, 0, 0, 1, 1, 1]))
    >>> choice.value, choice.metric_value
    (0.7, 1.0)
    """
    probabilities_positive = np.asarray(probabilities_positive, dtype=np.float64)
    is_positive = np.asarray(is_positive).astype(bool)
    if probabilities_positive.ndim != 1 or probabilities_positive.shape != is_positive.shape:
        raise ValueError(f"need (N,) probabilities and (N,) labels, got shapes {probabilities_positive.shape} and "
                         f"{is_positive.shape}")
    n_positive = int(np.count_nonzero(is_positive))
    n_negative = len(is_positive) - n_positive
    if not n_positive or not n_negative:
        raise ValueError(f"choosing an operating point needs positive and negative images, got {n_positive} "
                         f"positive and {n_negative} negative")
    candidates = _checked_candidates(candidates)
    said_positive = _counts_at_or_above(probabilities_positive, is_positive.view(np.uint8), candidates, 2)
    sensitivity = said_positive[1] / n_positive
    specificity = 1.0 - said_positive[0] / n_negative
    return _best(candidates, sensitivity + specificity - 1.0, "youden_j")
