"""Training the U-Net: the loss, one epoch, validation, and :func:`fit` with checkpoints and resume.

Shaped after torchvision's ``references/detection/engine.py``: short, explicit functions that anyone can step
through, no framework hiding the loop. The state after every epoch (model, optimizer, scheduler, history, random
states) is kept in a :class:`~cellops.checkpoints.ResumableCheckpoint`, so an interrupted run resumes where it
stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from cellops.checkpoints import EpochCallback, ResumableCheckpoint, TrainingHistory, model_key
from cellops.distributed import data_parallel, is_main_process, local_batch_size, mean_over_ranks, rank, world_size
from cellops.metrics import BinarySegmentationScores
from cellops.unet.predict import load_for_inference, score
from cellops.unet.specs import Architecture, UNetServing, UNetTraining
from models.unet import UNet


def build_model(architecture: Architecture, seed: int) -> UNet:
    """A U-Net whose initial weights depend on ``seed`` alone, not on the random state left by earlier code.

    Parameters
    ----------
    architecture : Architecture
        The U-Net's shape.
    seed : int
        Seed of the initial weights.

    Returns
    -------
    UNet
        The untrained model.

    Examples
    --------
    >>> a = build_model(Architecture(1, 1, 4, 2, 0.0), seed=1)
    >>> _ = torch.rand(100)  # other code drawing random numbers in between changes nothing
    >>> b = build_model(Architecture(1, 1, 4, 2, 0.0), seed=1)
    >>> all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(**asdict(architecture))


