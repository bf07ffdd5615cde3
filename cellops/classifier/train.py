"""Training a classifier: one epoch over seeded augmented batches, then :func:`fit` with per-epoch validation,
keeping the best weights (highest validation accuracy, ties to the lower loss).

Every model of a run gets the same batches in the same order with the same augmentation (see
:func:`cellops.classifier.data.augment_batch`), so their curves compare like for like.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cellops.checkpoints import LAST_CHECKPOINT, load_checkpoint, random_states, restore_random_states, save_atomically
from cellops.classifier.data import augment_batch, epoch_batches
from cellops.classifier.specs import ClassifierTraining
from cellops.classifier.metrics import ClassificationScores, classification_scores
from cellops.distributed import is_distributed, is_main_process, local_batch_size, rank, world_size


@dataclass
class ClassifierHistory:
    """Per-epoch curves (train figures are measured on the augmented batches while training) and the epoch whose
    weights :func:`fit` returns."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    train_sensitivity: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_sensitivity: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    resumed_from_epoch: int | None = None  # the last epoch of the checkpoint training resumed from, if it did

    def curves(self) -> dict[str, list[float]]:
        return {k: v for k, v in vars(self).items() if isinstance(v, list)}


@torch.inference_mode()
def predict_probabilities(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int,
                          device: str | torch.device = "cpu") -> np.ndarray:
    """Softmax probabilities (N, classes) of ``images`` (N, C, H, W) float in [0, 1], in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    images = torch.as_tensor(images)
    out = [F.softmax(model(images[i:i + batch_size].to(device)), dim=1).double().cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, images: torch.Tensor,
                    labels: torch.Tensor, transform, config: ClassifierTraining, epoch: int, positive: int,
                    device: torch.device) -> ClassificationScores:
    """One pass over shuffled, augmented batches; returns the scores of the predictions made while training.

    Under DDP every rank draws and augments the same global batch (same seeds), then trains on its interleaved share
    of it; gradients are averaged by DDP, and the scores cover the predictions of all ranks."""
    model.train()
    probabilities, seen = [], []
    share = slice(rank(), None, world_size())
    for number, batch in epoch_batches(len(images), config.batch_size, seed=config.seed, epoch=epoch):
        if len(batch) < 2 * world_size():  # each rank needs 2 images for batch normalisation
            continue
        x = augment_batch(images[batch], transform, seed=config.seed * 1_000_003 + epoch * 10_007 + number)
        x, y = x[share].to(device), labels[batch][share].to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training diverged at epoch {epoch}, batch {number} (loss {loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        probabilities.append(F.softmax(logits.detach(), dim=1).double().cpu())
        seen.append(y.cpu())
    probabilities, seen = torch.cat(probabilities), torch.cat(seen)
    if is_distributed():
        gathered: list = [None] * world_size()
        torch.distributed.all_gather_object(gathered, (probabilities, seen))
        probabilities, seen = torch.cat([p for p, _ in gathered]), torch.cat([y for _, y in gathered])
    return classification_scores(probabilities.numpy(), seen.numpy(), positive)


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: ClassifierTraining,
    transform,
    positive: int,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_dir: Path | None = None,
    *,
    resume: bool = True,
) -> ClassifierHistory:
    """Train ``model`` on ``train`` (images (N, C, H, W) float in [0, 1], labels (N,)), validating on ``val`` after
    each epoch; on return it holds the best weights by validation accuracy (then loss).

    AdamW with a one-cycle schedule (``warmup_fraction`` of the steps rising to ``learning_rate``). With
    ``checkpoint_dir``, the model, optimiser, scheduler, history, best weights and random states are saved there
    after every epoch (atomically); with ``resume`` and a checkpoint of the same settings, training continues
    after its epoch and ends with the weights an uninterrupted run would have (batches and augmentation are
    seeded by epoch, so the resumed epochs see the same data).

    Run by every rank of a process group (see :mod:`cellops.classifier.distributed_train`), it trains with DDP: each
    rank takes its share of every global batch of ``config.batch_size``, rank 0 alone validates, calls
    ``on_epoch_end`` and writes the checkpoints, and all ranks return rank 0's best weights and history.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    model.to(device)
    images, labels = torch.as_tensor(train[0]), torch.as_tensor(train[1], dtype=torch.long)
    local_batch_size(config.batch_size)  # refuses a global batch the ranks cannot share evenly
    steps = sum(1 for _, batch in epoch_batches(len(images), config.batch_size, seed=config.seed, epoch=0)
                if len(batch) >= 2 * world_size())
    trained = model
    if is_distributed():
        if device.type == "cuda":
            trained = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate,
                                                    total_steps=max(1, config.epochs * steps),
                                                    pct_start=config.warmup_fraction)
    history, best = ClassifierHistory(), None
    best_key = (-1.0, 0.0)
    # What a checkpoint must match to be resumed: the settings, the model's shape and the data's size.
    resolved = {"training": asdict(config), "model": type(model).__name__, "images": list(images.shape),
                "parameters": {k: list(v.shape) for k, v in model.state_dict().items()}}
    last = checkpoint_dir / LAST_CHECKPOINT if checkpoint_dir is not None else None
    first_epoch = 0
    state = load_checkpoint(last, device) if last is not None and resume else None
    if state is not None:
        if state["config"] != resolved:
            raise ValueError(f"{last} was written with other settings; move it away to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_random_states(state["random"])
        history = ClassifierHistory(**{**state["history"], "resumed_from_epoch": state["epoch"]})
        best, best_key, first_epoch = state["best_model"], tuple(state["best_key"]), state["epoch"] + 1
    for epoch in range(first_epoch, config.epochs):
        start = time.perf_counter()
        fitted = train_one_epoch(trained, optimizer, scheduler, images, labels, transform, config, epoch, positive,
                                 device)
        if not is_main_process():  # rank 0 alone validates, keeps the best weights and writes checkpoints
            continue
        checked = classification_scores(predict_probabilities(model, val[0], config.batch_size * 2, device),
                                        np.asarray(val[1]), positive)
        history.epoch_seconds.append(time.perf_counter() - start)
        for split, scores in (("train", fitted), ("val", checked)):
            for name in ("loss", "accuracy", "sensitivity"):
                getattr(history, f"{split}_{name}").append(getattr(scores, name))
        key = (checked.accuracy, -checked.loss)
        if key > best_key:
            best_key, history.best_epoch = key, epoch
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if last is not None:
            save_atomically({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "random": random_states(), "best_model": best,
                             "best_key": list(best_key), "config": resolved,
                             "history": {k: v for k, v in asdict(history).items() if k != "resumed_from_epoch"}},
                            last)
        if on_epoch_end is not None:
            on_epoch_end(epoch, {k: v[-1] for k, v in history.curves().items()})
    if is_distributed():  # every rank ends with rank 0's best weights and history
        shared = [best, asdict(history)]
        torch.distributed.broadcast_object_list(shared, src=0)
        best, history = shared[0], ClassifierHistory(**shared[1])
    if best is not None:
        model.load_state_dict(best)
    return history
