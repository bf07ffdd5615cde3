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
    levels_per_unit: float = 40000.0,
    offset_levels: float = 0.0,
    dim_fraction: float = 0.0,
    dim_gain: float = 0.2,
    blotchy_background: float = 0.0,
    vignetting: float = 0.0,
    out_of_focus_fraction: float = 0.0,
    confluence: float = 0.0,
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
    levels_per_unit, offset_levels : 16-bit storage: grey levels per unit of brightness and the camera offset
        (300 and 2000: the signal spans a few hundred grey levels on a high offset, a low dynamic range).
    dim_fraction, dim_gain : share of nuclei whose brightness is multiplied by ``dim_gain`` (a dim population
        mixed with the bright one, as in a stain taken up unevenly or cells in different cycle phases).
    blotchy_background : amplitude of a blotchy additive background (haze of out-of-focus light and
        autofluorescence on scales of one to several nuclei), on the brightness scale of the nuclei.
    vignetting : fractional loss of light in the corners (radial fall-off, not a linear gradient).
    out_of_focus_fraction : nuclei from another focal plane, as a share of ``n_nuclei``: dim (0.25-0.45 of the
        brightness) and blurred (sigma 0.15 x diameter), placed against in-focus ones. They are nuclei of the
        sample and visible, so they COUNT as ground truth (labelled like the others, after the in-focus ones;
        their ``kind`` is ``"out of focus"``): a count or a per-nucleus measurement that dropped them would be
        biased, and they are what a segmenter must not merge into its sharp neighbours.
    confluence : share of the field covered by confluent clusters: nuclei are placed on a jittered hexagonal
        lattice at one nucleus diameter (touching on several sides, as in a confluent HaCaT field) inside
        smooth random cluster regions; ``n_nuclei`` caps the count.

    Every option off (the default) leaves the image byte-identical to earlier releases: the optional draws
    come from their own random stream.

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
    # The options added for the harder sweep draw from a third stream, and only when they are used.
    extra = np.random.default_rng([seed, 2])
    tagged = bool(mitotic_fraction or flat_fraction or out_of_focus_fraction)
    ar_median, ar_spread, area_median = GROUP_SHAPES[group]
    area_median *= diameter_scale**2
    height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    signal = np.zeros(shape, np.float64)
    labels = np.zeros(shape, np.int32)
    rows: list[dict] = []
    centres: list[tuple[float, float, float]] = []
    lattice = _confluent_lattice(shape, 2 * np.sqrt(area_median / np.pi), confluence, extra) if confluence else None
    for attempt in range(n_nuclei * 20):
        if len(rows) == n_nuclei or (lattice is not None and attempt >= len(lattice)):
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
        if lattice is not None:
            # A confluent cluster: this lattice site, the nucleus shrunk until it fits between its neighbours.
            cy, cx = lattice[attempt]
        elif centres and rng.random() < touching_fraction:
            # Against a neighbour: centre distance about the sum of the two radii in that direction.
            cy0, cx0, r0 = centres[int(rng.integers(len(centres)))]
            direction = rng.uniform(0, 2 * np.pi)
            dist = (r0 + (minor + major) / 2) * rng.uniform(0.85, 1.0)
            cy, cx = cy0 + dist * np.sin(direction), cx0 + dist * np.cos(direction)
        else:
            cy, cx = rng.uniform(major, height - major), rng.uniform(major, width - major)
        if not (minor <= cy < height - minor and minor <= cx < width - minor):
            continue
        u, v = _along_axes(yy, xx, cy, cx, angle)
        radius2 = _radius2(u, v, major, minor)
        inside = radius2 <= 1.0
        # At most a sliver of overlap with nuclei already drawn (touching is fine, stacking is not).
        overlap = float((inside & (labels > 0)).sum()) / max(1, int(inside.sum()))
        if lattice is not None:
            for _shrink in range(4):
                if overlap <= 0.08:
                    break
                major, minor = 0.9 * major, 0.9 * minor
                radius2 = _radius2(u, v, major, minor)
                inside = radius2 <= 1.0
                overlap = float((inside & (labels > 0)).sum()) / max(1, int(inside.sum()))
        if overlap > 0.08 or inside.sum() < max(6.0, 30 * diameter_scale**2):
            continue
        label = len(rows) + 1
        labels[inside] = label
        level = rng.uniform(*brightness) * gain
        if dim_fraction and extra.random() < dim_fraction:
            level *= dim_gain
        chromatin = ndimage.gaussian_filter(rng.normal(size=shape), 1.5 * max(diameter_scale, 0.4))
        texture = 1.0 + 0.25 * chromatin / max(1e-6, float(chromatin.std()))
        edge = np.power(np.clip(1.0 - radius2, 0, 1), 0.3)  # brighter core, soft rim
        signal = np.where(inside, np.maximum(signal, level * texture * edge), signal)
        centres.append((cy, cx, (major + minor) / 2))
        rows.append({"label": label, "centroid_y": cy, "centroid_x": cx, "major_axis": 2 * major,
                     "minor_axis": 2 * minor, "angle_rad": angle, "aspect_ratio": aspect, "group": group,
                     **({"kind": kind} if tagged else {})})

    blurred_signal = None
    if out_of_focus_fraction:
        labels, blurred_signal = _out_of_focus_nuclei(labels, rows, centres, int(round(out_of_focus_fraction * n_nuclei)),
                                                      area_median, ar_median, brightness, group, extra)

    # Out-of-focus: a smooth field mixes a sharp and a blurred rendering.
    focus = ndimage.gaussian_filter(rng.random(shape), 60)
    focus = (focus - focus.min()) / max(1e-6, float(np.ptp(focus)))
    # The optics blur a fixed distance in micrometres: fewer pixels when nuclei are smaller (lower magnification).
    optics = float(np.clip(diameter_scale, 0.5, 1.0))
    image = ((1 - focus) * ndimage.gaussian_filter(signal, 1.0 * optics)
             + focus * ndimage.gaussian_filter(signal, defocus_sigma * optics))
    illumination = 1.0 + illumination_gradient * ((xx / width - 0.5) * rng.uniform(-1, 1)
                                                  + (yy / height - 0.5) * rng.uniform(-1, 1))
    if blurred_signal is not None:
        image = np.maximum(image, blurred_signal)
    background = 0.06
    if blotchy_background:
        background = 0.06 + blotchy_background * _blotches(shape, 2 * np.sqrt(area_median / np.pi), extra)
    if vignetting:
        radius2 = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2) / ((height / 2) ** 2 + (width / 2) ** 2)
        illumination = illumination * (1.0 - vignetting * radius2)
    image = (background + image) * illumination
    image = rng.poisson(image * photons) / photons + rng.normal(0, noise_sigma, shape)
    if bit_depth == 8:
        stored = np.clip(np.rint(image * 40000 * 255 / 65535), 0, 255).astype(np.uint8)
    elif levels_per_unit != 40000.0 or offset_levels:
        stored = np.clip(np.rint(offset_levels + image * levels_per_unit), 0, 65535).astype(np.uint16)
    else:
        stored = np.clip(np.rint(image * 40000), 0, 65535).astype(np.uint16)
    table = pd.DataFrame(rows)
    visible = set(np.unique(labels).tolist()) - {0}
    table["visible"] = table["label"].isin(visible)
    return NucleiImage(image=stored, labels=labels, ellipses=table)


