"""Training the U-Net: the loss, one epoch, and :func:`fit` with validation, checkpoints and resume.

Shaped after torchvision's ``references/detection/engine.py``: short, explicit functions that anyone can step
through, no framework hiding the loop. Checkpoints carry model, optimizer, scheduler, epoch, history, random
states and the resolved config (as torchvision's references do), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from cellops.checkpoints import LAST_CHECKPOINT, save_atomically
from cellops.distributed import is_distributed, is_main_process, local_batch_size, mean_over_ranks, rank, world_size
from cellops.unet.predict import load_for_inference, score
from cellops.unet.specs import UNetServing
from cellops.unet.specs import Architecture, UNetTraining
from models.unet import UNet


def build_model(architecture: Architecture, seed: int) -> UNet:
    """A U-Net whose initial weights depend on ``seed`` alone, not on the random state left by earlier code.

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


@dataclass
class TrainingHistory:
    """Per-epoch figures and which epoch gave the weights that :func:`fit` returns."""

    train_loss: list[float] = field(default_factory=list)
    val_foreground_iou: list[float] = field(default_factory=list)
    val_dice: list[float] = field(default_factory=list)
    best_epoch: int = -1
    resumed_from_epoch: int | None = None

    @property
    def best_val_foreground_iou(self) -> float:
        return self.val_foreground_iou[self.best_epoch] if self.best_epoch >= 0 else float("nan")


BEST_CHECKPOINT = "best.pt"


def fit(
    model: nn.Module,
    patches: tuple[torch.Tensor, torch.Tensor],
    val_volume: tuple[np.ndarray, np.ndarray],
    config: UNetTraining,
    inference: UNetServing,
    checkpoint_dir: Path,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    *,
    resume: bool = True,
) -> TrainingHistory:
    """Train on augmented patches, validate on the whole validation slices after each epoch (segmented with
    ``inference``, as evaluation and serving do), keep the best weights by validation foreground IoU.

    ``checkpoint_dir/last.pt`` is written after every epoch and ``best.pt`` whenever validation improves. With
    ``resume`` and a ``last.pt`` of the same config in ``checkpoint_dir``, training continues after its epoch
    and ends with the weights an uninterrupted run would have. On return ``model`` holds the best weights.

    Run by every rank of a process group (see :mod:`cellops.unet.distributed_train`), it trains with DDP: each
    rank takes its share of every global batch of ``config.batch_size``, rank 0 alone validates, calls
    ``on_epoch_end`` and writes the checkpoints, and all ranks return rank 0's best weights and history.
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
    trained = model
    if is_distributed():
        if device.type == "cuda":
            trained = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=[device] if device.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=max(1, config.epochs * len(loader)),
        pct_start=config.warmup_fraction,
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    # What a checkpoint must match to be resumed: the settings, the model's shape and the training data's size.
    resolved = {"training": asdict(config), "inference": inference.as_dict(), "model": type(model).__name__,
                "parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
                "patches": list(patches[0].shape)}
    history, start, best_weights = TrainingHistory(), 0, None
    last = checkpoint_dir / LAST_CHECKPOINT
    if resume and last.is_file():
        state = torch.load(last, map_location=device, weights_only=False)
        if state["config"] != resolved:
            raise ValueError(f"{last} was written with another config ({state['config']}); move it away to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        best_weights = state["best_model"]
        history = TrainingHistory(**{**state["history"], "resumed_from_epoch": state["epoch"]})
        start = state["epoch"] + 1
    val_image, val_mask = val_volume
    for epoch in range(start, config.epochs):
        sampler.set_epoch(epoch)
        loss = mean_over_ranks(train_one_epoch(trained, loss_fn, optimizer, scheduler, loader, device, epoch))
        if not is_main_process():  # rank 0 alone validates, keeps the best weights and writes checkpoints
            continue
        scores, _ = score(load_for_inference(model), val_image, val_mask, inference, device)
        history.train_loss.append(loss)
        history.val_foreground_iou.append(scores.foreground_iou)
        history.val_dice.append(scores.dice)
        improved = history.best_epoch < 0 or scores.foreground_iou > history.best_val_foreground_iou
        if improved:
            history.best_epoch = epoch
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # The best weights travel inside last.pt: one atomic write, so a kill can never leave them out of step
        # with the history; best.pt is a copy for people who want just the model.
        save_atomically({
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, "best_model": best_weights,
            "history": {k: v for k, v in asdict(history).items() if k != "resumed_from_epoch"}, "config": resolved,
        }, last)
        if improved:
            save_atomically({"epoch": epoch, "model": best_weights, "config": resolved}, checkpoint_dir / BEST_CHECKPOINT)
        if on_epoch_end is not None:
            on_epoch_end(epoch, {"train_loss": loss, "val_foreground_iou": scores.foreground_iou, "val_dice": scores.dice})
    if is_distributed():  # every rank ends with rank 0's best weights and history
        shared = [best_weights, asdict(history)]
        torch.distributed.broadcast_object_list(shared, src=0)
        best_weights, history = shared[0], TrainingHistory(**shared[1])
    if best_weights is not None:
        model.load_state_dict(best_weights)
    return history
