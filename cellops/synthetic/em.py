"""Synthetic electron-microscopy volumes of neural tissue with exact mitochondria ground truth.

The volumes imitate the EPFL/Lucchi CA1 hippocampus FIB-SEM data: a grey, granular cytoplasm cut by dark
cell membranes, clusters of synaptic vesicles, dark lysosome-like bodies and tubules whose contrast is
close to that of mitochondria (the distractors a segmenter must learn to reject), and mitochondria drawn
as 3-D capsules in random orientations with a double membrane and cristae. Uneven illumination, a point
spread and noise are applied last. Everything is drawn from one seeded generator, so a call with the same
arguments returns the same bytes on the same library versions, on any CPU: everything is computed in
float64 with elementwise arithmetic (no BLAS products, no float32), so the last-bit differences between
the SIMD and BLAS kernels of different CPUs stay about 1e-16 and cannot move a stored byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from cellops.io import encode_image, write_files_safely

#: Shape of one Lucchi volume (slices, rows, columns).
LUCCHI_SHAPE: tuple[int, int, int] = (165, 768, 1024)

# Grey levels on a 0..1 scale, read off the Lucchi volumes by eye.
_CYTOPLASM = 0.62
_MEMBRANE = 0.30
_MITO_MATRIX = 0.43
_MITO_MEMBRANE = 0.22
_CRISTA = 0.27
_DARK_BODY = 0.36


@dataclass(frozen=True)
class EMVolume:
    """A synthetic EM volume and its mitochondria mask.

    Attributes
    ----------
    image : (Z, Y, X) uint8 array, the EM intensities.
    mask : (Z, Y, X) uint8 array, 255 inside mitochondria and 0 elsewhere (the Lucchi convention).
    n_mitochondria : number of mitochondria drawn.
    """

    image: np.ndarray
    mask: np.ndarray
    n_mitochondria: int

    @property
    def foreground_fraction(self) -> float:
        return float((self.mask > 0).mean())


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cell: int) -> np.ndarray:
    """Low-frequency random field in [-1, 1] with features about `cell` voxels wide."""
    coarse_shape = tuple(max(2, s // cell + 2) for s in shape)
    coarse = rng.uniform(-1.0, 1.0, size=coarse_shape)
    zoom = [s / c for s, c in zip(shape, coarse_shape)]
    field = ndimage.zoom(coarse, zoom, order=3, mode="reflect", grid_mode=True)
    field = field[tuple(slice(0, s) for s in shape)]
    return np.clip(field / max(1e-6, float(np.abs(field).max())), -1.0, 1.0)


def _dot3(points: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Dot product of (..., 3) points with a 3-vector, written out: a BLAS product sums in a kernel-dependent order."""
    return points[..., 0] * vector[0] + points[..., 1] * vector[1] + points[..., 2] * vector[2]


def _norm3(vectors: np.ndarray) -> np.ndarray:
    """Euclidean length of (..., 3) vectors, written out for the same reason as :func:`_dot3`."""
    return np.sqrt(vectors[..., 0] ** 2 + vectors[..., 1] ** 2 + vectors[..., 2] ** 2)


