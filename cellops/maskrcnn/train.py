"""Training and evaluation loops for Mask R-CNN, in the style of torchvision's references/detection/engine.py:
SGD with momentum; a linear warm-up, then a cosine schedule; gradient clipping; mixed precision on a GPU; and
:func:`fit` with a checkpoint after every epoch that a rerun resumes from."""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cellops.checkpoints import EpochCallback, ResumableCheckpoint, TrainingHistory, model_key
from cellops.maskrcnn.data import InstanceDataset, collate
from cellops.maskrcnn.evaluation import evaluate  # the served-settings evaluation, shared with runtime checks
from cellops.maskrcnn.specs import MaskRCNNServing, MaskRCNNTraining

logger = logging.getLogger(__name__)


@dataclass
class MaskRCNNHistory(TrainingHistory):
    """Per-epoch training losses and the scores of the validated epochs, besides what every family's history
    holds.

    Attributes
    ----------
    losses : list of dict of str to float
        Each epoch's mean of every loss term (``loss`` is their sum).
    validation : list of dict of str to float
        The scores of each validated epoch, with its ``epoch``.
    best_score : float
        The best epoch's validation mask AP50 (plus 1/1000 of its AP, to break ties).
    """

    losses: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -math.inf

    def curves(self) -> dict[str, list[float]]:
        """Every curve by name: each loss term and ``epoch_seconds`` per epoch, validation mask AP50, AP and F1
        per validated epoch.

        Returns
        -------
        dict of str to list of float
            The curves, by name (validation ones prefixed ``val_``).

        Examples
        --------
        >>> history = MaskRCNNHistory(losses=[{"loss": 2.0}, {"loss": 1.5}], epoch_seconds=[3.0, 2.5],
        ...                           validation=[{"epoch": 1, "mask_ap50": 0.5, "mask_ap": 0.25, "f1_50": 0.5}])
        >>> curves = history.curves()
        >>> curves["loss"], curves["epoch_seconds"], curves["val_mask_ap50"], sorted(curves)
        ([2.0, 1.5], [3.0, 2.5], [0.5], ['epoch_seconds', 'loss', 'val_f1_50', 'val_mask_ap', 'val_mask_ap50'])
        """
        curves: dict[str, list[float]] = {}
        for epoch_losses in self.losses:
            for key, value in epoch_losses.items():
                curves.setdefault(key, []).append(float(value))
        curves["epoch_seconds"] = [float(s) for s in self.epoch_seconds]
        if self.validation:
            for key in ("mask_ap50", "mask_ap", "f1_50"):
                curves[f"val_{key}"] = [float(v[key]) for v in self.validation]
        return curves


def warmup_cosine(iteration: int, warmup: int, total: int) -> float:
    """The learning-rate factor at ``iteration`` (from 0) of ``total``: linear from 0.001 to 1 over ``warmup``
    iterations, then a cosine down to 0.01 at the end.

    Parameters
    ----------
    iteration : int
        Steps taken so far.
    warmup : int
        Steps of the linear warm-up.
    total : int
        Steps of the whole training.

    Returns
    -------
    float
        The factor of the peak learning rate.

    Examples
    --------
    >>> [round(warmup_cosine(i, warmup=2, total=6), 4) for i in range(6)]
    [0.001, 0.5005, 1.0, 0.855, 0.505, 0.155]
    """
    if iteration < warmup:
        return 0.001 + (1 - 0.001) * iteration / max(1, warmup)
    progress = (iteration - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int,
                           total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler, stepped after every optimiser step, that sets the learning rate to the peak (the optimiser's
    ``lr``) times :func:`warmup_cosine`.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its learning rate is the peak.
    warmup : int
        Steps of the warm-up.
    total : int
        Steps of the whole training.

    Returns
    -------
    torch.optim.lr_scheduler.LambdaLR
        The schedule, to step after every optimiser step.

    Examples
    --------
    >>> optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.02)
    >>> scheduler = warmup_cosine_schedule(optimizer, warmup=2, total=6)
    >>> rates = []
    >>> for _ in range(6):
    ...     rates.append(round(optimizer.param_groups[0]["lr"], 6))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [2e-05, 0.01001, 0.02, 0.0171, 0.0101, 0.0031]
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(warmup_cosine, warmup=warmup, total=total))


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, data_loader: torch.utils.data.DataLoader,
                    device: torch.device, epoch: int, *, scaler: torch.amp.GradScaler | None = None,
                    clip_grad_norm: float = 0.0) -> tuple[dict[str, float], float]:
    """One pass over ``data_loader`` of (images, targets) batches, stepping ``scheduler`` after every step.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision Mask R-CNN (in training mode it returns its loss terms).
    optimizer : torch.optim.Optimizer
        The optimiser, stepped once per batch.
    scheduler : torch.optim.lr_scheduler.LRScheduler
        Stepped once per batch.
    data_loader : DataLoader
        Batches of (images, targets), as :func:`cellops.maskrcnn.data.collate` makes them.
    device : torch.device
        Where the model is.
    epoch : int
        For the error message.
    scaler : torch.amp.GradScaler, optional
        Mixed precision (autocast and a scaled loss) when given.
    clip_grad_norm : float, optional
        Largest gradient norm (0: no clipping).

    Returns
    -------
    losses : dict of str to float
        The epoch's mean of every loss term (``loss`` is their sum).
    lr : float
        The learning rate of the epoch's last step.

    Raises
    ------
    FloatingPointError
        When the loss is not finite.
    """
    model.train()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, float] = {}
    learning_rate = optimizer.param_groups[0]["lr"]
    for step, (images, targets) in enumerate(data_loader):
        learning_rate = optimizer.param_groups[0]["lr"]
        images = [image.to(device) for image in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = model(images, targets)
            loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step} "
                                     f"({ {k: float(v) for k, v in losses.items()} }); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        for key, value in {"loss": loss, **losses}.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
    return {k: v / max(1, len(data_loader)) for k, v in sums.items()}, learning_rate