def _along_axes(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates along an ellipse's major (``u``) and minor (``v``) axis, from its centre."""
    dy, dx = yy - cy, xx - cx
    return dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)


def _radius2(u: np.ndarray, v: np.ndarray, major: float, minor: float) -> np.ndarray:
    """Squared elliptical radius: 1 on the outline of the ellipse with semi-axes ``major`` and ``minor``."""
    return (u / major) ** 2 + (v / minor) ** 2


def _confluent_lattice(shape: tuple[int, int], diameter: float, coverage: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Centres (row, col) of a jittered hexagonal lattice at one ``diameter`` inside smooth random cluster regions
    covering about ``coverage`` of the field, in random order."""
    height, width = shape
    rows_, cols_ = np.mgrid[0:height:diameter * np.sqrt(3) / 2, 0:width:diameter]
    cols_ = cols_ + (np.arange(rows_.shape[0])[:, None] % 2) * diameter / 2
    points = np.stack([rows_.ravel(), cols_.ravel()], axis=1) + rng.normal(0, 0.1 * diameter, (rows_.size, 2))
    field = ndimage.gaussian_filter(rng.random(shape), 3 * diameter)
    cut = np.quantile(field, 1 - coverage)
    inner = ((points[:, 0] >= 0) & (points[:, 0] < height - 1) & (points[:, 1] >= 0) & (points[:, 1] < width - 1))
    points = points[inner]
    points = points[field[points[:, 0].astype(int), points[:, 1].astype(int)] >= cut]
    return points[rng.permutation(len(points))]


def _blotches(shape: tuple[int, int], diameter: float, rng: np.random.Generator) -> np.ndarray:
    """A 0..1 blotchy field: smooth noise on scales of one, three and eight nucleus diameters."""
    field = sum(weight * ndimage.gaussian_filter(rng.normal(size=shape), scale * diameter, mode="reflect")
                for weight, scale in ((0.3, 1.0), (0.4, 3.0), (0.3, 8.0)))
    field = field - np.quantile(field, 0.01)
    return np.clip(field / max(1e-9, float(np.quantile(field, 0.99))), 0, 1)


def _out_of_focus_nuclei(labels: np.ndarray, rows: list[dict], centres: list[tuple[float, float, float]],
                         count: int, area_median: float, ar_median: float, brightness: tuple[float, float],
                         group: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add ``count`` dim, blurred nuclei of another focal plane against in-focus ones; their labels (ground truth,
    where no sharp nucleus covers them) and their blurred signal."""
    height, width = labels.shape
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    signal = np.zeros(labels.shape, np.float64)
    labels = labels.copy()
    added = 0
    for _ in range(count * 20):
        if added == count or not centres:
            break
        aspect = float(np.clip(ar_median * np.exp(rng.normal(0, 0.1)), 1.0, 4.0))
        area = float(area_median * np.exp(rng.normal(0, 0.2)))
        minor = np.sqrt(area / (np.pi * aspect))
        major = minor * aspect
        angle = float(rng.uniform(0, np.pi))
        cy0, cx0, r0 = centres[int(rng.integers(len(centres)))]
        direction = rng.uniform(0, 2 * np.pi)
        dist = (r0 + (minor + major) / 2) * rng.uniform(0.9, 1.05)
        cy, cx = cy0 + dist * np.sin(direction), cx0 + dist * np.cos(direction)
        if not (major <= cy < height - major and major <= cx < width - major):
            continue
        u, v = _along_axes(yy, xx, cy, cx, angle)
        radius2 = _radius2(u, v, major, minor)
        inside = radius2 <= 1.0
        if float((inside & (labels > 0)).sum()) / max(1, int(inside.sum())) > 0.08:
            continue
        label = len(rows) + 1
        labels[inside & (labels == 0)] = label
        level = rng.uniform(*brightness) * rng.uniform(0.25, 0.45)
        signal[inside] = level * np.power(np.clip(1.0 - radius2[inside], 0, 1), 0.3)
        centres.append((cy, cx, (major + minor) / 2))
        rows.append({"label": label, "centroid_y": cy, "centroid_x": cx, "major_axis": 2 * major,
                     "minor_axis": 2 * minor, "angle_rad": angle, "aspect_ratio": aspect, "group": group,
                     "kind": "out of focus"})
        added += 1
    diameter = 2 * np.sqrt(area_median / np.pi)
    return labels, ndimage.gaussian_filter(signal, 0.15 * diameter)


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
