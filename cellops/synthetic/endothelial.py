"""Synthetic phase-contrast patches of cell monolayers, two classes: hiPSC-derived endothelial cells and others.

``hipsc_ec``: a confluent monolayer of elongated cells, cobblestone to spindle-shaped, aligned locally (a common
direction that bends across the patch), with bright cell-cell junctions, elongated nuclei and faint fibres along
the cells. ``non_ec``: rounder cells in clusters with gaps of medium between them, the bright phase halo of thicker
cells at the cluster edges, weak junctions and a granular cytoplasm.

Cells are the tiles of a Voronoi tessellation of a jittered lattice of seeds, drawn in coordinates stretched
along a locally bending direction, so a tile is an elongated, aligned cell; a cell reaches only so far from its
seed, and seeds are removed in patches, which leaves the gaps. Every image draws one phenotype value ``t`` (0 = EC
side, 1 = other side) from its class's range, and each shape or texture feature lies between its EC and its
non-EC range according to ``t`` plus a little jitter of its own. A fraction :data:`HARD_FRACTION` of the images
of each class is drawn around the middle instead, some past it on the other class's side: ambiguous cases, as
real cultures have (a small CNN gets about 97-98 % right, not 100 %).

Everything that does not tell the classes apart is drawn from the same distributions for both: cell density,
focus, illumination gradient and vignetting, brightness, contrast, the camera's tone curve and noise; the scene's
own mean and spread are normalised away first. So the intensity histogram of an image says little about its class
(a logistic regression on 32-bin histograms: about 0.65-0.73 accuracy). Computed in float64 without BLAS products, so the bytes are the same on every
CPU (see :mod:`cellops.synthetic.em`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from cellops.io import encode_image, write_files_safely

#: Class folder names; ``hipsc_ec`` is the positive class.
CLASSES: tuple[str, str] = ("hipsc_ec", "non_ec")

#: Fraction of each class's images drawn near the other class (ambiguous cases).
HARD_FRACTION = 0.03

# Each feature as (EC range, non-EC range); an image draws a value in each and mixes them by its phenotype t.
_FEATURES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "stretch": ((1.4, 3.4), (1.0, 1.6)),  # cell length / width
    "bend": ((2.0, 9.0), (0.0, 3.0)),  # amplitude in px of the bending of the common direction
    "reach": ((0.95, 1.25), (0.50, 0.62)),  # how far a cell reaches from its seed, in lattice spacings
    "drop": ((0.0, 0.06), (0.25, 0.5)),  # fraction of seeds removed (in patches): gaps between clusters
    "jitter": ((0.12, 0.25), (0.22, 0.36)),  # seed jitter, in lattice spacings
    "junction": ((0.2, 0.35), (0.0, 0.05)),  # brightness of cell-cell junctions
    "granules": ((0.0, 0.04), (0.1, 0.2)),  # amplitude of the granular texture
    "fibres": ((0.025, 0.06), (0.0, 0.012)),  # amplitude of fibres along the cells
    "halo": ((0.03, 0.09), (0.10, 0.20)),  # phase halo outside the cell edges (thicker cells: brighter)
}


def _mix(rng: np.random.Generator, feature: str, t: float) -> float:
    """A value of ``feature`` for phenotype ``t``: between its EC and non-EC ranges, with jitter of its own."""
    (ec_lo, ec_hi), (other_lo, other_hi) = _FEATURES[feature]
    weight = min(1.0, max(0.0, t + float(rng.normal(0.0, 0.06))))
    weight = weight * weight * (3.0 - 2.0 * weight)  # smoothstep: each class's typical images near its own end
    return (1.0 - weight) * float(rng.uniform(ec_lo, ec_hi)) + weight * float(rng.uniform(other_lo, other_hi))


def _phenotype(rng: np.random.Generator, positive: bool) -> float:
    """Where an image lies between EC (0) and non-EC (1): most well inside their class's side, a few
    (:data:`HARD_FRACTION`) around the middle, reaching into the other class's side."""
    if rng.random() < HARD_FRACTION:
        return float(rng.uniform(0.3, 0.56) if positive else rng.uniform(0.44, 0.7))
    return float(rng.uniform(0.0, 0.28) if positive else rng.uniform(0.72, 1.0))


