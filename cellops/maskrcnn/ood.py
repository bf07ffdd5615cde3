"""Out-of-distribution features of Mask R-CNN (:mod:`cellops.ood`): the input statistics of the picture as the
network sees it and what it detected (how many instances, how sure, how much of the field they cover)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.ood import INTENSITY_FEATURES, OODReference, Verdict, intensity_features, verdict_and_features

#: Mask R-CNN's features, in order.
FEATURE_NAMES = (*INTENSITY_FEATURES, "log_instances", "top_score", "mean_score", "covered_fraction")


def grey_picture(picture: np.ndarray) -> np.ndarray:
    """A picture (H, W) or (H, W, C) as the network sees it, as one grey plane (its channel mean)."""
    picture = np.asarray(picture, dtype=np.float64)
    return picture if picture.ndim == 2 else picture.mean(axis=-1)


def detection_features(instances: Sequence, shape: tuple[int, int]) -> np.ndarray:
    """log(1 + instances), top and mean score (0 without instances) and the covered share of the field.

    Examples
    --------
    >>> from cellops.maskrcnn.predict import Instance
    >>> one = Instance(0, 0, np.ones((5, 10), bool), 1, 0.8)
    >>> detection_features([one], (10, 10)).round(3).tolist()
    [0.693, 0.8, 0.8, 0.5]
    """
    covered = np.zeros(shape, bool)
    for instance in instances:
        x0, y0, x1, y1 = instance.box
        covered[y0:y1, x0:x1] |= instance.mask
    scores = [float(i.score) for i in instances]
    return np.array([np.log1p(len(instances)), max(scores, default=0.0), float(np.mean(scores)) if scores else 0.0,
                     float(covered.mean())])


def image_features(picture: np.ndarray, instances: Sequence) -> np.ndarray:
    """Mask R-CNN's OOD features (:data:`FEATURE_NAMES`) of one picture.

    Parameters
    ----------
    picture : np.ndarray
        The picture as the network sees it (:func:`cellops.maskrcnn.data.network_picture`).
    instances : sequence of Instance
        What was detected in it.

    Returns
    -------
    np.ndarray
        float64 vector of len(:data:`FEATURE_NAMES`).

    Examples
    --------
    >>> image_features(np.random.default_rng(0).random((64, 64, 3)), []).shape
    (32,)
    """
    grey = grey_picture(picture)
    return np.concatenate([intensity_features(grey), detection_features(instances, grey.shape)])


def verdict_for(reference: OODReference | None, picture: np.ndarray, instances: Sequence) -> Verdict:
    """The verdict of one segmented picture (as the network saw it) from its detections."""
    return verdict_and_features(reference, grey_picture(picture), lambda: image_features(picture, instances))[0]


def reference_rows(model: torch.nn.Module, images: Sequence[np.ndarray], settings: MaskRCNNServing, *,
                   count: int = 40, sizes: tuple[int, ...] = (256, 512), seed: int = 0) -> np.ndarray:
    """Features (count, F) of random square crops of ``images`` (raw pictures) segmented as served, of the sides in
    ``sizes`` in turn (whole pictures when smaller): the rows a reference or its calibration is fitted on."""
    from cellops.maskrcnn.data import network_picture
    from cellops.maskrcnn.predict import as_picture, predict_picture

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        image = as_picture(np.asarray(images[i % len(images)]))
        height, width = image.shape[:2]
        side = min(sizes[i % len(sizes)], height, width)
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        picture = network_picture(image[y:y + side, x:x + side], settings.normalization)
        rows.append(image_features(picture, predict_picture(model, picture, settings)))
    return np.array(rows).reshape(-1, len(FEATURE_NAMES))
