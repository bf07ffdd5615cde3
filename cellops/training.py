"""Data splitting, patch sampling, augmentation and the training loop for segmentation models.

Shaped after torchvision's ``references/detection/engine.py``: short, explicit functions
(:func:`train_one_epoch`, :func:`fit`) that anyone can step through, no framework hiding the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm

from cellops.inference import prepare_for_inference, sliding_window_predict
from cellops.io import to_unit_range
from cellops.metrics import binary_segmentation_scores


@dataclass(frozen=True)
class SliceSplit:
    """Slice indices of one volume assigned to training and validation."""

    train: list[int]
    val: list[int]


def split_slices(n_slices: int, *, val_fraction: float = 0.2, gap: int = 1) -> SliceSplit:
    """Split a stack into a training block and a validation block at its end.

    Neighbouring EM slices are nearly identical, so a random per-slice split would leak; a contiguous
    block with ``gap`` unused slices between the two parts does not.

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

    Returns
    -------
    (images, masks): arrays of shape (n_patches, patch_size, patch_size), dtypes of the inputs.
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
    """Apply ``transform`` to every (image, mask) pair, seeded; images are scaled to [0, 1] first.

    Returns
    -------
    (images, masks): float16 tensor (N, 1, P, P) and uint8 tensor (N, 1, P, P) of 0/1.
    """
    torch.manual_seed(seed)
    out_images, out_masks = [], []
    for image, mask in zip(images, masks):
        img = tv_tensors.Image(torch.from_numpy(to_unit_range(image))[None])
        msk = tv_tensors.Mask(torch.from_numpy((mask > 0).astype(np.uint8))[None])
        img, msk = transform(img, msk)
        out_images.append(img.as_subclass(torch.Tensor).to(torch.float16))
        out_masks.append(msk.as_subclass(torch.Tensor).to(torch.uint8))
    return torch.stack(out_images), torch.stack(out_masks)


class DiceBCELoss(nn.Module):
    """Binary cross-entropy plus soft Dice: BCE for calibrated pixels, Dice against class imbalance."""

    def __init__(self, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
        prob = torch.sigmoid(logits)
        inter = (prob * target).sum(dim=(1, 2, 3))
        union = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
        dice = 1 - (2 * inter + self.smooth) / (union + self.smooth)
        return bce + self.dice_weight * dice.mean()


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    data_loader: DataLoader,
    device: torch.device,
    epoch: int,
) -> float:
    """One pass over ``data_loader``; returns the mean training loss. Stops on a non-finite loss."""
    model.train()
    total, count = 0.0, 0
    progress = tqdm(data_loader, desc=f"epoch {epoch}", leave=False, mininterval=5.0)
    for images, masks in progress:
        images = images.to(device, torch.float32)
        masks = masks.to(device, torch.float32)
        loss = loss_fn(model(images), masks)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, stopping training")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(images)
        count += len(images)
        progress.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings (every field comes from the YAML config)."""

    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    warmup_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    tile_size: int = 128
    tile_overlap: float = 0.25
    inference_batch_size: int = 8


@dataclass
class TrainingHistory:
    """Per-epoch figures and where the best checkpoint went."""

    train_loss: list[float] = field(default_factory=list)
    val_foreground_iou: list[float] = field(default_factory=list)
    val_dice: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_checkpoint: Path | None = None


def fit(
    model: nn.Module,
    patches: tuple[torch.Tensor, torch.Tensor],
    val_volume: tuple[np.ndarray, np.ndarray],
    config: TrainingConfig,
    checkpoint_dir: Path,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainingHistory:
    """Train on augmented patches, validate on whole validation slices each epoch, keep the best weights.

    A checkpoint is written after every epoch (``epoch_NNN.pt``) and the best by validation foreground
    IoU is copied to ``best.pt``; on return ``model`` holds the best weights.
    """
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    model.to(device)
    loader = DataLoader(
        TensorDataset(*patches),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(patches[0]) > config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
    )
    loss_fn = DiceBCELoss(dice_weight=config.dice_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = max(1, config.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=total_steps, pct_start=config.warmup_fraction
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    val_image, val_mask = val_volume
    history = TrainingHistory()
    best_iou = -1.0
    for epoch in range(config.epochs):
        loss = train_one_epoch(model, loss_fn, optimizer, scheduler, loader, device, epoch)
        probabilities = sliding_window_predict(
            prepare_for_inference(model),
            to_unit_range(val_image),
            tile_size=config.tile_size,
            overlap=config.tile_overlap,
            batch_size=config.inference_batch_size,
            device=device,
        )
        scores = binary_segmentation_scores(probabilities > 0.5, val_mask > 0)
        history.train_loss.append(loss)
        history.val_foreground_iou.append(scores.foreground_iou)
        history.val_dice.append(scores.dice)
        checkpoint = checkpoint_dir / f"epoch_{epoch:03d}.pt"
        torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
        if scores.foreground_iou > best_iou:
            best_iou = scores.foreground_iou
            history.best_epoch = epoch
            history.best_checkpoint = checkpoint_dir / "best.pt"
            torch.save({"epoch": epoch, "model": model.state_dict()}, history.best_checkpoint)
        if on_epoch_end is not None:
            on_epoch_end(
                epoch,
                {"train_loss": loss, "val_foreground_iou": scores.foreground_iou, "val_dice": scores.dice},
            )
    if history.best_checkpoint is not None:
        model.load_state_dict(torch.load(history.best_checkpoint, map_location=device)["model"])
    return history
