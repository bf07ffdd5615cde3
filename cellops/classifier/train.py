"""Training a classifier: one epoch over seeded augmented batches, validation, and :func:`fit` with checkpoints
and resume, keeping the best weights (highest validation accuracy, ties to the lower loss).

Every model of a run gets the same batches in the same order with the same augmentation (see
:func:`cellops.classifier.data.augment_batch`), so their curves compare like for like.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cellops.checkpoints import EpochCallback, ResumableCheckpoint, TrainingHistory, model_key
from cellops.classifier.data import augment_batch, epoch_batches
from cellops.classifier.specs import ClassifierTraining
from cellops.classifier.metrics import ClassificationScores, classification_scores
from cellops.distributed import data_parallel, is_distributed, is_main_process, local_batch_size, rank, world_size


@dataclass
class ClassifierHistory(TrainingHistory):
    """Per-epoch training and validation figures (train figures are measured on the augmented batches while
    training), besides what every family's history holds.

    Attributes
    ----------
    train_loss : list of float
        Mean training loss of each epoch.
    train_accuracy : list of float
        Training accuracy of each epoch.
    train_sensitivity : list of float
        Training recall of the positive class of each epoch.
    val_loss : list of float
        Validation loss of each epoch.
    val_accuracy : list of float
        Validation accuracy of each epoch.
    val_sensitivity : list of float
        Validation recall of the positive class of each epoch.
    """

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    train_sensitivity: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_sensitivity: list[float] = field(default_factory=list)

    def improves_on_best(self, accuracy: float, loss: float) -> bool:
        """Whether a validation ``accuracy`` and ``loss`` beat the best epoch's: higher accuracy, or as high and a
        lower loss.

        Parameters
        ----------
        accuracy : float
            Validation accuracy of the epoch.
        loss : float
            Validation loss of the epoch.

        Returns
        -------
        bool
            True when there is no best epoch yet or the epoch beats it.

        Examples
        --------
        >>> history = ClassifierHistory(val_loss=[0.5], val_accuracy=[0.75], best_epoch=0)
        >>> history.improves_on_best(0.75, 0.4), history.improves_on_best(0.75, 0.6), history.improves_on_best(0.8, 0.9)
        (True, False, True)
        """
        if self.best_epoch < 0:
            return True
        return (accuracy, -loss) > (self.val_accuracy[self.best_epoch], -self.val_loss[self.best_epoch])


@torch.inference_mode()
def predict_probabilities(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int,
                          device: str | torch.device = "cpu") -> np.ndarray:
    """Softmax probabilities (N, classes) of ``images`` (N, C, H, W) float in [0, 1], in eval mode, batch by batch.

    Parameters
    ----------
    model : nn.Module
        The classifier (put back in the mode it was in).
    images : np.ndarray or torch.Tensor
        (N, C, H, W) float in [0, 1].
    batch_size : int
        Images per forward pass.
    device : str or torch.device, optional
        Where the model is.

    Returns
    -------
    np.ndarray
        float64 probabilities (N, classes); shape (0, 0) when there is no image.

    Examples
    --------
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> predict_probabilities(model, np.zeros((5, 1, 2, 2), np.float32), batch_size=2).sum(axis=1).round(6).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
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
    of it; gradients are averaged by DDP, and the scores cover the predictions of all ranks.

    Parameters
    ----------
    model : nn.Module
        The classifier (or its DDP wrapper), trained in place.
    optimizer : torch.optim.Optimizer
        The optimiser, stepped once per batch.
    scheduler : torch.optim.lr_scheduler.LRScheduler
        Stepped once per batch.
    images : torch.Tensor
        Training images (N, C, H, W) float in [0, 1].
    labels : torch.Tensor
        Their class indices (N,).
    transform : callable
        The augmentation (:func:`cellops.classifier.data.build_augmentation`).
    config : ClassifierTraining
        Batch size, seed and label smoothing.
    epoch : int
        The epoch's number (seeds its shuffle and augmentation).
    positive : int
        The index of the positive class.
    device : torch.device
        Where the model is.

    Returns
    -------
    ClassificationScores
        Scores of the predictions made on the augmented batches.

    Raises
    ------
    FloatingPointError
        When a batch's loss is not finite.
    """
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


def evaluate(model: nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray, positive: int,
             batch_size: int, device: str | torch.device = "cpu") -> ClassificationScores:
    """Score ``model`` on ``images`` (N, C, H, W) float in [0, 1] against ``labels`` (N,), in eval mode.

    Parameters
    ----------
    model : nn.Module
        The classifier (put back in the mode it was in).
    images : ndarray or Tensor
        (N, C, H, W) float in [0, 1].
    labels : ndarray
        (N,) class indices.
    positive : int
        The index of the positive class (whose recall is the sensitivity).
    batch_size : int
        Images per forward pass.
    device : str or torch.device, optional
        Where the model is.

    Returns
    -------
    ClassificationScores
        Accuracy, loss, sensitivity and the rest, at the argmax class.
    """
    return classification_scores(predict_probabilities(model, images, batch_size, device), np.asarray(labels), positive)


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: ClassifierTraining,
    transform,
    positive: int,
    on_epoch_end: EpochCallback | None = None,
    checkpoint_dir: Path | None = None,
    *,
    resume: bool = True,
    checkpoint_key: dict | None = None,
) -> ClassifierHistory:
    """Train ``model`` on ``train``, validating on ``val`` after each epoch; on return it holds the best weights by
    validation accuracy (then loss).

    AdamW with a one-cycle schedule (``warmup_fraction`` of the steps rising to ``learning_rate``). With
    ``checkpoint_dir``, the state after every epoch is saved in a folder of it named after a fingerprint of the
    settings, the model's shape, the data's size and ``checkpoint_key`` (e.g. the data version); with ``resume``
    and a checkpoint there, training continues after its epoch (the epochs done are reported to ``on_epoch_end``
    again) and ends with the weights an uninterrupted run would have (batches and augmentation are seeded by
    epoch, so the resumed epochs see the same data). The folder is removed at the end.

    Run by every rank of a process group (see :mod:`cellops.classifier.distributed_train`), it trains with DDP: each
    rank takes its share of every global batch of ``config.batch_size``, rank 0 alone validates, calls
    ``on_epoch_end`` and writes the checkpoints, and all ranks return rank 0's best weights and history.

    Parameters
    ----------
    model : nn.Module
        The classifier.
    train : tuple of np.ndarray
        Training images (N, C, H, W) float in [0, 1] and labels (N,).
    val : tuple of np.ndarray
        Validation images and labels, likewise.
    config : ClassifierTraining
        Optimisation settings.
    transform : callable
        The augmentation (:func:`cellops.classifier.data.build_augmentation`).
    positive : int
        The index of the positive class.
    on_epoch_end : EpochCallback, optional
        ``on_epoch_end(epoch, metrics)`` after each epoch (the last value of every curve of the history).
    checkpoint_dir : Path, optional
        Folder of the checkpoints (None: none).
    resume : bool, optional
        Resume from a checkpoint of the same training when there is one.
    checkpoint_key : dict, optional
        What else must match to resume (e.g. the data version).

    Returns
    -------
    ClassifierHistory
        Per-epoch curves and the best epoch (rank 0's on every rank).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    model.to(device)
    images, labels = torch.as_tensor(train[0]), torch.as_tensor(train[1], dtype=torch.long)
    local_batch_size(config.batch_size)  # refuses a global batch the ranks cannot share evenly
    steps = sum(1 for _, batch in epoch_batches(len(images), config.batch_size, seed=config.seed, epoch=0)
                if len(batch) >= 2 * world_size())
    trained = data_parallel(model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate,
                                                    total_steps=max(1, config.epochs * steps),
                                                    pct_start=config.warmup_fraction)
    # What a checkpoint must match to be resumed: the settings, the model's shape, the data's size, the caller's key.
    key = {"training": asdict(config), **model_key(model), "images": list(images.shape), "caller": checkpoint_key or {}}
    checkpoint = ResumableCheckpoint(checkpoint_dir, key, ClassifierHistory(), model=model, optimizer=optimizer,
                                     scheduler=scheduler, resume=resume)
    history = checkpoint.restore(on_epoch_end)
    for epoch in range(checkpoint.first_epoch, config.epochs):
        started = time.perf_counter()
        fitted = train_one_epoch(trained, optimizer, scheduler, images, labels, transform, config, epoch, positive,
                                 device)
        if not is_main_process():  # rank 0 alone validates, keeps the best weights and writes checkpoints
            continue
        checked = evaluate(model, val[0], val[1], positive, config.batch_size * 2, device)
        history.epoch_seconds.append(time.perf_counter() - started)
        for split, scores in (("train", fitted), ("val", checked)):
            for name in ("loss", "accuracy", "sensitivity"):
                getattr(history, f"{split}_{name}").append(getattr(scores, name))
        if history.improves_on_best(checked.accuracy, checked.loss):
            checkpoint.keep_best(epoch)
        checkpoint.end_epoch(epoch, {k: v[-1] for k, v in history.curves().items()}, on_epoch_end)
    return checkpoint.finish()