def _capsule_sdf(coords: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance to a capsule (negative inside) and the position along its axis, per point."""
    axis = p1 - p0
    length_sq = float(_dot3(axis, axis))
    rel = coords - p0
    projection = _dot3(rel, axis)
    t = np.clip(projection / max(length_sq, 1e-6), 0.0, 1.0)
    closest = p0 + t[..., None] * axis
    dist = _norm3(coords - closest)
    along = projection / max(np.sqrt(length_sq), 1e-6)
    return dist - radius, along


def _bbox(points: np.ndarray, margin: float, shape: tuple[int, int, int]) -> tuple[slice, slice, slice] | None:
    lo = np.floor(points.min(axis=0) - margin).astype(int)
    hi = np.ceil(points.max(axis=0) + margin).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _grid(box: tuple[slice, slice, slice]) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(s.start, s.stop, dtype=np.float64) for s in box), indexing="ij")
    return np.stack([zz, yy, xx], axis=-1)


def _paint(volume: np.ndarray, box: tuple[slice, slice, slice], value: np.ndarray | float, alpha: np.ndarray) -> None:
    region = volume[box]
    region += alpha * (value - region)


def _segment_distance(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray, samples: int = 16) -> float:
    """Approximate shortest distance between two 3-D segments (sampled; exact enough for spacing)."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    pa = a0 + t * (a1 - a0)
    pb = b0 + t * (b1 - b0)
    return float(np.min(_norm3(pa[:, None, :] - pb[None, :, :])))


def _random_direction(rng: np.random.Generator, z_squash: float) -> np.ndarray:
    v = rng.normal(size=3)
    v[0] *= z_squash  # FIB-SEM mitochondria in CA1 run mostly along the sectioning plane
    return v / _norm3(v)


def generate_em_volume(
    shape: tuple[int, int, int] = (24, 256, 256),
    *,
    seed: int = 0,
    voxel_nm: float = 8.0,
    mitochondria_fraction: float = 0.08,
    noise_sigma: float = 0.045,
    illumination_amplitude: float = 0.18,
) -> EMVolume:
    """Draw one synthetic EM volume with mitochondria ground truth.

    Parameters
    ----------
    shape : (slices, rows, columns) of the volume; ``LUCCHI_SHAPE`` gives the real 165x768x1024.
    seed : seed of the random generator; the same seed gives the same bytes.
    voxel_nm : voxel size in nanometres; structure sizes are drawn in nm, so a smaller voxel gives larger
        structures in pixels (the Lucchi data has 5 nm voxels).
    mitochondria_fraction : target fraction of voxels inside mitochondria (Lucchi: about 0.06).
    noise_sigma : standard deviation of the additive Gaussian noise, on the 0..1 intensity scale.
    illumination_amplitude : relative amplitude of the slow multiplicative illumination field.

    Returns
    -------
    EMVolume with uint8 ``image`` and ``mask`` (0/255) of the requested shape.

    Examples
    --------
    >>> vol = generate_em_volume((4, 64, 64), seed=1)
    >>> vol.image.shape, vol.image.dtype, sorted(np.unique(vol.mask).tolist())
    ((4, 64, 64), dtype('uint8'), [0, 255])
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (slices, rows, columns), got {shape}")
    if not 0.0 < mitochondria_fraction < 0.5:
        raise ValueError(f"mitochondria_fraction must lie in (0, 0.5), got {mitochondria_fraction}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    px = 1.0 / voxel_nm  # pixels per nanometre
    volume = np.full(shape, _CYTOPLASM, dtype=np.float64)
    n_voxels = float(np.prod(shape))

    # Granular cytoplasm: ribosomes and fine texture.
    grain = rng.normal(0.0, 1.0, size=shape)
    grain = ndimage.gaussian_filter(grain, sigma=(0.6, 1.2, 1.2))
    volume += 0.09 * grain / max(1e-6, float(grain.std()))
    volume += 0.05 * _smooth_field(rng, shape, cell=max(4, int(300 * px)))

    # Cell membranes: boundaries of a 3-D Voronoi tessellation (neurites cut at random angles).
    n_cells = max(4, int(n_voxels * (voxel_nm / 1000.0) ** 3 * 30.0))
    seeds = rng.uniform(0, 1, size=(n_cells, 3)) * np.array(shape, dtype=np.float64)
    tree = cKDTree(seeds)
    membrane_width = max(0.9, 9.0 * px)
    ys, xs = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    plane = np.stack([np.zeros(ys.size), ys.ravel(), xs.ravel()], axis=1).astype(np.float64)
    for z in range(shape[0]):
        plane[:, 0] = z
        dist, _ = tree.query(plane, k=2)
        gap = (dist[:, 1] - dist[:, 0]).reshape(shape[1:])
        alpha = np.exp(-((gap / (2.0 * membrane_width)) ** 2))
        volume[z] += alpha * (_MEMBRANE - volume[z])

    # Synaptic vesicles: clusters of small spheres with a dark rim.
    n_clusters = max(1, int(n_voxels * (voxel_nm / 1000.0) ** 3 * 8.0))
    for _ in range(n_clusters):
        centre = rng.uniform(0, 1, 3) * np.array(shape)
        for _ in range(int(rng.integers(15, 60))):
            radius = rng.uniform(18, 25) * px
            c = centre + rng.normal(0, 150 * px, 3) * np.array([0.5, 1.0, 1.0])
            box = _bbox(c[None], radius + 2, shape)
            if box is None:
                continue
            d = _norm3(_grid(box) - c) - radius
            rim = np.exp(-((d / max(0.7, 4 * px)) ** 2))
            _paint(volume, box, _MEMBRANE, 0.8 * rim)

    # Distractors with mitochondria-like darkness but no double membrane and no cristae: lysosome-like
    # dark bodies and dark tubules (smooth ER). A segmenter that thresholds intensity fails on them.
    n_dark = max(1, int(n_voxels * (voxel_nm / 1000.0) ** 3 * 4.0))
    for i in range(n_dark):
        c0 = rng.uniform(0, 1, 3) * np.array(shape)
        tubule = i % 2 == 1
        radius = (rng.uniform(25, 45) if tubule else rng.uniform(60, 160)) * px
        length = (rng.uniform(300, 900) if tubule else rng.uniform(0, 120)) * px
        c1 = c0 + _random_direction(rng, 0.4) * length
        box = _bbox(np.stack([c0, c1]), radius + 2, shape)
        if box is None:
            continue
        sdf, _ = _capsule_sdf(_grid(box), c0, c1, radius)
        inside = 1.0 / (1.0 + np.exp(np.clip(sdf / 0.6, -30, 30)))
        speckle = rng.normal(0.0, 0.05, size=sdf.shape)
        _paint(volume, box, _DARK_BODY + speckle, inside)
        _paint(volume, box, _MITO_MEMBRANE, 0.6 * np.exp(-((sdf + 0.5) / max(0.8, 6 * px)) ** 2))

    # Mitochondria: capsules with a double membrane and cristae, never touching each other.
    mask = np.zeros(shape, dtype=bool)
    placed: list[tuple[np.ndarray, np.ndarray, float]] = []
    target = mitochondria_fraction * n_voxels
    filled, attempts = 0.0, 0
    while filled < target and attempts < 2000:
        attempts += 1
        radius = float(rng.uniform(70, 180)) * px
        length = float(rng.uniform(0, 800)) * px
        p0 = rng.uniform(0, 1, 3) * np.array(shape, dtype=np.float64)
        p1 = p0 + _random_direction(rng, 0.35) * length
        if any(_segment_distance(p0, p1, q0, q1) < radius + r + 40 * px for q0, q1, r in placed):
            continue
        box = _bbox(np.stack([p0, p1]), radius + 3, shape)
        if box is None:
            continue
        placed.append((p0, p1, radius))
        coords = _grid(box)
        sdf, along = _capsule_sdf(coords, p0, p1, radius)
        inside = sdf <= 0.0
        if not inside.any():
            continue
        mask[box] |= inside
        filled = float(mask.sum())

        # Matrix, then outer and inner membranes a few nm apart, then cristae folding in from the inner one.
        soft_inside = 1.0 / (1.0 + np.exp(np.clip(sdf / 0.5, -30, 30)))
        matrix = _MITO_MATRIX + rng.uniform(-0.03, 0.06) + rng.normal(0.0, 0.03, size=sdf.shape)
        _paint(volume, box, matrix, soft_inside)
        mem_w = max(0.6, 7 * px)
        gap = max(1.6, 20 * px)
        outer = np.exp(-((sdf + mem_w) / mem_w) ** 2)
        inner = np.exp(-((sdf + mem_w + gap) / mem_w) ** 2)
        _paint(volume, box, _MITO_MEMBRANE, 0.9 * outer)
        _paint(volume, box, _MITO_MEMBRANE, 0.75 * inner)
        period = float(rng.uniform(60, 110)) * px
        tilt = rng.normal(0, 0.35, 3)
        phase = (along + _dot3(coords, tilt) * 0.3) / period * 2 * np.pi + rng.uniform(0, 2 * np.pi)
        crista_width = float(rng.uniform(0.88, 0.95))
        cristae = np.clip((np.cos(phase) - crista_width) / (1 - crista_width), 0, 1)
        deep = np.clip(-(sdf + mem_w + gap) / max(1.0, 10 * px), 0, 1)
        _paint(volume, box, _CRISTA, rng.uniform(0.5, 0.9) * cristae * deep)

    # Imaging: point spread, uneven illumination, noise.
    volume = ndimage.gaussian_filter(volume, sigma=(0.4, 0.8, 0.8))
    volume *= 1.0 + illumination_amplitude * _smooth_field(rng, shape, cell=max(16, shape[1] // 2))
    volume += rng.normal(0.0, noise_sigma, size=shape)
    image = np.clip(np.rint(volume * 255.0), 0, 255).astype(np.uint8)
    return EMVolume(image=image, mask=(mask.astype(np.uint8) * 255), n_mitochondria=len(placed))


def write_lucchi_dataset(
    root: str | Path,
    shape: tuple[int, int, int] = (24, 256, 256),
    *,
    seed: int = 0,
    voxel_nm: float = 8.0,
    mitochondria_fraction: float = 0.08,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a training and a testing volume in the Lucchi file layout.

    Files written under ``root``: ``training.tif``, ``training_groundtruth.tif``, ``testing.tif``,
    ``testing_groundtruth.tif`` (8-bit stacks, ground truth 0/255). The testing volume is drawn from a
    different seed, so no structure is shared with training. Files already there with other contents (a
    lab's own images) are never overwritten unless ``overwrite`` is set: a ``FileExistsError`` names them.

    Returns
    -------
    Mapping from the four file stems to the paths written.
    """
    root = Path(root)
    contents: dict[Path, bytes] = {}
    for offset, split in enumerate(("training", "testing")):
        vol = generate_em_volume(
            shape, seed=seed * 1000 + offset, voxel_nm=voxel_nm, mitochondria_fraction=mitochondria_fraction
        )
        contents[root / f"{split}.tif"] = encode_image(vol.image, "tiff")
        contents[root / f"{split}_groundtruth.tif"] = encode_image(vol.mask, "tiff")
    write_files_safely(contents, overwrite=overwrite)
    return {path.stem: path for path in contents}
