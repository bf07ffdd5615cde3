"""Synthetic nuclear-stain (e.g. Hoechst/DAPI) images of HaCaT keratinocytes in three culture groups.

Each nucleus is an ellipse whose size and aspect ratio are drawn from a group-specific distribution (PDA
film clearly more elongated than control, coating in between), with chromatin texture, its own brightness
and focus. Nuclei touch and some overlap; background, uneven illumination, blur and noise are added. The
ground truth is an instance label image plus each nucleus's drawn ellipse parameters. Computed in float64,
so the bytes are the same on every CPU (see :mod:`cellops.synthetic.em`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from cellops.io import encode_image, write_files_safely

#: Group name -> (median aspect ratio, spread of log aspect ratio, median area in px).
GROUP_SHAPES: dict[str, tuple[float, float, float]] = {
    "Control": (1.25, 0.10, 700.0),
    "Coating": (1.45, 0.12, 720.0),
    "Film": (1.95, 0.15, 760.0),
}


@dataclass(frozen=True)
class NucleiImage:
    """``image`` uint16 (H, W) (uint8 with ``bit_depth=8``); ``labels`` int32 (H, W), nucleus ``i`` labelled ``i``; ``ellipses`` one row per
    nucleus with its drawn centre, axes, angle and aspect ratio (labels whose pixels were all covered by
    others stay in the table with ``visible`` False)."""

    image: np.ndarray
    labels: np.ndarray
    ellipses: pd.DataFrame


def generate_nuclei_image(
    group: str,
    shape: tuple[int, int] = (512, 512),
    *,
    seed: int = 0,
    n_nuclei: int = 45,
    touching_fraction: float = 0.3,
    noise_sigma: float = 0.02,
    diameter_scale: float = 1.0,
    brightness: tuple[float, float] = (0.45, 0.9),
    mitotic_fraction: float = 0.0,
    flat_fraction: float = 0.0,
    illumination_gradient: float = 0.25,
    defocus_sigma: float = 2.5,
    photons: float = 800.0,
    bit_depth: int = 16,
) -> NucleiImage:
    """Draw one nuclear-stain image of ``group`` (a key of :data:`GROUP_SHAPES`).

    Parameters
    ----------
    group : culture group whose shape distribution the nuclei follow.
    shape : (rows, columns).
    seed : seed of the random generator.
    n_nuclei : nuclei to attempt to place.
    touching_fraction : fraction of nuclei placed against a neighbour (touching or slightly overlapping).
    noise_sigma : Gaussian read noise on the 0..1 scale (shot noise is added too).
    diameter_scale : nucleus size relative to the default (about 30 px across): 0.27 gives 8 px, 2 gives 60.
    brightness : range of the nuclei's brightness (a wide range puts dim nuclei beside bright ones).
    mitotic_fraction : share of small (0.55 x diameter), round, bright nuclei (mitotic figures).
    flat_fraction : share of large (1.7 x diameter), dim, flat nuclei.
    illumination_gradient : peak-to-peak illumination change across the field (0.25: +-12 %).
    defocus_sigma : blur of the out-of-focus parts of the field (a smooth field mixes it with a sharp one).
    photons : photons per unit brightness (shot noise: fewer photons, noisier image).
    bit_depth : 16 or 8 (the image is stored in that many bits).

    Examples
    --------
    >>> sample = generate_nuclei_image("Film", (128, 128), seed=0, n_nuclei=5)
    >>> sample.image.dtype, int(sample.labels.max()) == len(sample.ellipses)
    (dtype('uint16'), True)
    """
    if group not in GROUP_SHAPES:
        raise ValueError(f"unknown group {group!r}; expected one of {sorted(GROUP_SHAPES)}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    rng = np.random.default_rng(seed)
    # Draws for the optional nucleus kinds come from their own stream: the default images stay byte-identical.
    kinds = np.random.default_rng([seed, 1])
    ar_median, ar_spread, area_median = GROUP_SHAPES[group]
    area_median *= diameter_scale**2
    height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    signal = np.zeros(shape, np.float64)
    labels = np.zeros(shape, np.int32)
    rows: list[dict] = []
    centres: list[tuple[float, float, float]] = []
    for _ in range(n_nuclei * 20):
        if len(rows) == n_nuclei:
            break
        aspect = float(np.clip(ar_median * np.exp(rng.normal(0, ar_spread)), 1.0, 4.0))
        area = float(area_median * np.exp(rng.normal(0, 0.2)))
        kind, gain = "interphase", 1.0
        if mitotic_fraction or flat_fraction:
            draw = kinds.random()
            if draw < mitotic_fraction:
                kind, gain, area, aspect = "mitotic", 1.6, area * 0.3, min(aspect, 1.15)
            elif draw < mitotic_fraction + flat_fraction:
                kind, gain, area = "flat", 0.45, area * 2.9
        minor = np.sqrt(area / (np.pi * aspect))
        major = minor * aspect
        angle = float(rng.uniform(0, np.pi))
        if centres and rng.random() < touching_fraction:
            # Against a neighbour: centre distance about the sum of the two radii in that direction.
            cy0, cx0, r0 = centres[int(rng.integers(len(centres)))]
            direction = rng.uniform(0, 2 * np.pi)
            dist = (r0 + (minor + major) / 2) * rng.uniform(0.85, 1.0)
            cy, cx = cy0 + dist * np.sin(direction), cx0 + dist * np.cos(direction)
        else:
            cy, cx = rng.uniform(major, height - major), rng.uniform(major, width - major)
        if not (minor <= cy < height - minor and minor <= cx < width - minor):
            continue
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = (u / major) ** 2 + (v / minor) ** 2 <= 1.0
        # At most a sliver of overlap with nuclei already drawn (touching is fine, stacking is not).
        overlap = float((inside & (labels > 0)).sum()) / max(1, int(inside.sum()))
        if overlap > 0.08 or inside.sum() < max(6.0, 30 * diameter_scale**2):
            continue
        label = len(rows) + 1
        labels[inside] = label
        level = rng.uniform(*brightness) * gain
        chromatin = ndimage.gaussian_filter(rng.normal(size=shape), 1.5 * max(diameter_scale, 0.4))
        texture = 1.0 + 0.25 * chromatin / max(1e-6, float(chromatin.std()))
        edge = np.power(np.clip(1.0 - ((u / major) ** 2 + (v / minor) ** 2), 0, 1), 0.3)  # brighter core, soft rim
        signal = np.where(inside, np.maximum(signal, level * texture * edge), signal)
        centres.append((cy, cx, (major + minor) / 2))
        rows.append({"label": label, "centroid_y": cy, "centroid_x": cx, "major_axis": 2 * major,
                     "minor_axis": 2 * minor, "angle_rad": angle, "aspect_ratio": aspect, "group": group,
                     **({"kind": kind} if mitotic_fraction or flat_fraction else {})})

    # Out-of-focus: a smooth field mixes a sharp and a blurred rendering.
    focus = ndimage.gaussian_filter(rng.random(shape), 60)
    focus = (focus - focus.min()) / max(1e-6, float(np.ptp(focus)))
    # The optics blur a fixed distance in micrometres: fewer pixels when nuclei are smaller (lower magnification).
    optics = float(np.clip(diameter_scale, 0.5, 1.0))
    image = ((1 - focus) * ndimage.gaussian_filter(signal, 1.0 * optics)
             + focus * ndimage.gaussian_filter(signal, defocus_sigma * optics))
    illumination = 1.0 + illumination_gradient * ((xx / width - 0.5) * rng.uniform(-1, 1)
                                                  + (yy / height - 0.5) * rng.uniform(-1, 1))
    image = (0.06 + image) * illumination
    image = rng.poisson(image * photons) / photons + rng.normal(0, noise_sigma, shape)
    if bit_depth == 8:
        stored = np.clip(np.rint(image * 40000 * 255 / 65535), 0, 255).astype(np.uint8)
    else:
        stored = np.clip(np.rint(image * 40000), 0, 65535).astype(np.uint16)
    table = pd.DataFrame(rows)
    visible = set(np.unique(labels).tolist()) - {0}
    table["visible"] = table["label"].isin(visible)
    return NucleiImage(image=stored, labels=labels, ellipses=table)


def write_nuclei_dataset(root: str | Path, *, images_per_group: int = 4, shape: tuple[int, int] = (512, 512),
                         seed: int = 0, overwrite: bool = False) -> dict[str, Path]:
    """Write ``<group>/nuclei_NNN.tif``, ``<group>/nuclei_NNN_labels.tif`` and ``ellipses.csv`` under ``root``."""
    root = Path(root)
    contents: dict[Path, bytes] = {}
    tables = []
    for g, group in enumerate(GROUP_SHAPES):
        for i in range(images_per_group):
            sample = generate_nuclei_image(group, shape, seed=seed * 1000 + g * 100 + i)
            stem = f"nuclei_{i:03d}"
            contents[root / group / f"{stem}.tif"] = encode_image(sample.image, "tiff")
            contents[root / group / f"{stem}_labels.tif"] = encode_image(sample.labels.astype(np.uint16), "tiff")
            tables.append(sample.ellipses.assign(image=f"{group}/{stem}.tif"))
    contents[root / "ellipses.csv"] = pd.concat(tables).to_csv(index=False, float_format="%.6g").encode()
    write_files_safely(contents, overwrite=overwrite)
    return {str(path.relative_to(root)): path for path in contents}
