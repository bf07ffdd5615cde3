"""Steps that load the EM volumes, split them and sample augmented patches (thin adapters over cellops.unet.data)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.corrections import corrections_in_lineage
from cellops.io import read_image_file
from cellops.lineage import data_dir_for
from cellops.unet.data import correction_patches, load_lucchi, split_slices, training_patches
from cellops.unet.specs import UNetServing

logger = get_logger(__name__)


@step
def load_em_dataset(
    lineage: dict,
    data_dir: str,
) -> tuple[
    Annotated[np.ndarray, "train_image"],
    Annotated[np.ndarray, "train_mask"],
    Annotated[np.ndarray, "test_image"],
    Annotated[np.ndarray, "test_mask"],
]:
    """Read the four Lucchi-layout TIFF stacks (of the lineage's ``data_rev`` when it names one)."""
    data_dir = str(data_dir_for(data_dir, lineage))
    data = load_lucchi(data_dir)
    logger.info("EM dataset %s: training %s, testing %s", data_dir, data.train_image.shape, data.test_image.shape)
    log_metadata(metadata={"training_shape": list(data.train_image.shape), "testing_shape": list(data.test_image.shape)})
    # A tuple literal: ZenML reads the return statement to know the step has four outputs.
    return data.train_image, data.train_mask, data.test_image, data.test_mask


@step
def split_em_volume(
    image: np.ndarray, mask: np.ndarray, val_fraction: float, gap: int
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
    n_patches: int,
    patch_size: int,
    foreground_bias: float,
    hard_negative_bias: float,
    augmentation: dict,
    seed: int,
    inference: dict,
    lineage: dict,
    corrections_share: float,
) -> tuple[Annotated[np.ndarray, "patch_images"], Annotated[np.ndarray, "patch_masks"]]:
    """Seeded patches of the training block, normalised as the model will be served (``inference``), with
    torchvision v2 augmentation applied to image and mask; with corrected images in the dataset (the lineage's
    corrections), ``corrections_share`` of the patches come from them and the rest from the training block, so a
    model fine-tuned on corrections does not forget the original data."""
    if not 0.0 <= corrections_share < 1.0:
        raise ValueError(f"corrections_share must be in [0, 1), got {corrections_share}")
    normalization = UNetServing.from_dict(inference).normalization
    corrections = [(read_image_file(c.image), c.read_labels()) for c in corrections_in_lineage(lineage, "unet")
                   if c.split == "train"]
    n_corrected = int(round(n_patches * corrections_share)) if corrections else 0
    patch_images, patch_masks, transform = training_patches(
        image, mask, n_patches=n_patches - n_corrected, patch_size=patch_size, foreground_bias=foreground_bias,
        hard_negative_bias=hard_negative_bias, augmentation=augmentation, seed=seed, normalization=normalization,
    )
    if corrections:
        corrected_images, corrected_masks = correction_patches(
            corrections, n_patches=n_corrected, patch_size=patch_size, foreground_bias=foreground_bias,
            hard_negative_bias=hard_negative_bias, augmentation=augmentation, seed=seed, normalization=normalization)
        patch_images = np.concatenate([patch_images, corrected_images])
        patch_masks = np.concatenate([patch_masks, corrected_masks])
        logger.info("%d of %d patches from %d corrected images", len(corrected_images), len(patch_images),
                    len(corrections))
    log_metadata(metadata={"n_patches": len(patch_images), "patch_size": patch_size, "augmentation": transform,
                           "normalization": normalization.describe(), "corrected_images": len(corrections),
                           "corrected_patches": len(patch_images) - (n_patches - n_corrected)})
    return patch_images, patch_masks
