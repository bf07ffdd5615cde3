"""How sure a model is of one prediction: the :class:`Uncertainty` every family returns beside its prediction
when asked (the review queue's sort key), and what the families share to compute it: the eight dihedral
test-time augmentations of a 2-D picture (:data:`DIHEDRAL`: flips and quarter turns) with their inverses, for
pictures and for instances cropped to their box, and the normalised entropy of class probabilities.

The families (``segment_with_uncertainty`` of :mod:`cellops.unet.predict`, ``predict_with_uncertainty`` of
:mod:`cellops.maskrcnn.predict`, ``classify_with_uncertainty`` of :mod:`cellops.classifier.predict`) say how
their numbers are made; every one is in [0, 1], higher = less sure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Uncertainty:
    """The uncertainty of one prediction.

    Attributes
    ----------
    image : float
        Of the whole image, in [0, 1], higher = less sure: what a review queue sorts by.
    method : str
        How it was measured: ``flip-tta`` (test-time augmentation agreement), ``entropy`` (normalised predictive
        entropy), ``mc-dropout`` (entropy of the mean of dropout samples).
    per_object : tuple of float, optional
        Mask R-CNN: one value in [0, 1] per predicted instance, in the order of the instances.
    pixels : np.ndarray or None, optional
        U-Net: float32 map in [0, 1], the shape of the image.

    Examples
    --------
    >>> Uncertainty(0.25, "flip-tta", per_object=(0.1, 0.4)).as_dict()
    {'image': 0.25, 'method': 'flip-tta', 'per_object': [0.1, 0.4]}
    """

    image: float
    method: str
    per_object: tuple[float, ...] = ()
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.image <= 1.0:
            raise ValueError(f"uncertainty must lie in [0, 1], got {self.image}")
        object.__setattr__(self, "image", float(self.image))
        object.__setattr__(self, "per_object", tuple(float(v) for v in self.per_object))

    def as_dict(self) -> dict:
        """The JSON-ready record: ``image``, ``method`` and ``per_object`` (a list; the pixel map is left out).

        Returns
        -------
        dict
            ``{"image": float, "method": str, "per_object": [float, ...]}``.
        """
        return {"image": self.image, "method": self.method, "per_object": list(self.per_object)}


@dataclass(frozen=True)
class Dihedral:
    """One of the eight symmetries of a square picture: columns flipped first (``flip``), then ``turns`` quarter
    turns counter-clockwise (``np.rot90``), on two axes (rows, columns) of an array.

    Attributes
    ----------
    flip : bool
        Flip the columns (left-right) first.
    turns : int
        Quarter turns counter-clockwise, 0 to 3.

    Examples
    --------
    >>> a = np.arange(6).reshape(2, 3)
    >>> t = Dihedral(True, 1)
    >>> t.apply(a).shape, bool(np.array_equal(t.invert(t.apply(a)), a))
    ((3, 2), True)
    """

    flip: bool
    turns: int

    @property
    def name(self) -> str:
        """E.g. ``identity``, ``flip``, ``rot90``, ``flip+rot270``."""
        parts = (["flip"] if self.flip else []) + ([f"rot{90 * self.turns}"] if self.turns else [])
        return "+".join(parts) or "identity"

    def apply(self, array: np.ndarray, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
        """The array seen through this symmetry (a view; copy it before handing it to a model).

        Parameters
        ----------
        array : np.ndarray
            Any array with the picture's rows and columns on ``axes``.
        axes : tuple of int, optional
            Rows and columns: ``(-2, -1)`` for (Y, X) and (Z, Y, X), ``(0, 1)`` for channels-last (H, W, C).

        Returns
        -------
        np.ndarray
            The transformed array (rows and columns swapped for an odd number of turns).
        """
        out = np.flip(array, axes[1]) if self.flip else array
        return np.rot90(out, self.turns, axes=axes) if self.turns else out

    def invert(self, array: np.ndarray, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
        """The array brought back from this symmetry's frame to the original one (:meth:`apply` undone).

        Parameters
        ----------
        array : np.ndarray
            An array in the transformed frame (a prediction on :meth:`apply`'s output).
        axes : tuple of int, optional
            Rows and columns.

        Returns
        -------
        np.ndarray
            The array in the original frame.
        """
        out = np.rot90(array, -self.turns, axes=axes) if self.turns else array
        return np.flip(out, axes[1]) if self.flip else out

    def invert_crop(self, y0: int, x0: int, mask: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, np.ndarray]:
        """A mask cropped to its box in the transformed frame, brought back to the original frame without making
        it full size (O(box), not O(image)).

        Parameters
        ----------
        y0, x0 : int
            Top-left corner of the crop in the transformed picture.
        mask : np.ndarray
            The cropped mask (h, w).
        shape : tuple of int
            (height, width) of the transformed picture.

        Returns
        -------
        tuple of (int, int, np.ndarray)
            Top row, left column and the crop in the original picture.

        Examples
        --------
        >>> full = np.zeros((4, 6), bool); full[1:3, 4:5] = True
        >>> t = Dihedral(True, 3)
        >>> seen = t.apply(full); ys, xs = np.nonzero(seen)
        >>> y0, x0, crop = t.invert_crop(ys.min(), xs.min(), seen[ys.min():ys.max() + 1, xs.min():xs.max() + 1],
        ...                              seen.shape)
        >>> (int(y0), int(x0), crop.shape)
        (1, 4, (2, 1))
        """
        height, width = shape
        h, w = mask.shape
        for _ in range(self.turns):  # undo one counter-clockwise turn at a time: (y, x) -> (x, H - 1 - y)
            y0, x0, mask = x0, height - y0 - h, np.rot90(mask, -1)
            height, width, h, w = width, height, w, h
        if self.flip:
            x0, mask = width - x0 - w, np.flip(mask, 1)
        return int(y0), int(x0), np.ascontiguousarray(mask)


#: The eight dihedral test-time augmentations, the identity first; the four flips (what ``flip_averaging``
#: averages) are :data:`FLIPS`.
DIHEDRAL: tuple[Dihedral, ...] = tuple(Dihedral(flip, turns) for flip in (False, True) for turns in range(4))
#: Identity, columns flipped, rows flipped, both (a half turn), in the order ``flip_averaging`` adds them.
FLIPS: tuple[Dihedral, ...] = (Dihedral(False, 0), Dihedral(True, 0), Dihedral(True, 2), Dihedral(False, 2))


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of each row of class probabilities divided by ``log(classes)``: 0 for a sure prediction, 1 when
    every class is equally likely.

    Parameters
    ----------
    probabilities : np.ndarray
        (N, classes), rows summing to 1.

    Returns
    -------
    np.ndarray
        float64 (N,) in [0, 1].

    Examples
    --------
    >>> normalised_entropy(np.array([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])).round(3).tolist()
    [0.0, 1.0, 0.811]
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, classes) with at least 2 classes, got shape {p.shape}")
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.clip(terms.sum(axis=1) / np.log(p.shape[1]), 0.0, 1.0)


def mean_pairwise_iou(masks: list[np.ndarray]) -> float:
    """Mean intersection over union of every pair of boolean masks (two empty masks agree: IoU 1).

    Parameters
    ----------
    masks : list of np.ndarray
        Boolean masks of one shape (at least two).

    Returns
    -------
    float
        In [0, 1].

    Examples
    --------
    >>> a = np.zeros((2, 2), bool); b = a.copy(); b[0, 0] = True
    >>> mean_pairwise_iou([a, a]), mean_pairwise_iou([a, b]), mean_pairwise_iou([b, b])
    (1.0, 0.0, 1.0)
    """
    if len(masks) < 2:
        raise ValueError(f"at least two masks are needed, got {len(masks)}")
    masks = [np.asarray(m, bool) for m in masks]
    areas = [int(np.count_nonzero(m)) for m in masks]
    ious = []
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            inter = int(np.count_nonzero(masks[i] & masks[j]))
            union = areas[i] + areas[j] - inter
            ious.append(inter / union if union else 1.0)
    return float(np.mean(ious))
