"""The robustness sweep of a trained model: its test metrics on its own test images, each perturbed in one named,
seeded way (noise, blur, contrast, gain, offset), next to the clean metrics. Computed at registration with the
family's own score function and kept with the version (``tracking.robustness``); the model card shows it.

Every perturbation works on one image (any shape; the last two axes are the spatial ones) and scales itself by that
image's own statistics, so one strength means the same for 8-bit, 16-bit and normalised images:

- ``gaussian_noise``: additive Gaussian noise of standard deviation ``strength`` x the image's standard deviation;
- ``gaussian_blur``: a Gaussian blur of ``strength`` pixels (sigma) over the two spatial axes;
- ``contrast``: the deviations from the image's mean multiplied by ``strength`` (0.5 halves the contrast);
- ``gain``: every value multiplied by ``strength``;
- ``offset``: ``strength`` x the image's standard deviation added to every value;
- ``gamma``: the values, scaled to [0, 1] by the image's minimum and maximum, raised to the power ``strength`` and
  scaled back (a non-linear change of contrast that no linear normalisation undoes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: The perturbation kinds :func:`perturb` knows.
KINDS = ("gaussian_noise", "gaussian_blur", "contrast", "gain", "offset", "gamma")


@dataclass(frozen=True)
class Perturbation:
    """One perturbation of the sweep.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    strength : float
        How strong (see the module's description of each kind).
    """

    kind: str
    strength: float

    @property
    def condition(self) -> str:
        """The perturbation's name in the sweep's rows, e.g. ``gaussian_noise 0.2``."""
        return f"{self.kind} {self.strength:g}"


@dataclass(frozen=True)
class RobustnessRow:
    """One metric under one perturbation.

    Attributes
    ----------
    condition : str
        :attr:`Perturbation.condition`.
    kind : str
        The perturbation's kind.
    strength : float
        Its strength.
    metric : str
        The metric.
    value : float
        The metric on the perturbed test images.
    clean_value : float
        The metric on the test images as they are (the registered one).
    difference : float
        ``value - clean_value``.
    """

    condition: str
    kind: str
    strength: float
    metric: str
    value: float
    clean_value: float
    difference: float

    def as_dict(self) -> dict[str, str | float]:
        """The fields by name (JSON-ready)."""
        return asdict(self)


def parse_perturbations(config: Iterable[Mapping[str, object]]) -> list[Perturbation]:
    """The perturbations a config lists (``[{kind: gaussian_noise, strength: 0.2}, ...]``), checked.

    Parameters
    ----------
    config : iterable of mapping
        Each with ``kind`` and ``strength``.

    Returns
    -------
    list of Perturbation
        In the config's order.

    Raises
    ------
    ValueError
        Naming an unknown kind, a missing or non-finite strength, a strength out of range (blur and noise need
        one >= 0, contrast, gain and gamma one > 0) or the same perturbation twice.

    Examples
    --------
    >>> parse_perturbations([{"kind": "contrast", "strength": 0.5}])
    [Perturbation(kind='contrast', strength=0.5)]
    >>> parse_perturbations([{"kind": "sunshine", "strength": 1}])
    Traceback (most recent call last):
    ...
    ValueError: unknown perturbation kind 'sunshine'; known: gaussian_noise, gaussian_blur, contrast, gain, offset, gamma
    """
    perturbations = []
    for entry in config:
        kind = str(entry.get("kind"))
        if kind not in KINDS:
            raise ValueError(f"unknown perturbation kind {kind!r}; known: {', '.join(KINDS)}")
        try:
            strength = float(entry["strength"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"perturbation {kind}: strength must be a number, got {entry.get('strength')!r}") from error
        positive = kind in ("contrast", "gain", "gamma")
        if not np.isfinite(strength) or strength < 0 or (positive and strength == 0):
            raise ValueError(f"perturbation {kind}: strength must be {'> 0' if positive else '>= 0'} and finite, "
                             f"got {strength}")
        perturbation = Perturbation(kind, strength)
        if perturbation in perturbations:
            raise ValueError(f"perturbation {perturbation.condition} is listed twice")
        perturbations.append(perturbation)
    return perturbations


def perturb(image: np.ndarray, perturbation: Perturbation, rng: np.random.Generator) -> np.ndarray:
    """``image`` perturbed, as float32 (integer images are not clipped back to their dtype's range).

    Parameters
    ----------
    image : np.ndarray
        One image, at least 2-D; the last two axes are spatial (a stack ``(Z, H, W)`` or channels ``(C, H, W)``
        are perturbed as one image).
    perturbation : Perturbation
        What to do.
    rng : np.random.Generator
        The noise's source (only ``gaussian_noise`` draws from it).

    Returns
    -------
    np.ndarray
        float32, the shape of ``image``.

    Examples
    --------
    >>> image = np.arange(16, dtype=np.float32).reshape(4, 4)
    >>> float(perturb(image, Perturbation("contrast", 0.5), np.random.default_rng(0)).std() / image.std())
    0.5
    >>> perturb(image, Perturbation("gain", 2.0), np.random.default_rng(0))[0, :3].tolist()
    [0.0, 2.0, 4.0]
    """
    if image.ndim < 2:
        raise ValueError(f"an image has at least 2 axes, got shape {image.shape}")
    x = np.asarray(image, dtype=np.float32)
    s = float(perturbation.strength)
    if perturbation.kind == "gaussian_noise":
        return (x + rng.normal(0.0, s * float(x.std()), size=x.shape)).astype(np.float32)
    if perturbation.kind == "gaussian_blur":
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(x, sigma=(0.0,) * (x.ndim - 2) + (s, s), mode="reflect").astype(np.float32)
    if perturbation.kind == "contrast":
        mean = float(x.mean())
        return (mean + s * (x - mean)).astype(np.float32)
    if perturbation.kind == "gain":
        return (x * s).astype(np.float32)
    if perturbation.kind == "offset":
        return (x + s * float(x.std())).astype(np.float32)
    if perturbation.kind == "gamma":
        low, high = float(x.min()), float(x.max())
        if high <= low:
            return x.copy()
        return (low + (high - low) * ((x - low) / (high - low)) ** s).astype(np.float32)
    raise ValueError(f"unknown perturbation kind {perturbation.kind!r}; known: {', '.join(KINDS)}")


def perturb_each(images: Iterable[np.ndarray], perturbation: Perturbation, rng: np.random.Generator) -> list[np.ndarray]:
    """Every image of a set perturbed on its own (:func:`perturb`), in order, from one generator.

    Examples
    --------
    >>> [a.shape for a in perturb_each([np.ones((2, 3, 3)), np.ones((4, 4))], Perturbation("offset", 1.0),
    ...                                np.random.default_rng(0))]
    [(2, 3, 3), (4, 4)]
    """
    return [perturb(np.asarray(image), perturbation, rng) for image in images]


def robustness_sweep(score: Callable[[Perturbation, np.random.Generator], Mapping[str, float]],
                     perturbations: Sequence[Perturbation], clean: Mapping[str, float], metrics: Sequence[str], *,
                     seed: int = 0) -> list[RobustnessRow]:
    """Score the model under each perturbation and compare with its clean metrics.

    Parameters
    ----------
    score : callable
        ``score(perturbation, rng)``: the model's metrics on its test images perturbed with ``perturbation``
        (:func:`perturb` or :func:`perturb_each`, drawing from ``rng``).
    perturbations : sequence of Perturbation
        The sweep (:func:`parse_perturbations`).
    clean : mapping of str to float
        The metrics on the clean test images (the registered ones).
    metrics : sequence of str
        The metrics to report; each must be in ``clean`` and in what ``score`` returns.
    seed : int, optional
        Each perturbation draws from ``np.random.default_rng([seed, i])``, ``i`` its place in the sweep: the same
        sweep gives the same rows.

    Returns
    -------
    list of RobustnessRow
        Per perturbation, one row per metric.

    Raises
    ------
    KeyError
        A metric that ``clean`` or the score lacks.

    Examples
    --------
    >>> def score(p, rng):
    ...     return {"iou": 0.8 - 0.1 * p.strength}
    >>> rows = robustness_sweep(score, [Perturbation("gaussian_blur", 2.0)], {"iou": 0.8}, ["iou"])
    >>> rows[0].condition, round(rows[0].value, 3), round(rows[0].difference, 3)
    ('gaussian_blur 2', 0.6, -0.2)
    """
    absent = [m for m in metrics if m not in clean]
    if absent:
        raise KeyError(f"metric {', '.join(map(repr, absent))} is not among the clean metrics {sorted(clean)}")
    rows = []
    for i, perturbation in enumerate(perturbations):
        scores = score(perturbation, np.random.default_rng([seed, i]))
        for metric in metrics:
            if metric not in scores:
                raise KeyError(f"the score under {perturbation.condition} has no {metric!r}: {sorted(scores)}")
            value, reference = float(scores[metric]), float(clean[metric])
            rows.append(RobustnessRow(perturbation.condition, perturbation.kind, perturbation.strength, metric, value,
                                      reference, value - reference))
    return rows