def _lattice_seeds(rng: np.random.Generator, half_a: float, half_b: float, spacing: float, jitter: float,
                   drop: float) -> np.ndarray:
    """Seeds of a jittered hexagonal lattice covering ``[-half_a, half_a] x [-half_b, half_b]``, less a fraction
    ``drop`` removed where a smooth random field over the lattice is lowest (so the gaps come in patches)."""
    n_a = int(np.ceil(half_a / spacing)) + 1
    n_b = int(np.ceil(half_b / (spacing * 0.8660254037844386))) + 1
    jb, ia = np.mgrid[-n_b : n_b + 1, -n_a : n_a + 1].astype(np.float64)
    a = (ia + 0.5 * (np.abs(jb) % 2)) * spacing
    b = jb * spacing * 0.8660254037844386
    a = a + rng.normal(0.0, jitter * spacing, a.shape)
    b = b + rng.normal(0.0, jitter * spacing, b.shape)
    field = ndimage.gaussian_filter(rng.normal(size=a.shape), 1.3, mode="wrap")
    keep = np.ones(a.size, bool)
    keep[np.argsort(field.ravel(), kind="stable")[: int(drop * a.size)]] = False
    return np.stack([a.ravel()[keep], b.ravel()[keep]], axis=1)


def _streaks(rng: np.random.Generator, coordinate: np.ndarray, extent: float, step: float) -> np.ndarray:
    """A random 1-D profile (knots ``step`` px apart, unit variance) read at ``coordinate`` (within ``extent``)."""
    knots = np.arange(-extent - 2 * step, extent + 2 * step, step)
    return np.interp(coordinate, knots, rng.normal(size=knots.size))


