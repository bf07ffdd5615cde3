"""Class-folder data for the classifier: a stratified split that keeps identical images together, and the seeded
augmentation (torchvision.transforms.v2) every model of a run sees identically."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from cellops.config import FromMapping

SPLITS = ("train", "val", "test")


def stratified_split(labels: Sequence[int], groups: Sequence[str], *, val_fraction: float, test_fraction: float,
                     seed: int) -> np.ndarray:
    """The split ("train", "val" or "test") of every image: per class, the same fractions in each split.

    ``groups`` (e.g. the content hash of each file) keep images that are the same picture in one split, so no
    test image is also a training image. Each class gets at least one group in val and test when it has three
    or more and the fraction is positive.

    Examples
    --------
    >>> split = stratified_split([0] * 10 + [1] * 10, [str(i) for i in range(20)], val_fraction=0.2,
    ...                          test_fraction=0.2, seed=0)
    >>> [int(np.sum(split[:10] == s)) for s in SPLITS], [int(np.sum(split[10:] == s)) for s in SPLITS]
    ([6, 2, 2], [6, 2, 2])
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must leave images to train on")
    split = np.full(len(labels), "train", dtype=object)
    rng = np.random.default_rng(seed)
    # A group goes with the first label it appears under (validation reports conflicting labels).
    first_label: dict[str, int] = {}
    for group, label in zip(groups.tolist(), labels.tolist()):
        first_label.setdefault(group, label)
    for label in np.unique(labels):
        members = np.array(sorted(g for g, first in first_label.items() if first == label))
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_test = max(1, round(test_fraction * n)) if test_fraction > 0 and n >= 3 else round(test_fraction * n)
        n_val = max(1, round(val_fraction * n)) if val_fraction > 0 and n >= 3 else round(val_fraction * n)
        split[np.isin(groups, members[:n_test])] = "test"
        split[np.isin(groups, members[n_test:n_test + n_val])] = "val"
    return split.astype(str)


@dataclass(frozen=True)
class SplitSettings(FromMapping):
    """Fractions of each class held out for validation and test, and the seed that picks them."""

    val_fraction: float
    test_fraction: float
    seed: int


def test_set_fingerprint(content_hashes: Sequence[str], labels: Sequence[str], splits: Sequence[str],
                         positive_class: str) -> str:
    """One md5 naming a test set: the contents and labels of its files and the class called positive. Scores
    measured on the same fingerprint are comparable, whatever the file names or the order.

    >>> a = test_set_fingerprint(["x", "y"], ["ec", "non"], ["test", "test"], "ec")
    >>> a == test_set_fingerprint(["y", "x"], ["non", "ec"], ["test", "test"], "ec"), a == test_set_fingerprint(
    ...     ["x", "y"], ["ec", "non"], ["test", "train"], "ec")
    (True, False)
    """
    import hashlib

    items = sorted(f"{h}:{label}" for h, label, split in zip(content_hashes, labels, splits) if split == "test")
    return hashlib.md5("\n".join([f"positive:{positive_class}", *items]).encode()).hexdigest()


def index_class_folder(data_dir: str | Path, split: SplitSettings) -> dict:
    """Every image of ``data_dir/<class>/`` with its label (index into ``classes``), content md5 and split: the
    dataset index the pipeline passes between steps and the benchmark rebuilds the test split from.

    Returns ``{"root", "classes", "files", "labels", "md5", "splits"}`` (lists, one entry per file).
    """
    from cellops.data_version import file_md5
    from cellops.io import list_class_folders

    dataset = list_class_folders(data_dir)
    hashes = [file_md5(path) for path in dataset.files]
    splits = stratified_split(dataset.labels, hashes, val_fraction=split.val_fraction,
                              test_fraction=split.test_fraction, seed=split.seed)
    return {"root": str(data_dir), "classes": dataset.classes, "files": [str(p) for p in dataset.files],
            "labels": list(dataset.labels), "md5": hashes, "splits": splits.tolist()}


@dataclass(frozen=True)
class Augmentation(FromMapping):
    """Random changes applied to each training image (all from the YAML config; 0 or false turns one off)."""

    flip: bool  # horizontal and vertical flips
    rotate90: bool  # quarter turns: micrographs have no "up"
    brightness: float  # ColorJitter brightness factor range 1 +- this
    contrast: float
    blur_sigma: float  # Gaussian blur up to this sigma (px), half of the time
    noise_sigma: float  # additive Gaussian noise, 0..1 scale


def photometric_transforms(brightness: float, contrast: float, blur_sigma: float, noise_sigma: float) -> list:
    """Intensity changes every model family shares (image only; boxes and masks pass through), in this order:
    ColorJitter, a random Gaussian blur (half the time), Gaussian noise; zero strengths leave each out."""
    transforms: list = []
    if brightness or contrast:
        transforms.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
    if blur_sigma > 0:
        transforms.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, blur_sigma))], p=0.5))
    if noise_sigma > 0:
        transforms.append(v2.GaussianNoise(sigma=noise_sigma, clip=True))
    return transforms


def build_augmentation(aug: Augmentation) -> v2.Compose:
    """The torchvision.transforms.v2 pipeline of ``aug`` for one float image (C, H, W) in [0, 1]."""
    transforms: list = []
    if aug.flip:
        transforms += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if aug.rotate90:
        transforms.append(v2.RandomApply([v2.RandomRotation((90, 90))], p=0.5))
    transforms += photometric_transforms(aug.brightness, aug.contrast, aug.blur_sigma, aug.noise_sigma)
    transforms.append(v2.Lambda(lambda x: x.clamp(0.0, 1.0)))
    return v2.Compose(transforms)


def augment_batch(images: torch.Tensor, transform: v2.Compose, seed: int) -> torch.Tensor:
    """Each image of the batch transformed on its own, from a random state set by ``seed`` alone (the global
    generator is left as it was), so that every model of a run sees the very same augmented images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in images])


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> Iterator[tuple[int, np.ndarray]]:
    """(batch number, indices) of one shuffled epoch; the order depends on (seed, epoch) only. A last batch of one
    image is dropped (batch normalisation cannot train on it)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for number, start in enumerate(range(0, n, batch_size)):
        batch = order[start:start + batch_size]
        if len(batch) > 1:
            yield number, batch
