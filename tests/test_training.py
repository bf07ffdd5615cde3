import numpy as np
import pytest
import torch

from cellops.training import (
    TrainingConfig,
    augment_patches,
    build_augmentation,
    fit,
    sample_patches,
    split_slices,
)
from models.unet import UNet


def test_split_keeps_a_gap_and_no_overlap():
    split = split_slices(20, val_fraction=0.25, gap=2)
    assert split.val == [15, 16, 17, 18, 19]
    assert split.train == list(range(13))
    with pytest.raises(ValueError, match="cannot split 2 slices"):
        split_slices(2, val_fraction=0.5, gap=1)


def test_foreground_bias_oversamples_mitochondria(small_volume):
    args = dict(n_patches=200, patch_size=32, seed=0)
    biased = sample_patches(small_volume.image, small_volume.mask, foreground_bias=1.0, **args)[1]
    uniform = sample_patches(small_volume.image, small_volume.mask, foreground_bias=0.0, **args)[1]
    assert (biased > 0).mean() > 2 * (uniform > 0).mean()


def test_patches_are_seeded(small_volume):
    a = sample_patches(small_volume.image, small_volume.mask, n_patches=10, patch_size=32, seed=4)
    b = sample_patches(small_volume.image, small_volume.mask, n_patches=10, patch_size=32, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_geometric_augmentation_moves_image_and_mask_together(rng):
    # An image equal to its mask must still equal it after flips, rotation and scaling.
    masks = (rng.random((8, 32, 32)) > 0.7).astype(np.uint8) * 255
    transform = build_augmentation(32, brightness=0, contrast=0, noise_sigma=0, scale=(1.0, 1.0), rotate_degrees=0)
    images, out_masks = augment_patches(masks, masks, transform, seed=1)
    assert set(torch.unique(out_masks).tolist()) <= {0, 1}
    assert torch.equal((images > 0.5).to(torch.uint8), out_masks)


def test_rotation_never_brings_zero_fill_into_the_crop(rng):
    from cellops.training import augmentation_margin

    size = 32
    sampled = int(np.ceil(size * augmentation_margin(180, (0.8, 1.25))))
    ones = np.full((20, sampled, sampled), 255, np.uint8)
    transform = build_augmentation(size, rotate_degrees=180, scale=(0.8, 1.25), brightness=0, contrast=0,
                                   noise_sigma=0)
    images, masks = augment_patches(ones, ones, transform, seed=3)
    assert images.shape == (20, 1, size, size)
    assert float(images.min()) > 0.99 and int(masks.min()) == 1


def test_photometric_augmentation_leaves_the_mask_binary(small_volume):
    images, masks = sample_patches(small_volume.image, small_volume.mask, n_patches=6, patch_size=32, seed=0)
    out_images, out_masks = augment_patches(images, masks, build_augmentation(24), seed=0)
    assert out_images.shape == (6, 1, 24, 24) and out_images.dtype == torch.float16
    assert set(torch.unique(out_masks).tolist()) <= {0, 1}
    assert float(out_images.min()) >= 0.0 and float(out_images.max()) <= 1.0


def test_fit_writes_checkpoints_and_reports_each_epoch(small_volume, tmp_path):
    images, masks = sample_patches(small_volume.image, small_volume.mask, n_patches=16, patch_size=32, seed=0)
    patches = augment_patches(images, masks, build_augmentation(32), seed=0)
    seen = []
    config = TrainingConfig(epochs=2, batch_size=8, tile_size=32, learning_rate=1e-2)
    history = fit(UNet(base_channels=4, depth=2), patches, (small_volume.image[:2], small_volume.mask[:2]), config,
                  tmp_path, on_epoch_end=lambda epoch, metrics: seen.append((epoch, sorted(metrics))))
    assert [e for e, _ in seen] == [0, 1]
    assert seen[0][1] == ["train_loss", "val_dice", "val_foreground_iou"]
    assert (tmp_path / "epoch_000.pt").is_file() and (tmp_path / "epoch_001.pt").is_file()
    assert history.best_checkpoint == tmp_path / "best.pt" and history.best_epoch in (0, 1)
    assert all(np.isfinite(history.train_loss))
