"""The EM mitochondria dataset: reading the Lucchi layout, splitting, patch sampling and augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from cellops.intensity import Normalization
from cellops.io import read_image_file, to_unit_range

#: The four files of the EPFL/Lucchi layout, in the order :func:`load_lucchi` returns them.
LUCCHI_FILES = ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")


@dataclass(frozen=True)
class EMDataset:
    """Training and testing stacks (Z, Y, X) with their ground-truth masks (non-zero = mitochondrion).

    Attributes
    ----------
    train_image : np.ndarray
        Training stack (Z, Y, X).
    train_mask : np.ndarray
        Ground truth of the training stack, same shape.
    test_image : np.ndarray
        Testing stack (Z, Y, X).
    test_mask : np.ndarray
        Ground truth of the testing stack, same shape.
    """

    train_image: np.ndarray
    train_mask: np.ndarray
    test_image: np.ndarray
    test_mask: np.ndarray


def load_lucchi(data_dir: str | Path) -> EMDataset:
    """Read the four Lucchi-layout TIFF stacks of ``data_dir``; a missing file is named with what to do.

    Parameters
    ----------
    data_dir : str or Path
        Folder holding the files of :data:`LUCCHI_FILES`.

    Returns
    -------
    EMDataset
        The training and testing stacks with their masks.

    Raises
    ------
    FileNotFoundError
        When one of the four files is missing.
    """
    root = Path(data_dir)
    missing = [name for name in LUCCHI_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root}: missing {', '.join(missing)}; run `make data` for the default dataset or put the Lucchi "
            "files there"
        )
    return EMDataset(*(read_image_file(root / name) for name in LUCCHI_FILES))


@dataclass(frozen=True)
class SliceSplit:
    """Slice indices of one volume assigned to training and validation.

    Attributes
    ----------
    train : list of int
        Slices used for training.
    val : list of int
        Slices used for validation.
    """

    train: list[int]
    val: list[int]


def split_slices(n_slices: int, *, val_fraction: float = 0.2, gap: int = 1) -> SliceSplit:
    """Split a stack into a training block and a validation block at its end.

    Neighbouring EM slices are nearly identical, so a random per-slice split would leak; a contiguous
    block with ``gap`` unused slices between the two parts does not.

    Parameters
    ----------
    n_slices : int
        Number of slices of the stack.
    val_fraction : float, optional
        Fraction of the slices used for validation, in (0, 1); at least one slice.
    gap : int, optional
        Unused slices between the training and the validation block.

    Returns
    -------
    SliceSplit
        The training block at the start and the validation block at the end.

    Examples
    --------
    >>> split_slices(10, val_fraction=0.2, gap=1)
    SliceSplit(train=[0, 1, 2, 3, 4, 5, 6], val=[8, 9])
    """
    n_val = max(1, int(round(n_slices * val_fraction)))
    n_train = n_slices - n_val - gap
    if n_train < 1 or not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"cannot split {n_slices} slices with val_fraction={val_fraction} and gap={gap}: "
            "need at least one training and one validation slice"
        )
    return SliceSplit(train=list(range(n_train)), val=list(range(n_slices - n_val, n_slices)))


def sample_patches(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    n_patches: int,
    patch_size: int,
    foreground_bias: float = 0.5,
    hard_negative_bias: float = 0.0,
    hard_negative_percentile: float = 10.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw square patches from random slices of a (Z, Y, X) stack and its binary mask.

    A fraction ``foreground_bias`` of the patches is centred near a random foreground pixel, a fraction
    ``hard_negative_bias`` near a dark background pixel (darker than the ``hard_negative_percentile``-th
    percentile of the smoothed image: the structures most easily mistaken for mitochondria), the rest lie
    anywhere, so that sparse structures and their look-alikes are seen often enough.

    Parameters
    ----------
    image : np.ndarray
        Stack (Z, Y, X).
    mask : np.ndarray
        Its binary mask, same shape (non-zero = foreground).
    n_patches : int
        Number of patches to draw.
    patch_size : int
        Side of the square patches; at most the smaller side of the slices.
    foreground_bias : float, optional
        Fraction of patches centred near a foreground pixel.
    hard_negative_bias : float, optional
        Fraction of patches centred near a dark background pixel; with ``foreground_bias`` at most 1.
    hard_negative_percentile : float, optional
        Percentile of the smoothed image below which a background pixel counts as dark.
    seed : int, optional
        Seed of the random generator.

    Returns
    -------
    images : np.ndarray
        Patches (n_patches, patch_size, patch_size), dtype of ``image``.
    masks : np.ndarray
        Their masks, same shape, dtype of ``mask``.

    Examples
    --------
    >>> stack = np.zeros((2, 16, 16), np.uint8)
    >>> images, masks = sample_patches(stack, stack, n_patches=3, patch_size=8)
    >>> images.shape, masks.dtype
    ((3, 8, 8), dtype('uint8'))
    """
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"expected image and mask stacks of one shape, got {image.shape} and {mask.shape}")
    n_slices, height, width = image.shape
    if patch_size > min(height, width):
        raise ValueError(f"patch_size {patch_size} is larger than the slices ({height}x{width})")
    if foreground_bias + hard_negative_bias > 1.0:
        raise ValueError("foreground_bias + hard_negative_bias must not exceed 1")
    rng = np.random.default_rng(seed)
    foreground = np.argwhere(mask > 0)
    hard_negatives = np.empty((0, 3), int)
    if hard_negative_bias > 0:
        smooth = ndimage.uniform_filter(image.astype(np.float32), size=(1, 9, 9))
        hard_negatives = np.argwhere((smooth < np.percentile(smooth, hard_negative_percentile)) & (mask == 0))
    images = np.empty((n_patches, patch_size, patch_size), dtype=image.dtype)
    masks = np.empty((n_patches, patch_size, patch_size), dtype=mask.dtype)
    half = patch_size // 2
    for i in range(n_patches):
        draw = rng.random()
        centres = foreground if draw < foreground_bias else (
            hard_negatives if draw < foreground_bias + hard_negative_bias else None)
        if centres is not None and len(centres):
            z, cy, cx = centres[rng.integers(len(centres))]
            y = int(np.clip(cy - half + rng.integers(-half // 2, half // 2 + 1), 0, height - patch_size))
            x = int(np.clip(cx - half + rng.integers(-half // 2, half // 2 + 1), 0, width - patch_size))
        else:
            z = rng.integers(n_slices)
            y = int(rng.integers(0, height - patch_size + 1))
            x = int(rng.integers(0, width - patch_size + 1))
        images[i] = image[z, y : y + patch_size, x : x + patch_size]
        masks[i] = mask[z, y : y + patch_size, x : x + patch_size]
    return images, masks


def augmentation_margin(rotate_degrees: float, scale: tuple[float, float]) -> float:
    """How much larger than the output a patch must be sampled so that rotating and zooming it out never
    brings the outside (zero fill) into the centre crop.

    Parameters
    ----------
    rotate_degrees : float
        Largest rotation of the augmentation, in degrees.
    scale : tuple of float
        Range ``(low, high)`` of the zoom factor.

    Returns
    -------
    float
        Factor by which the sampled patch must exceed the output (at least 1).

    Examples
    --------
    >>> augmentation_margin(0, (1.0, 1.0)), round(augmentation_margin(45, (0.8, 1.25)), 3)
    (1.0, 1.768)
    """
    angle = np.deg2rad(min(abs(rotate_degrees), 45.0))
    return float((np.cos(angle) + np.sin(angle)) / min(1.0, scale[0]))


def build_augmentation(
    output_size: int,
    *,
    flip: bool = True,
    rotate_degrees: float = 180.0,
    scale: tuple[float, float] = (0.8, 1.25),
    brightness: float = 0.2,
    contrast: float = 0.2,
    noise_sigma: float = 0.03,
) -> v2.Compose:
    """Geometric transforms applied to image and mask alike, photometric ones to the image only, then a
    centre crop to ``output_size`` (patches are sampled with :func:`augmentation_margin` to spare).

    torchvision.transforms.v2 dispatches on tv_tensors: a ``Mask`` is resampled with nearest neighbour
    and left alone by colour and noise transforms.

    Parameters
    ----------
    output_size : int
        Side of the centre crop the transform returns.
    flip : bool, optional
        Random horizontal and vertical flips.
    rotate_degrees : float, optional
        Largest random rotation, in degrees (0 for none).
    scale : tuple of float, optional
        Range of the random zoom factor (``(1.0, 1.0)`` for none).
    brightness : float, optional
        Strength of the random brightness change (0 for none).
    contrast : float, optional
        Strength of the random contrast change (0 for none).
    noise_sigma : float, optional
        Standard deviation of added Gaussian noise (0 for none).

    Returns
    -------
    v2.Compose
        The transform, called as ``transform(image, mask)`` on tv_tensors.
    """
    transforms: list[nn.Module] = []
    if flip:
        transforms += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if rotate_degrees or tuple(scale) != (1.0, 1.0):
        transforms.append(v2.RandomAffine(degrees=rotate_degrees, scale=tuple(scale)))
    transforms.append(v2.CenterCrop(output_size))
    if brightness or contrast:
        transforms.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
    if noise_sigma:
        transforms.append(v2.GaussianNoise(sigma=noise_sigma, clip=True))
    return v2.Compose(transforms)


def augment_patches(
    images: np.ndarray, masks: np.ndarray, transform: Callable, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``transform`` to every (image, mask) pair, seeded; float images are taken as normalised already (see
    :func:`training_patches`), integer ones are scaled by their dtype's range.

    Parameters
    ----------
    images : np.ndarray
        Patches (N, Y, X).
    masks : np.ndarray
        Their masks, same shape (non-zero = foreground).
    transform : Callable
        Transform taking and returning an ``(Image, Mask)`` pair, e.g. :func:`build_augmentation`.
    seed : int, optional
        Torch seed set before the first patch.

    Returns
    -------
    images : torch.Tensor
        float16 tensor (N, 1, P, P).
    masks : torch.Tensor
        uint8 tensor (N, 1, P, P) of 0/1.
    """
    torch.manual_seed(seed)
    out_images, out_masks = [], []
    for image, mask in zip(images, masks):
        pixels = image.astype(np.float32) if image.dtype.kind == "f" else to_unit_range(image)
        img = tv_tensors.Image(torch.from_numpy(pixels)[None])
        msk = tv_tensors.Mask(torch.from_numpy((mask > 0).astype(np.uint8))[None])
        img, msk = transform(img, msk)
        out_images.append(img.as_subclass(torch.Tensor).to(torch.float16))
        out_masks.append(msk.as_subclass(torch.Tensor).to(torch.uint8))
    return torch.stack(out_images), torch.stack(out_masks)


def training_patches(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    n_patches: int,
    patch_size: int,
    foreground_bias: float,
    hard_negative_bias: float,
    augmentation: dict,
    seed: int,
    normalization: Normalization,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Seeded, augmented training patches of a (Z, Y, X) stack: the stack normalised as a whole (as
    :func:`cellops.unet.predict.segment` normalises a stack it is given), sampled larger than ``patch_size`` (by
    :func:`augmentation_margin`), transformed, centre-cropped.

    Parameters
    ----------
    image : np.ndarray
        Stack (Z, Y, X).
    mask : np.ndarray
        Its binary mask, same shape.
    n_patches : int
        Number of patches.
    patch_size : int
        Side of the returned patches.
    foreground_bias : float
        Fraction of patches centred near foreground (:func:`sample_patches`).
    hard_negative_bias : float
        Fraction of patches centred near dark background (:func:`sample_patches`).
    augmentation : dict
        Keyword arguments of :func:`build_augmentation`; ``rotate_degrees`` and ``scale`` are required.
    seed : int
        Seed of the sampling and of the transforms.
    normalization : Normalization
        How the stack's intensities are scaled before sampling.

    Returns
    -------
    images : np.ndarray
        float32 images (N, 1, P, P), normalised.
    masks : np.ndarray
        uint8 masks (N, 1, P, P) of 0/1.
    description : str
        The transform's description.
    """
    missing = [key for key in ("rotate_degrees", "scale") if key not in augmentation]
    if missing:  # the sampling margin must use the very values the transform will apply
        raise ValueError(f"augmentation lacks {missing}: give them (0 and [1, 1] for none)")
    margin = augmentation_margin(augmentation["rotate_degrees"], tuple(augmentation["scale"]))
    sampled_size = min(int(np.ceil(patch_size * margin)), *image.shape[1:])
    image = normalization.apply(image)
    images, masks = sample_patches(image, mask, n_patches=n_patches, patch_size=sampled_size,
                                   foreground_bias=foreground_bias, hard_negative_bias=hard_negative_bias, seed=seed)
    transform = build_augmentation(patch_size, **augmentation)
    patch_images, patch_masks = augment_patches(images, masks, transform, seed=seed)
    return patch_images.float().numpy(), patch_masks.numpy(), str(transform)


def correction_patches(
    corrections: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_patches: int,
    patch_size: int,
    foreground_bias: float,
    hard_negative_bias: float,
    augmentation: dict,
    seed: int,
    normalization: Normalization,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, augmented training patches of corrected images (:mod:`cellops.corrections`), sampled as
    :func:`training_patches` samples the training volume, each image normalised on its own as it is served.

    The patches are shared among the images in proportion to their pixels (at least one each); an image smaller
    than a sampled patch is mirrored out to its size.

    Parameters
    ----------
    corrections : sequence of (image, mask)
        2-D images (Y, X) or stacks (Z, Y, X) and their 0/1 masks.
    n_patches : int
        Patches in all.
    patch_size, foreground_bias, hard_negative_bias, augmentation, seed, normalization
        As :func:`training_patches`.

    Returns
    -------
    images : np.ndarray
        float32 (N, 1, P, P), N = ``n_patches`` (or the number of images, when larger).
    masks : np.ndarray
        uint8 (N, 1, P, P).

    Examples
    --------
    >>> from cellops.intensity import Normalization
    >>> image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    >>> aug = {"flip": True, "rotate_degrees": 0.0, "scale": [1.0, 1.0]}
    >>> images, masks = correction_patches([(image, image > 0.5)], n_patches=3, patch_size=32, foreground_bias=0.5,
    ...                                    hard_negative_bias=0.0, augmentation=aug, seed=0,
    ...                                    normalization=Normalization("percentile", 1.0, 99.8))
    >>> images.shape, masks.shape
    ((3, 1, 32, 32), (3, 1, 32, 32))
    """
    if not corrections:
        return (np.zeros((0, 1, patch_size, patch_size), np.float32), np.zeros((0, 1, patch_size, patch_size), np.uint8))
    margin = augmentation_margin(augmentation["rotate_degrees"], tuple(augmentation["scale"]))
    needed = int(np.ceil(patch_size * margin))
    volumes = []
    for image, mask in corrections:
        image = image[None] if image.ndim == 2 else image
        mask = (mask[None] if mask.ndim == 2 else mask) > 0
        pad = [(0, 0)] + [(0, max(0, needed - n)) for n in image.shape[1:]]
        volumes.append((np.pad(image, pad, mode="reflect") if any(p[1] for p in pad) else image,
                        np.pad(mask, pad, mode="reflect").astype(np.uint8)))
    pixels = np.array([v[0].size for v in volumes], float)
    shares = np.maximum(1, np.floor(n_patches * pixels / pixels.sum()).astype(int))
    shares[np.argmax(pixels)] += max(0, n_patches - int(shares.sum()))
    images, masks = [], []
    for i, ((image, mask), n) in enumerate(zip(volumes, shares)):
        patch_images, patch_masks, _ = training_patches(
            image, mask, n_patches=int(n), patch_size=patch_size, foreground_bias=foreground_bias,
            hard_negative_bias=hard_negative_bias, augmentation=augmentation, seed=seed + 1009 * (i + 1),
            normalization=normalization)
        images.append(patch_images)
        masks.append(patch_masks)
    return np.concatenate(images), np.concatenate(masks)
