"""Synthetic nuclear-stain domains harder than the default data, for models trained on the default data to meet.

A model trained on :func:`cellops.synthetic.nuclei.generate_nuclei_image`'s default images meets real fields first
in the lab, where more goes wrong at once than in any single condition of the robustness sweep
(:data:`cellops.robustness.NUCLEI_CONDITIONS`). :func:`generate_lab_nuclei_image` draws such a field: larger nuclei
pressed against each other, a dim population beside a bright one, a blotchy, vignetted background, dim blurred
nuclei of another focal plane, few photons, dark nucleoli in the chromatin (a texture the default images do not
have), then the 16-bit image stretched to 8 bits between its own percentiles, as images are exported for viewing
(the brightest nuclei saturate). The ground truth is exact: the generator's label image, unchanged by the
nucleoli and the stretch (both act on intensities only). ``benchmarks/sim_to_real.py`` uses it.

The default generator is not changed (its bytes are pinned by ``data.dvc``): everything here is drawn on top of
one of its images with a random stream of its own.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cellops.synthetic.nuclei import NucleiImage, generate_nuclei_image

#: The generator settings of the lab domain (on top of the ``Control`` group's shapes).
LAB_DOMAIN: dict = {
    "touching_fraction": 0.75,
    "diameter_scale": 1.35,
    "brightness": (0.2, 1.0),
    "dim_fraction": 0.3,
    "dim_gain": 0.3,
    "blotchy_background": 0.3,
    "vignetting": 0.45,
    "out_of_focus_fraction": 0.2,
    "defocus_sigma": 4.0,
    "photons": 120.0,
}


def _nucleoli(labels: np.ndarray, rng: np.random.Generator, per_nucleus: tuple[int, int], depth: float,
              radius: float) -> np.ndarray:
    """A multiplicative map (1 outside nucleoli): 1 - ``depth`` at the centre of each of a few round dark spots
    per nucleus, Gaussian of ``radius`` pixels, centred inside their nucleus."""
    dark = np.zeros(labels.shape, np.float64)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = np.argwhere(labels[box] == index)
        if len(inside) < 20:
            continue
        for _ in range(int(rng.integers(per_nucleus[0], per_nucleus[1] + 1))):
            y, x = inside[int(rng.integers(len(inside)))] + [box[0].start, box[1].start]
            dark[y, x] = 1.0
    spots = ndimage.gaussian_filter(dark, radius) * (2 * np.pi * radius**2)
    return 1.0 - depth * np.clip(spots, 0.0, 1.0) * (labels > 0)


def generate_lab_nuclei_image(shape: tuple[int, int] = (512, 512), *, seed: int = 0, n_nuclei: int = 45,
                              group: str = "Control", low_percentile: float = 0.5,
                              high_percentile: float = 99.7) -> NucleiImage:
    """One field of the lab domain: uint8, stretched; exact instance labels (see the module's description).

    Parameters
    ----------
    shape : tuple of int, optional
        (rows, columns).
    seed : int, optional
        Seed of every draw: the same seed gives the same bytes.
    n_nuclei : int, optional
        In-focus nuclei to attempt to place (out-of-focus ones are added, :data:`LAB_DOMAIN`).
    group : str, optional
        Culture group whose shape distribution the nuclei follow (:data:`cellops.synthetic.nuclei.GROUP_SHAPES`).
    low_percentile, high_percentile : float, optional
        The 16-bit image's percentiles mapped to 0 and 255 (above: saturated).

    Returns
    -------
    NucleiImage
        ``image`` uint8 (H, W), ``labels`` int32 and the nuclei's ``ellipses``.

    Examples
    --------
    >>> field = generate_lab_nuclei_image((128, 128), seed=1, n_nuclei=5)
    >>> field.image.dtype, field.image.shape, int(field.image.max()), bool(field.labels.max() > 0)
    (dtype('uint8'), (128, 128), 255, True)
    """
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low_percentile}, {high_percentile}")
    sample = generate_nuclei_image(group, shape, seed=seed, n_nuclei=n_nuclei, **LAB_DOMAIN)
    rng = np.random.default_rng([seed, 28])
    diameter = 30.0 * LAB_DOMAIN["diameter_scale"]
    image = sample.image.astype(np.float64)
    background = float(np.percentile(image[sample.labels == 0], 50)) if (sample.labels == 0).any() else 0.0
    image = background + (image - background) * _nucleoli(sample.labels, rng, (2, 4), 0.55, 0.09 * diameter)
    low, high = np.percentile(image, [low_percentile, high_percentile])
    stretched = np.clip(np.rint((image - low) / max(high - low, 1e-9) * 255.0), 0, 255).astype(np.uint8)
    return NucleiImage(image=stretched, labels=sample.labels, ellipses=sample.ellipses)


__all__ = ["LAB_DOMAIN", "generate_lab_nuclei_image"]
