"""Steps that load, split and sample the EM mitochondria dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.io import read_tiff_stack
from cellops.training import augment_patches, augmentation_margin, build_augmentation, sample_patches, split_slices

logger = get_logger(__name__)

LUCCHI_FILES = ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")


@step
def load_em_dataset(
    data_dir: str = "data/em",
) -> tuple[
    Annotated[np.ndarray, "train_image"],
    Annotated[np.ndarray, "train_mask"],
    Annotated[np.ndarray, "test_image"],
    Annotated[np.ndarray, "test_mask"],
]:
    """Read the four Lucchi-layout TIFF stacks."""
    root = Path(data_dir)
    missing = [name for name in LUCCHI_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root}: missing {', '.join(missing)}; run `make data` for the default dataset or put the Lucchi "
            "files there"
        )
    train_image, train_mask, test_image, test_mask = (read_tiff_stack(root / name) for name in LUCCHI_FILES)
    logger.info("EM dataset %s: training %s, testing %s", root, train_image.shape, test_image.shape)
    log_metadata(metadata={"training_shape": list(train_image.shape), "testing_shape": list(test_image.shape)})
    # A tuple literal: ZenML reads the return statement to know the step has four outputs.
    return train_image, train_mask, test_image, test_mask


@step
def split_em_volume(
    image: np.ndarray, mask: np.ndarray, val_fraction: float = 0.2, gap: int = 1
) -> tuple[
    Annotated[np.ndarray, "fit_image"],
    Annotated[np.ndarray, "fit_mask"],
    Annotated[np.ndarray, "val_image"],
    Annotated[np.ndarray, "val_mask"],
]:
    """Training block and validation block of the training volume (the testing volume stays apart)."""
    split = split_slices(image.shape[0], val_fraction=val_fraction, gap=gap)
    log_metadata(metadata={"train_slices": split.train, "val_slices": split.val})
    return image[split.train], mask[split.train], image[split.val], mask[split.val]


@step
def sample_augmented_patches(
    image: np.ndarray,
    mask: np.ndarray,
    n_patches: int = 2048,
    patch_size: int = 128,
    foreground_bias: float = 0.5,
    hard_negative_bias: float = 0.0,
    augmentation: dict | None = None,
    seed: int = 0,
) -> tuple[Annotated[np.ndarray, "patch_images"], Annotated[np.ndarray, "patch_masks"]]:
    """Seeded patches of the training block with torchvision v2 augmentation applied to image and mask."""
    settings = augmentation or {}
    margin = augmentation_margin(settings.get("rotate_degrees", 180.0), tuple(settings.get("scale", (0.8, 1.25))))
    sampled_size = min(int(np.ceil(patch_size * margin)), *image.shape[1:])
    images, masks = sample_patches(
        image, mask, n_patches=n_patches, patch_size=sampled_size, foreground_bias=foreground_bias,
        hard_negative_bias=hard_negative_bias, seed=seed,
    )
    transform = build_augmentation(patch_size, **settings)
    patch_images, patch_masks = augment_patches(images, masks, transform, seed=seed)
    log_metadata(metadata={"n_patches": n_patches, "patch_size": patch_size, "augmentation": str(transform)})
    # float32: ZenML computes artifact statistics, which overflow in float16.
    return patch_images.float().numpy(), patch_masks.numpy()