def generate_cell_image(label: str, size: int = 96, *, seed: int) -> np.ndarray:
    """Draw one phase-contrast patch of a monolayer of class ``label`` (one of :data:`CLASSES`).

    Parameters
    ----------
    label : ``"hipsc_ec"`` (elongated, aligned cells with bright junctions) or ``"non_ec"`` (rounder, clustered
        cells with gaps and a granular texture).
    size : the patch is ``size`` x ``size`` pixels; neighbouring cells lie 11 to 18 px apart, whatever the size.
    seed : seed of the random generator; the same label and seed give the same bytes.

    Returns
    -------
    uint8 array of shape (size, size).

    Examples
    --------
    >>> patch = generate_cell_image("hipsc_ec", 64, seed=0)
    >>> patch.shape, patch.dtype
    ((64, 64), dtype('uint8'))
    >>> bool((patch == generate_cell_image("hipsc_ec", 64, seed=0)).all())
    True
    """
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    rng = np.random.default_rng(seed)
    positive = label == CLASSES[0]
    t = _phenotype(rng, positive)
    f = {name: _mix(rng, name, t) for name in _FEATURES}

    # Not class-specific: cell size, body and nucleus contrast, focus, illumination, brightness, contrast, noise.
    spacing = float(rng.uniform(11.0, 18.0))
    body = float(rng.uniform(-0.12, 0.02))
    nucleus_dark = float(rng.uniform(0.04, 0.12))
    nucleus_radius = float(rng.uniform(0.24, 0.34))
    focus = float(rng.uniform(0.3, 1.3))
    gradient = float(rng.uniform(0.0, 0.3))
    gradient_angle = float(rng.uniform(0.0, 2 * np.pi))
    vignette = float(rng.uniform(0.0, 0.25))
    level = float(rng.uniform(0.4, 0.6))
    contrast = float(rng.uniform(0.06, 0.12))
    noise = float(rng.uniform(0.008, 0.035))
    tone = float(rng.uniform(-0.12, 0.12))

    # Coordinates: u along the cells' common direction, v across it, bent by a slow wave; then (a, b), in which
    # the elongated cells of the patch are round (a lattice there is a tessellation of aligned, stretched cells).
    half = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size].astype(np.float64) - half
    angle = float(rng.uniform(0.0, np.pi))
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    u = xx * cos_a + yy * sin_a
    v = yy * cos_a - xx * sin_a
    radius = half * 1.4142135623730951 + 1.0
    wavelength = float(rng.uniform(50.0, 140.0))
    v = v + f["bend"] * np.sin(u * (2 * np.pi / wavelength) + float(rng.uniform(0.0, 2 * np.pi)))
    root_stretch = np.sqrt(f["stretch"])
    a, b = u / root_stretch, v * root_stretch
    seeds = _lattice_seeds(rng, radius / root_stretch + 2 * spacing, (radius + f["bend"]) * root_stretch + 2 * spacing,
                           spacing, f["jitter"], f["drop"])
    distance, nearest = cKDTree(seeds).query(np.stack([a.ravel(), b.ravel()], axis=1))
    distance, nearest = distance.reshape(size, size), nearest.reshape(size, size)

    # Cells, junctions (where the nearest seed changes between neighbouring pixels), nuclei, texture.
    cell = distance < f["reach"] * spacing
    labels = np.where(cell, nearest, -1)
    edge = np.zeros((size, size), bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    junction = ndimage.gaussian_filter((edge & cell).astype(np.float64), 0.6)
    nucleus = np.clip((nucleus_radius * spacing - distance) / (0.15 * spacing), 0.0, 1.0)
    own = rng.normal(0.0, 0.03, len(seeds))[nearest]
    fibres = _streaks(rng, v, radius + f["bend"], 1.6) * (0.6 + 0.4 * np.abs(_streaks(rng, u, radius, 7.0)))
    specks = (rng.random((size, size)) < 0.08).astype(np.float64) - (rng.random((size, size)) < 0.08)
    granules = ndimage.gaussian_filter(specks, 0.7) * 2.5
    inside = cell.astype(np.float64)
    image = 0.5 + inside * (body + own - nucleus_dark * nucleus + f["junction"] * junction * 2.0
                            + f["fibres"] * fibres + f["granules"] * granules)
    # Phase contrast: a bright halo just outside the cell edges, a darker rim just inside.
    spread = ndimage.gaussian_filter(inside, 1.8)
    image += f["halo"] * (2.5 * np.clip(spread - inside, 0.0, None) - 0.5 * np.clip(inside - spread, 0.0, None))

    # Microscope: focus, illumination, brightness and contrast, noise.
    # The scene's own mean and spread are set by the microscope (the same for both classes), not by the cells.
    image = ndimage.gaussian_filter(image, focus)
    image = (image - image.mean()) / max(1e-6, float(image.std()))
    image = image + tone * (np.clip(image, -3.5, 3.5) ** 2 - 1.0)  # the camera's tone curve: skews the histogram
    tilt = (xx * np.cos(gradient_angle) + yy * np.sin(gradient_angle)) / half
    illumination = 1.0 + gradient * 0.5 * tilt - vignette * (xx * xx + yy * yy) / (2 * half * half)
    image = (level + contrast * image) * illumination
    image = image + rng.normal(0.0, noise, image.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def image_seed(seed: int, label: str, index: int) -> int:
    """The seed of image ``index`` of class ``label`` in a dataset of ``seed``: independent of generation order.

    Examples
    --------
    >>> image_seed(0, "hipsc_ec", 3) == image_seed(0, "hipsc_ec", 3) != image_seed(0, "non_ec", 3)
    True
    """
    sequence = np.random.SeedSequence([int(seed), CLASSES.index(label), int(index)])
    return int(sequence.generate_state(1, np.uint64)[0])


def write_endothelial_dataset(out_dir: str | Path, *, images_per_class: int, size: int, seed: int,
                              overwrite: bool = False) -> dict[str, Path]:
    """Write ``<class>/<class>_NNNN.png`` under ``out_dir`` for both :data:`CLASSES` (the class-folder layout
    :func:`cellops.classifier.data.list_class_folders` reads).

    Image ``i`` of a class is drawn from :func:`image_seed` ``(seed, class, i)``, so it is the same whatever the
    number of images. Files already there with other contents are never overwritten unless ``overwrite``.

    Returns
    -------
    Mapping from each file's path relative to ``out_dir`` to the path written.
    """
    out_dir = Path(out_dir)
    contents: dict[Path, bytes] = {}
    for label in CLASSES:
        for i in range(images_per_class):
            image = generate_cell_image(label, size, seed=image_seed(seed, label, i))
            contents[out_dir / label / f"{label}_{i:04d}.png"] = encode_image(image, "png")
    write_files_safely(contents, overwrite=overwrite)
    return {str(path.relative_to(out_dir)): path for path in contents}
