"""Out-of-distribution features of the classifier (:mod:`cellops.ood`): the input statistics of the image as the
network sees it and what its softmax says (top probability and normalised entropy), from the one served pass."""

from __future__ import annotations

import numpy as np
from torch import nn

from cellops.classifier.specs import ClassifierServing
from cellops.ood import INTENSITY_FEATURES, OODReference, Verdict, intensity_features, verdict_and_features
from cellops.uncertainty import normalised_entropy

#: The classifier's features, in order.
FEATURE_NAMES = (*INTENSITY_FEATURES, "top_probability", "entropy")


def grey_input(inputs: np.ndarray) -> np.ndarray:
    """The model input (C, H, W) as one grey plane (its channel mean)."""
    return np.asarray(inputs, dtype=np.float64).mean(axis=0)


def image_features(inputs: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The classifier's OOD features (:data:`FEATURE_NAMES`) of one image.

    Parameters
    ----------
    inputs : np.ndarray
        The model input (C, H, W) (:func:`cellops.classifier.data.to_model_input`).
    probabilities : np.ndarray
        Its class probabilities (classes,).

    Returns
    -------
    np.ndarray
        float64 vector of len(:data:`FEATURE_NAMES`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> image_features(rng.random((3, 64, 64)), np.array([0.9, 0.1])).shape
    (30,)
    """
    p = np.asarray(probabilities, dtype=np.float64)[None]
    return np.concatenate([intensity_features(grey_input(inputs)),
                           [float(p.max()), float(normalised_entropy(p)[0])]])


def verdict_for(reference: OODReference | None, inputs: np.ndarray, probabilities: np.ndarray) -> Verdict:
    """The verdict of one classified image from its model input (C, H, W) and served probabilities."""
    return verdict_and_features(reference, grey_input(inputs), lambda: image_features(inputs, probabilities))[0]


def reference_rows(model: nn.Module, inputs: np.ndarray, settings: ClassifierServing) -> np.ndarray:
    """Features (N, F) of model inputs (N, C, H, W) classified as served: the rows a reference (training split)
    or its calibration (validation split) is fitted on."""
    from cellops.classifier.train import predict_probabilities

    if len(inputs) == 0:
        return np.zeros((0, len(FEATURE_NAMES)))
    probabilities = predict_probabilities(model, np.asarray(inputs, dtype=np.float32), settings.batch_size)
    return np.array([image_features(x, p) for x, p in zip(inputs, probabilities)])
