import numpy as np
import pytest
import torch

from cellops.checkpoints import LAST_CHECKPOINT
from cellops.intensity import Normalization
from cellops.unet.data import augment_patches, augmentation_margin, build_augmentation, sample_patches, split_slices
from cellops.unet.specs import UNetServing
from cellops.unet.train import build_model, fit
from cellops.unet.specs import Architecture, UNetTraining

TINY = Architecture(in_channels=1, out_channels=1, base_channels=4, depth=2, dropout=0.0)
SETTINGS = UNetServing(tile_size=32, tile_overlap=0.25, batch_size=8, threshold=0.5)


def _config(**changes) -> UNetTraining:
    values = dict(epochs=2, batch_size=8, learning_rate=1e-2, weight_decay=1e-4, dice_weight=1.0, warmup_fraction=0.1,
                  seed=0, device="cpu", threads=0)
    return UNetTraining(**{**values, **changes})


def _patches(volume, n=16):
    images, masks = sample_patches(volume.image, volume.mask, n_patches=n, patch_size=32, seed=0)
    return augment_patches(images, masks, build_augmentation(32), seed=0)


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


def test_fit_reports_each_epoch_and_returns_the_best_weights(small_volume, tmp_path):
    seen, snapshots = [], {}
    model = build_model(TINY, seed=0)

    def record(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        assert len(list(tmp_path.glob(f"*/{LAST_CHECKPOINT}"))) == 1  # saved before it is reported

    history = fit(model, _patches(small_volume), (small_volume.image[:2], small_volume.mask[:2]), _config(epochs=3),
                  SETTINGS, tmp_path, on_epoch_end=record)
    assert [e for e, _ in seen] == [0, 1, 2]
    assert seen[0][1] == ["epoch_seconds", "train_loss", "val_dice", "val_foreground_iou"]
    assert not any(tmp_path.iterdir())  # finished: the checkpoint is removed
    assert history.best_epoch == int(np.argmax(history.val_foreground_iou))
    assert all(np.isfinite(history.train_loss)) and len(history.val_dice) == len(history.epoch_seconds) == 3
    best = snapshots[history.best_epoch]
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())  # the best epoch's weights


def test_the_seed_alone_fixes_the_initial_weights():
    a = build_model(TINY, seed=3)
    torch.rand(1000)  # e.g. augmentation drawing from the global generator in between
    b = build_model(TINY, seed=3)
    c = build_model(TINY, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_an_interrupted_fit_resumes_to_the_weights_of_an_uninterrupted_one(small_volume, tmp_path):
    patches, val = _patches(small_volume), (small_volume.image[:2], small_volume.mask[:2])
    whole = build_model(TINY, seed=0)
    fit(whole, patches, val, _config(epochs=3), SETTINGS, tmp_path / "whole")

    class Interrupted(Exception):
        pass

    reported = []

    def stop_after_first(epoch, metrics):
        reported.append((epoch, metrics))
        if epoch == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(build_model(TINY, seed=0), patches, val, _config(epochs=3), SETTINGS, tmp_path / "resumed",
            on_epoch_end=stop_after_first, checkpoint_key={"data_version": "v1"})
    # Other settings (or another checkpoint_key) start afresh, in a folder of their own.
    other = fit(build_model(TINY, seed=0), patches, val, _config(epochs=1), SETTINGS, tmp_path / "resumed",
                checkpoint_key={"data_version": "v1"})
    assert other.resumed_from_epoch is None and len(list((tmp_path / "resumed").iterdir())) == 1
    resumed = build_model(TINY, seed=0)
    again = []
    history = fit(resumed, patches, val, _config(epochs=3), SETTINGS, tmp_path / "resumed",
                  on_epoch_end=lambda epoch, metrics: again.append((epoch, metrics)),
                  checkpoint_key={"data_version": "v1"})
    assert history.resumed_from_epoch == 0 and len(history.train_loss) == 3
    # The epoch done before the interruption is reported again, as it was, so the new run has the whole curve.
    assert [e for e, _ in again] == [0, 1, 2] and again[0] == reported[0]
    assert all(torch.equal(x, y) for x, y in zip(whole.state_dict().values(), resumed.state_dict().values()))
    assert not any((tmp_path / "resumed").iterdir())
    # resume=False starts afresh whatever is saved.
    with pytest.raises(Interrupted):
        fit(build_model(TINY, seed=0), patches, val, _config(epochs=1), SETTINGS, tmp_path / "resumed",
            on_epoch_end=stop_after_first)
    fresh = fit(build_model(TINY, seed=0), patches, val, _config(epochs=1), SETTINGS, tmp_path / "resumed",
                resume=False)
    assert fresh.resumed_from_epoch is None


def test_training_settings_name_missing_and_unknown_keys():
    with pytest.raises(ValueError, match=r"missing keys \['threads'\]"):
        UNetTraining.from_dict({k: v for k, v in vars(_config()).items() if k != "threads"})
    with pytest.raises(ValueError, match=r"unknown keys \['tile_size'\]"):
        UNetTraining.from_dict({**vars(_config()), "tile_size": 128})


def test_patch_sampling_needs_the_augmentation_it_leaves_room_for(small_volume):
    from cellops.unet.data import training_patches

    with pytest.raises(ValueError, match=r"augmentation lacks \['rotate_degrees', 'scale'\]"):
        training_patches(small_volume.image, small_volume.mask, n_patches=2, patch_size=32, foreground_bias=0.5,
                         hard_negative_bias=0.0, augmentation={"flip": True}, seed=0, normalization=Normalization())