def fit(model: torch.nn.Module, train: InstanceDataset, val_samples: list, val_ground_truth: dict,
        config: MaskRCNNTraining, prediction: MaskRCNNServing, *,
        checkpoint_dir: Path | None = None, checkpoint_key: dict | None = None,
        on_epoch_end: EpochCallback | None = None, resume: bool = True) -> MaskRCNNHistory:
    """Train ``model`` on ``train`` and keep the weights of the epoch with the best validation mask AP50 (of the
    last epoch without validation samples).

    SGD with momentum, :func:`warmup_cosine_schedule`, gradient clipping and, on a GPU with ``config.amp``, mixed
    precision. With ``checkpoint_dir``, the state after every epoch is saved in a folder of it named after a
    fingerprint of the settings, the model's shape, the data's size and ``checkpoint_key`` (e.g. a hash of the
    annotations); with ``resume`` and a checkpoint there, training continues after its epoch (the epochs done are
    reported to ``on_epoch_end`` again) and ends with the weights an uninterrupted run would have. The folder is
    removed at the end. A loss that turns NaN stops training with an error.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision Mask R-CNN; on return it holds the best weights.
    train : InstanceDataset
        The augmented training samples.
    val_samples : list
        (image, target) validation samples, normalised as served; empty: no validation.
    val_ground_truth : dict
        COCO annotations of the validation images.
    config : MaskRCNNTraining
        Optimisation settings.
    prediction : MaskRCNNServing
        How validation predicts, as served.
    checkpoint_dir : Path, optional
        Folder of the checkpoints (None: none).
    checkpoint_key : dict, optional
        What else must match to resume (e.g. a hash of the annotations).
    on_epoch_end : EpochCallback, optional
        ``on_epoch_end(epoch, metrics)`` after each epoch: the loss terms, ``lr``, ``epoch_seconds`` and, when
        validated, the ``val_`` scores.
    resume : bool, optional
        Resume from a checkpoint of the same training when there is one.

    Returns
    -------
    MaskRCNNHistory
        Per-epoch losses, validation scores and the best epoch.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = config.resolved_device()
    torch.manual_seed(config.seed)
    model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True, collate_fn=collate,
                                         generator=generator, drop_last=len(train) > config.batch_size)
    scheduler = warmup_cosine_schedule(optimizer, config.warmup_iterations, config.epochs * len(loader))
    # What a checkpoint must match to be resumed: the settings, the model's shape, the data's size, the caller's key.
    key = {"training": asdict(config), "serving": prediction.as_dict(), **model_key(model), "images": len(train),
           "val_images": len(val_samples), "caller": checkpoint_key or {}}
    checkpoint = ResumableCheckpoint(checkpoint_dir, key, MaskRCNNHistory(), model=model, optimizer=optimizer,
                                     scheduler=scheduler, scaler=scaler, generator=generator, resume=resume)
    history = checkpoint.restore(on_epoch_end)
    for epoch in range(checkpoint.first_epoch, config.epochs):
        started = time.perf_counter()
        losses, learning_rate = train_one_epoch(model, optimizer, scheduler, loader, device, epoch, scaler=scaler,
                                                clip_grad_norm=config.clip_grad_norm)
        history.losses.append(losses)
        metrics = {**losses, "lr": learning_rate}
        if val_samples and ((epoch + 1) % config.validate_every == 0 or epoch == config.epochs - 1):
            scores, _ = evaluate(model, val_samples, val_ground_truth, prediction)
            history.validation.append({"epoch": epoch, **scores.as_dict()})
            metrics.update({f"val_{k}": v for k, v in scores.as_dict().items()})
            if scores.mask_ap50 + 1e-3 * scores.mask_ap > history.best_score:
                history.best_score = scores.mask_ap50 + 1e-3 * scores.mask_ap
                checkpoint.keep_best(epoch)
        elif not val_samples:
            checkpoint.keep_best(epoch)
        history.epoch_seconds.append(time.perf_counter() - started)
        metrics["epoch_seconds"] = history.epoch_seconds[-1]
        logger.info("epoch %d/%d: %s", epoch + 1, config.epochs, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        checkpoint.end_epoch(epoch, metrics, on_epoch_end)
    return checkpoint.finish()


