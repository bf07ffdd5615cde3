"""Scores of a classifier on a labelled set: accuracy, loss, sensitivity, specificity, precision, F1, ROC-AUC and
the confusion matrix, with one class named positive (the cells the lab looks for, e.g. hiPSC-ECs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


@dataclass(frozen=True)
class ClassificationScores:
    """Scores on ``n`` images; sensitivity is the recall of the positive class, specificity that of the rest.

    ``confusion[i][j]`` counts images of class ``i`` predicted as ``j``.

    Attributes
    ----------
    accuracy : float
        Fraction of images predicted as their class.
    loss : float
        Mean cross-entropy (:func:`cross_entropy`).
    sensitivity : float
        Recall of the positive class (NaN without positive images).
    specificity : float
        Recall of the other classes together.
    precision : float
        Precision of the positive class.
    f1 : float
        Harmonic mean of precision and sensitivity.
    roc_auc : float
        Area under the ROC curve of the positive-class probability (NaN unless both kinds are present).
    n : int
        Number of images.
    confusion : list of list of int
        Confusion matrix, true class by predicted class.
    """

    accuracy: float
    loss: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float
    roc_auc: float
    n: int
    confusion: list[list[int]]

    def as_dict(self) -> dict[str, float]:
        """The scalar scores (what MLflow logs and the registry compares).

        Returns
        -------
        dict of str to float
            Every field but ``confusion``.
        """
        return {k: float(v) for k, v in asdict(self).items() if k not in ("confusion",)}


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (probabilities clipped at 1e-12).

    Parameters
    ----------
    probabilities : np.ndarray
        Class probabilities (N, classes).
    labels : np.ndarray
        True class indices (N,).

    Returns
    -------
    float
        The mean cross-entropy.

    Examples
    --------
    >>> round(cross_entropy(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0, 0])), 4)
    0.3993
    """
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def classification_scores(probabilities: np.ndarray, labels: np.ndarray, positive: int,
                          threshold: float | None = None) -> ClassificationScores:
    """Scores of the predictions ``probabilities`` (N, classes) against ``labels`` (N,), class ``positive`` being
    the one whose recall is the sensitivity.

    Without ``threshold`` each image is predicted as its most probable class. With one (the operating point chosen
    on the validation split by :func:`cellops.thresholds.choose_operating_point`), an image is predicted positive
    when its positive-class probability is at least ``threshold``, and otherwise as the most probable of the
    other classes. Loss and ROC-AUC do not depend on it.

    Parameters
    ----------
    probabilities : np.ndarray
        Class probabilities (N, classes).
    labels : np.ndarray
        True class indices (N,).
    positive : int
        The index of the positive class.
    threshold : float or None, optional
        Operating point on the positive-class probability.

    Returns
    -------
    ClassificationScores
        The scores.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> s = classification_scores(p, np.array([0, 0, 1, 1]), positive=1)
    >>> s.accuracy, s.sensitivity, s.specificity, s.confusion
    (0.5, 0.5, 0.5, [[1, 1], [1, 1]])
    >>> s = classification_scores(p, np.array([0, 0, 1, 1]), positive=1, threshold=0.35)
    >>> s.accuracy, s.sensitivity, s.specificity, s.confusion
    (0.75, 1.0, 0.5, [[1, 1], [0, 2]])
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or not len(labels):
        raise ValueError(f"need probabilities (N, classes) and N labels, got {probabilities.shape} and {labels.shape}")
    classes = probabilities.shape[1]
    if not 0 <= positive < classes:
        raise ValueError(f"positive class {positive} outside 0..{classes - 1}")
    if threshold is None:
        predicted = probabilities.argmax(axis=1)
    else:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is not a probability in [0, 1]")
        others = probabilities.copy()
        others[:, positive] = -np.inf
        predicted = np.where(probabilities[:, positive] >= threshold, positive, others.argmax(axis=1))
    confusion = confusion_matrix(labels, predicted, labels=list(range(classes)))
    is_positive, said_positive = labels == positive, predicted == positive
    tp = int(np.sum(is_positive & said_positive))
    fn = int(np.sum(is_positive & ~said_positive))
    fp = int(np.sum(~is_positive & said_positive))
    tn = int(np.sum(~is_positive & ~said_positive))
    sensitivity, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    both_present = 0 < is_positive.sum() < len(labels)
    return ClassificationScores(
        accuracy=float(np.mean(predicted == labels)),
        loss=cross_entropy(probabilities, labels),
        sensitivity=sensitivity,
        specificity=_ratio(tn, tn + fp),
        precision=precision,
        f1=_ratio(2 * precision * sensitivity, precision + sensitivity) if tp else 0.0,
        roc_auc=float(roc_auc_score(is_positive, probabilities[:, positive])) if both_present else float("nan"),
        n=len(labels),
        confusion=confusion.astype(int).tolist(),
    )


def positive_roc(probabilities: np.ndarray, labels: np.ndarray, positive: int) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the positive class's probability as the threshold moves.

    Parameters
    ----------
    probabilities : np.ndarray
        Class probabilities (N, classes).
    labels : np.ndarray
        True class indices (N,).
    positive : int
        The index of the positive class.

    Returns
    -------
    fpr : np.ndarray
        False-positive rates, increasing.
    tpr : np.ndarray
        True-positive rates at the same thresholds.

    Examples
    --------
    >>> fpr, tpr = positive_roc(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]), positive=1)
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
    """
    fpr, tpr, _ = roc_curve(np.asarray(labels) == positive, np.asarray(probabilities)[:, positive])
    return fpr, tpr


