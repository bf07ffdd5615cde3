"""Synthetic phase-contrast images of hiPSC colonies with exact instance masks (COCO-style JSON).

Colonies are compact, irregular regions packed with small cells (a cobblestone texture), a little darker
than the medium, wrapped in the bright halo phase contrast puts around thick objects. Single cells (small,
round, haloed) and debris (specks) are scattered around and are not colonies. Uneven illumination and noise
are applied last. Everything comes from one seeded generator and is computed in float64, so the bytes are the
same on every CPU (see :mod:`cellops.synthetic.em`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from cellops.coco import labels_to_coco
from cellops.io import encode_image, write_files_safely


@dataclass(frozen=True)
class ColonyImage:
    """One synthetic image: ``image`` uint8 (H, W), ``labels`` int32 (H, W) with 0 background and colony
    ``i`` labelled ``i`` (1-based), and the drawn outlines."""

    image: np.ndarray
    labels: np.ndarray
    polygons: list[np.ndarray]


def _colony_polygon(rng: np.random.Generator, centre: np.ndarray, radius: float, n_points: int = 96,
                    irregularity: float = 1.0, extra: np.random.Generator | None = None) -> np.ndarray:
    """A closed, star-shaped outline: a circle perturbed by a few random low-order harmonics (stronger, and
    higher orders too, with ``irregularity`` above 1)."""
    theta = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0, 0.12 / (k - 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    if irregularity != 1.0 and extra is not None:
        r = 1 + (r - 1) * irregularity
        for k in range(6, 10):
            r += extra.uniform(0, 0.03 * (irregularity - 1)) * np.cos(k * theta + extra.uniform(0, 2 * np.pi))
        r = np.maximum(r, 0.35)
    r *= radius * rng.uniform(0.85, 1.0)
    stretch = rng.uniform(1.0, 1.5)
    angle = rng.uniform(0, np.pi)
    x, y = r * np.cos(theta) * stretch, r * np.sin(theta) / stretch
    xr = x * np.cos(angle) - y * np.sin(angle)
    yr = x * np.sin(angle) + y * np.cos(angle)
    return np.stack([centre[1] + xr, centre[0] + yr], axis=1)  # (x, y), float64: rounded to pixels once


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field / max(1e-6, float(field.std()))


def generate_colony_image(
    shape: tuple[int, int] = (512, 512),
    *,
    seed: int = 0,
    n_colonies: tuple[int, int] = (3, 7),
    radius: tuple[float, float] = (35.0, 90.0),
    n_single_cells: int = 25,
    n_debris: int = 60,
    noise_sigma: float = 0.035,
    magnification: float = 10.0,
    gap: tuple[float, float] | None = None,
    irregularity: float = 1.0,
    differentiated_fraction: float = 0.0,
    clutter: float = 1.0,
) -> ColonyImage:
    """Draw one phase-contrast-like image of hiPSC colonies.

    Parameters
    ----------
    shape : (rows, columns).
    seed : seed of the random generator; the same seed gives the same bytes.
    n_colonies : inclusive range of the number of colonies.
    radius : range of colony radii in pixels.
    n_single_cells, n_debris : how many non-colony objects to scatter.
    noise_sigma : additive Gaussian noise on the 0..1 scale.
    magnification : objective magnification; sizes are given at 10x and scale with it (4x: 0.4 times).
    gap : range of the distance between neighbouring colonies, in pixels (default: at least 30); a range
        from 0 places colonies against each other, touching (each pixel belongs to one colony).
    irregularity : how far outlines depart from a circle (1: the default; 2.5: lobed, ragged colonies).
    differentiated_fraction : share of colonies with a differentiated rim: a band of flattened, larger,
        paler cells at the edge (part of the colony) with a weaker halo.
    clutter : multiplies the number of single cells and debris specks.

    Examples
    --------
    >>> img = generate_colony_image((128, 128), seed=1, n_colonies=(1, 2), radius=(20, 30))
    >>> img.image.dtype, bool(img.labels.max() == len(img.polygons))
    (dtype('uint8'), True)
    """
    rng = np.random.default_rng(seed)
    # Draws for the optional features come from their own stream: default images stay byte-identical.
    extra = np.random.default_rng([seed, 1])
    scale = magnification / 10.0
    radius = (radius[0] * scale, radius[1] * scale)
    n_single_cells, n_debris = int(round(n_single_cells * clutter)), int(round(n_debris * clutter))
    height, width = shape
    medium = 0.55 + 0.04 * _smooth_noise(rng, shape, 6)
    labels = np.zeros(shape, np.int32)
    polygons: list[np.ndarray] = []
    target = int(rng.integers(n_colonies[0], n_colonies[1] + 1))
    for _ in range(400):
        if len(polygons) == target:
            break
        r = rng.uniform(*radius)
        centre = rng.uniform([r * 0.9, r * 0.9], [height - r * 0.9, width - r * 0.9])
        min_gap = 30 if gap is None else int(round(extra.uniform(*gap)))
        if gap is not None and polygons and extra.random() < 0.6:
            # Against a neighbour: as far from it along a random direction as the two outlines reach (their
            # support functions), less up to 8 % (colonies press into each other), plus the gap.
            other = polygons[int(extra.integers(len(polygons)))]
            middle = other.mean(axis=0)
            direction = extra.uniform(0, 2 * np.pi)
            unit = np.array([np.cos(direction), np.sin(direction)])  # (x, y)
            poly = _colony_polygon(rng, np.zeros(2), r, irregularity=irregularity, extra=extra)
            reach = float(((other - middle) @ unit).max() + (-poly @ unit).max())
            poly += middle + (reach * extra.uniform(0.92, 1.0) + min_gap) * unit
        else:
            poly = _colony_polygon(rng, centre, r, irregularity=irregularity, extra=extra)
        # Work in the polygon's bounding box (plus the required gap), not the whole image.
        x0, y0 = np.maximum(np.floor(poly.min(axis=0)).astype(int) - min_gap, 0)
        x1, y1 = np.minimum(np.ceil(poly.max(axis=0)).astype(int) + min_gap + 1, [width, height])
        if x1 <= x0 or y1 <= y0:
            continue
        candidate = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(candidate, [np.round(poly - [x0, y0]).astype(np.int32)], 1)
        taken = labels[y0:y1, x0:x1] > 0
        if gap is None:
            grown = cv2.dilate(candidate, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * min_gap + 1, 2 * min_gap + 1)))
            if candidate.sum() < 200 or (grown.astype(bool) & taken).any():
                continue
        else:
            # Touching is allowed, stacking is not: the newcomer gets only free pixels, and must keep most of its own.
            free = candidate.astype(bool) & ~taken
            if free.sum() < max(60, 200 * scale**2) or free.sum() < 0.8 * candidate.sum() or not _inside(poly, shape):
                continue
            candidate = free.astype(np.uint8)
        polygons.append(poly)
        labels[y0:y1, x0:x1][candidate.astype(bool)] = len(polygons)

    inside = (labels > 0).astype(np.float64)
    # Cobblestone interior: small cells with bright borders, at cell scale (~8 px).
    cells = _smooth_noise(rng, shape, 1.6 * max(scale, 0.5))
    texture = 0.10 * cells + 0.05 * _smooth_noise(rng, shape, 0.8 * max(scale, 0.5))
    image = medium * (1 - inside) + (0.45 + texture) * inside
    # Phase-contrast halo: a bright band just outside each colony edge, a darker rim just inside.
    distance_out = ndimage.distance_transform_edt(labels == 0)
    distance_in = ndimage.distance_transform_edt(labels > 0)
    halo = np.exp(-((distance_out - 2.0 * scale) / (2.5 * max(scale, 0.5))) ** 2) * (labels == 0)
    if differentiated_fraction:
        # Differentiated rims: flattened, paler cells (coarser, weaker texture) in a band inside the edge,
        # and a weaker halo outside it.
        flattened = np.zeros(shape, bool)
        owner = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
        nearest = labels[owner[0], owner[1]]
        for label in range(1, len(polygons) + 1):
            if extra.random() < differentiated_fraction:
                reach = np.sqrt((labels == label).sum() / np.pi)
                flattened |= (labels == label) & (distance_in < extra.uniform(0.2, 0.35) * reach)
                halo[nearest == label] *= 0.35
        flat_texture = 0.05 * _smooth_noise(extra, shape, 3.5 * max(scale, 0.5))
        image = np.where(flattened, 0.50 + flat_texture, image)
    # Where two colonies touch, each keeps its compacted, phase-dark edge, with a thin bright line between.
    contact = np.zeros(shape, bool)
    contact[:, 1:] |= (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    contact[1:] |= (labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)
    if contact.any():
        distance_seam = ndimage.distance_transform_edt(~contact)
        distance_in = np.minimum(distance_in, distance_seam)
        image += 0.25 * np.exp(-(distance_seam / (1.2 * max(scale, 0.5))) ** 2) * (labels > 0)
    image += 0.30 * halo
    image -= 0.10 * np.exp(-((distance_in - 2.0 * scale) / (2.0 * max(scale, 0.5))) ** 2) * (labels > 0)

    # Single cells (not colonies): small dark disks with their own halo; debris: bright and dark specks.
    for _ in range(n_single_cells):
        c = rng.uniform([0, 0], [height, width])
        if labels[int(c[0]), int(c[1])]:
            continue
        r = rng.uniform(3, 7) * max(scale, 0.4)
        y0, x0 = max(0, int(c[0]) - 15), max(0, int(c[1]) - 15)
        yy, xx = np.ogrid[y0 : min(height, int(c[0]) + 16), x0 : min(width, int(c[1]) + 16)]
        d = np.sqrt((yy - c[0]) ** 2 + (xx - c[1]) ** 2)
        window = image[y0 : y0 + d.shape[0], x0 : x0 + d.shape[1]]
        window -= 0.15 * (d < r)
        window += 0.25 * np.exp(-((d - r - 1.5) / 1.5) ** 2)
    for _ in range(n_debris):
        y, x = rng.integers(0, height), rng.integers(0, width)
        image[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] += rng.choice([-0.25, 0.3])

    image = ndimage.gaussian_filter(image, 0.7)
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    image *= 1.0 + gx * (xx - 0.5) + gy * (yy - 0.5) + 0.05 * _smooth_noise(rng, shape, max(height, width) / 4)
    image += rng.normal(0, noise_sigma, shape)
    return ColonyImage(
        image=np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), labels=labels, polygons=polygons
    )


def _inside(poly: np.ndarray, shape: tuple[int, int]) -> bool:
    return bool(poly.min() >= 0 and poly[:, 0].max() < shape[1] and poly[:, 1].max() < shape[0])


def write_colony_dataset(root: str | Path, *, n_images: int = 12, shape: tuple[int, int] = (512, 512),
                         seed: int = 0, overwrite: bool = False) -> dict[str, Path]:
    """Write ``images/colony_NNN.png`` and ``annotations.json`` (COCO) under ``root``."""
    root = Path(root)
    contents: dict[Path, bytes] = {}
    labels: dict[str, np.ndarray] = {}
    for i in range(n_images):
        sample = generate_colony_image(shape, seed=seed * 1000 + i)
        name = f"colony_{i:03d}.png"
        contents[root / "images" / name] = encode_image(sample.image, "png")
        labels[name] = sample.labels
    contents[root / "annotations.json"] = json.dumps(labels_to_coco(labels), indent=1).encode()
    write_files_safely(contents, overwrite=overwrite)
    return {path.name: path for path in contents}