class DiceBCELoss(nn.Module):
    """Binary cross-entropy plus soft Dice: BCE for calibrated pixels, Dice against class imbalance.

    Parameters
    ----------
    dice_weight : float, optional
        Weight of the Dice term.
    smooth : float, optional
        Added to numerator and denominator of the Dice coefficient (empty masks score 1, not 0/0).

    Examples
    --------
    >>> loss = DiceBCELoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    >>> round(loss.item(), 4)  # BCE of p = 0.5 on empty masks, plus their Dice loss
    1.582
    """

    def __init__(self, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of a batch.

        Parameters
        ----------
        logits : torch.Tensor
            Raw outputs (N, 1, H, W).
        target : torch.Tensor
            Masks of 0/1, same shape, float.

        Returns
        -------
        torch.Tensor
            Scalar: mean BCE plus ``dice_weight`` times the mean soft-Dice loss over the batch.
        """
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
    """One pass over ``data_loader``; returns the mean training loss. Stops on a non-finite loss.

    Parameters
    ----------
    model : nn.Module
        The U-Net (or its DDP wrapper), trained in place.
    loss_fn : nn.Module
        Loss of ``(logits, masks)``, e.g. :class:`DiceBCELoss`.
    optimizer : torch.optim.Optimizer
        The optimiser, stepped once per batch.
    scheduler : torch.optim.lr_scheduler.LRScheduler or None
        Stepped once per batch when given.
    data_loader : DataLoader
        Batches of ``(images, masks)``.
    device : torch.device
        Where the model is.
    epoch : int
        The epoch's number, for the progress bar and the error message.

    Returns
    -------
    float
        Mean loss over the samples of the epoch.

    Raises
    ------
    FloatingPointError
        When a batch's loss is not finite.
    """
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


def evaluate(model: nn.Module, volume: tuple[np.ndarray, np.ndarray], settings: UNetServing,
             device: str | torch.device = "cpu") -> BinarySegmentationScores:
    """Segment the slices of ``volume`` as served and score them against its mask.

    Parameters
    ----------
    model : nn.Module
        The U-Net (left as it is: BatchNorm is folded into a copy).
    volume : tuple of ndarray
        Image and mask (non-zero: foreground), (Z, H, W).
    settings : UNetServing
        Tiling, threshold and normalisation, as served.
    device : str or torch.device, optional
        Where the model is.

    Returns
    -------
    BinarySegmentationScores
        Foreground IoU, Dice and the rest, over all voxels.
    """
    image, mask = volume
    return score(load_for_inference(model), image, mask, settings, device)[0]


@dataclass
class UNetHistory(TrainingHistory):
    """Per-epoch training loss and validation scores, besides what every family's history holds.

    Attributes
    ----------
    train_loss : list of float
        Mean training loss of each epoch.
    val_foreground_iou : list of float
        Validation foreground IoU of each epoch.
    val_dice : list of float
        Validation Dice of each epoch.
    """

    train_loss: list[float] = field(default_factory=list)
    val_foreground_iou: list[float] = field(default_factory=list)
    val_dice: list[float] = field(default_factory=list)

    @property
    def best_val_foreground_iou(self) -> float:
        return self.val_foreground_iou[self.best_epoch] if self.best_epoch >= 0 else float("nan")


def fit(
    model: nn.Module,
    patches: tuple[torch.Tensor, torch.Tensor],
    val_volume: tuple[np.ndarray, np.ndarray],
    config: UNetTraining,
    inference: UNetServing,
    checkpoint_dir: Path | None,
    on_epoch_end: EpochCallback | None = None,
    *,
    resume: bool = True,
    checkpoint_key: dict | None = None,
) -> UNetHistory:
    """Train on augmented patches, validate on the whole validation slices after each epoch (segmented with
    ``inference``, as evaluation and serving do), keep the best weights by validation foreground IoU.

    AdamW with a one-cycle schedule (``warmup_fraction`` of the steps rising to ``learning_rate``). The state
    after every epoch is saved in a folder of ``checkpoint_dir`` named after a fingerprint of the settings, the
    model's shape, the patches' shape and ``checkpoint_key`` (e.g. the data version); with ``resume`` and a
    checkpoint there, training continues after its epoch (the epochs done are reported to ``on_epoch_end``
    again) and ends with the weights an uninterrupted run would have. The folder is removed at the end; on return
    ``model`` holds the best weights.

    Run by every rank of a process group (see :mod:`cellops.unet.distributed_train`), it trains with DDP: each
    rank takes its share of every global batch of ``config.batch_size``, rank 0 alone validates, calls
    ``on_epoch_end`` and writes the checkpoints, and all ranks return rank 0's best weights and history.

    Parameters
    ----------
    model : nn.Module
        The U-Net; on return it holds the best weights.
    patches : tuple of Tensor
        Augmented training images and masks, (N, 1, H, W).
    val_volume : tuple of ndarray
        Validation slices and their mask, (Z, H, W).
    config : UNetTraining
        Optimisation settings.
    inference : UNetServing
        How validation segments, as served.
    checkpoint_dir : Path or None
        Folder of the checkpoints (None: none).
    on_epoch_end : EpochCallback, optional
        ``on_epoch_end(epoch, metrics)`` after each epoch (``train_loss``, ``val_foreground_iou``, ``val_dice``,
        ``epoch_seconds``).
    resume : bool, optional
        Resume from a checkpoint of the same training when there is one.
    checkpoint_key : dict, optional
        What else must match to resume (e.g. the data version).

    Returns
    -------
    UNetHistory
        Per-epoch curves and the best epoch (rank 0's on every rank).
    """
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    model.to(device)
    # One sampler for one process and for many: each epoch draws one permutation from seed + epoch, and the ranks
    # of a DDP run take interleaved shares of it. Step k of every rank together covers the same samples as step k of
    # a single process with the whole (global) batch, so the two runs differ only by batch-norm statistics (per
    # rank on CPUs) and the order of floating-point sums.
    dataset = TensorDataset(*patches)
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=config.seed)
    loader = DataLoader(dataset, batch_size=local_batch_size(config.batch_size), sampler=sampler,
                        drop_last=len(patches[0]) > config.batch_size)
    loss_fn = DiceBCELoss(dice_weight=config.dice_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    trained = data_parallel(model, device)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=max(1, config.epochs * len(loader)),
        pct_start=config.warmup_fraction,
    )
    # What a checkpoint must match to be resumed: the settings, the model's shape, the data's size, the caller's key.
    key = {"training": asdict(config), "inference": inference.as_dict(), **model_key(model),
           "patches": list(patches[0].shape), "caller": checkpoint_key or {}}
    checkpoint = ResumableCheckpoint(checkpoint_dir, key, UNetHistory(), model=model, optimizer=optimizer,
                                     scheduler=scheduler, resume=resume)
    history = checkpoint.restore(on_epoch_end)
    for epoch in range(checkpoint.first_epoch, config.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        loss = mean_over_ranks(train_one_epoch(trained, loss_fn, optimizer, scheduler, loader, device, epoch))
        if not is_main_process():  # rank 0 alone validates, keeps the best weights and writes checkpoints
            continue
        scores = evaluate(model, val_volume, inference, device)
        history.train_loss.append(loss)
        history.val_foreground_iou.append(scores.foreground_iou)
        history.val_dice.append(scores.dice)
        history.epoch_seconds.append(time.perf_counter() - started)
        if history.best_epoch < 0 or scores.foreground_iou > history.best_val_foreground_iou:
            checkpoint.keep_best(epoch)
        checkpoint.end_epoch(epoch, {"train_loss": loss, "val_foreground_iou": scores.foreground_iou,
                                     "val_dice": scores.dice, "epoch_seconds": history.epoch_seconds[-1]},
                             on_epoch_end)
    return checkpoint.finish()
