"""A source task for in-project pretraining, built from the project's own datasets (no download).

When no ImageNet weights are on the machine, a backbone is pretrained on a larger, related task: telling apart
patches of the other microscopy datasets the project holds (EM slices, phase-contrast colonies, nuclear stains
of three culture groups that differ in nuclear shape, calcium-imaging frames). Patches are scaled by their own
1st-99th percentiles, so the task is about texture and shape, not about each microscope's intensity range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellops.config import FromMapping
from cellops.io import image_geometry, read_image_file


@dataclass(frozen=True)
class SourceTask(FromMapping):
    """Where the source patches come from and how many (all from the YAML config)."""

    data_root: str
    crop: int  # patch side cut from the source images, resized to the classifier's input size
    patches_per_class: int
    val_fraction: float  # held out to pick the best pretraining epoch
    seed: int

#: Source class -> files under the data root (glob patterns) it draws patches from.
SOURCE_CLASSES: dict[str, tuple[str, ...]] = {
    "em": ("em/training.tif",),
    "colonies": ("colonies/images/*.png",),
    "nuclei_control": ("nuclei/Control/nuclei_[0-9][0-9][0-9].tif",),
    "nuclei_coating": ("nuclei/Coating/nuclei_[0-9][0-9][0-9].tif",),
    "nuclei_film": ("nuclei/Film/nuclei_[0-9][0-9][0-9].tif",),
    "calcium": ("calcium/*/calcium_[0-9][0-9][0-9].tif",),
}


def _planes(path: Path) -> np.ndarray:
    """The 2-D planes of an image file as (planes, H, W)."""
    image = read_image_file(path)
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image_geometry(image, source=str(path))[2] > 1:
        image = image[..., :3].mean(axis=-1)  # a colour picture is one plane, not rows of pixels
    return image.reshape(-1, *image.shape[-2:])


def source_task_patches(data_root: str | Path, *, size: int, crop: int, patches_per_class: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Random ``crop`` x ``crop`` patches of each source class, resized to ``size`` and scaled to [0, 1].

    Returns images float32 (N, 1, size, size), labels int64 (N,) and the class names. Raises
    ``FileNotFoundError`` naming the class whose files are missing.
    """
    root = Path(data_root)
    rng = np.random.default_rng(seed)
    images, labels, names = [], [], []
    for index, (name, patterns) in enumerate(SOURCE_CLASSES.items()):
        files = sorted(p for pattern in patterns for p in root.glob(pattern))
        if not files:
            raise FileNotFoundError(f"{root}: no files for source class {name!r} ({', '.join(patterns)})")
        stacks = [_planes(f) for f in files]
        names.append(name)
        for _ in range(patches_per_class):
            stack = stacks[rng.integers(len(stacks))]
            plane = stack[rng.integers(len(stack))].astype(np.float64)
            top = rng.integers(0, plane.shape[0] - crop + 1)
            left = rng.integers(0, plane.shape[1] - crop + 1)
            patch = plane[top:top + crop, left:left + crop]
            if crop != size:
                patch = ndimage.zoom(patch, size / crop, order=1)[:size, :size]
            low, high = np.percentile(patch, [1, 99])
            images.append(np.clip((patch - low) / max(high - low, 1e-9), 0, 1).astype(np.float32))
            labels.append(index)
    return np.stack(images)[:, None], np.array(labels, dtype=np.int64), names
