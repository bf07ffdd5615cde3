"""Steps that load, split and sample the EM mitochondria dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.io import read_tiff_stack
from cellops.lineage import collect_lineage
from cellops.training import augment_patches, augmentation_margin, build_augmentation, sample_patches, split_slices

logger = get_logger(__name__)

LUCCHI_FILES = ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")


@step
def load_em_dataset(
    data_dir: str = "data/em", dvc_file: str = "data.dvc"
) -> tuple[
    Annotated[np.ndarray, "train_image"],
    Annotated[np.ndarray, "train_mask"],
    Annotated[np.ndarray, "test_image"],
    Annotated[np.ndarray, "test_mask"],
    Annotated[dict, "lineage"],
]:
    """Read the four Lucchi-layout TIFF stacks and record the data version and git commit."""
    root = Path(data_dir)
    missing = [name for name in LUCCHI_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root}: missing {', '.join(missing)}; run `make data` for the default dataset or put the Lucchi "
            "files there"
        )
    stacks = [read_tiff_stack(root / name) for name in LUCCHI_FILES]
    lineage = collect_lineage(dvc_file).as_dict()
    logger.info("EM dataset %s: training %s, testing %s; lineage %s", root, stacks[0].shape, stacks[2].shape, lineage)
    log_metadata(metadata={"lineage": lineage, "training_shape": list(stacks[0].shape)})
    return (*stacks, lineage)  # type: ignore[return-value]


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
