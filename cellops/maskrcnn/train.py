"""Training and evaluation loops for Mask R-CNN, in the style of torchvision's references/detection/engine.py:
linear warm-up, then a cosine schedule; SGD with momentum; gradient clipping; mixed precision on a GPU; a
checkpoint after every epoch that a rerun resumes from."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from cellops.maskrcnn.data import InstanceDataset, collate
from cellops.maskrcnn.specs import MaskRCNNTraining
from cellops.maskrcnn.evaluation import InstanceScores, evaluate_instances
from cellops.maskrcnn.predict import coco_results, predict_picture
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.maskrcnn.runtime import export_maskrcnn, with_runtime
from cellops.runtimes import RuntimeCheck, default_skips, measure_runtimes

logger = logging.getLogger(__name__)


@dataclass
class TrainingHistory:
    """Per-epoch training losses, validation scores and timings; the epoch whose weights were kept."""

    losses: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    resumed_from_epoch: int | None = None


def _lr_factor(iteration: int, warmup: int, total: int) -> float:
    if iteration < warmup:
        return 0.001 + (1 - 0.001) * iteration / max(1, warmup)
    progress = (iteration - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _fingerprint(config: MaskRCNNTraining, extra: dict) -> str:
    return hashlib.sha256(json.dumps({**asdict(config), **extra}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluate_model(model: torch.nn.Module, samples: list, ground_truth: dict,
                   settings: MaskRCNNServing) -> tuple[InstanceScores, list[dict]]:
    """Predict every (image, target) sample as it would be served and score it against ``ground_truth`` (COCO).

    AP ranks every detection the model reports (its own low ``score_threshold``), as COCO AP is defined: cutting
    at the serving threshold would truncate the precision-recall curve. F1 counts only detections at or above
    ``settings.score_threshold``, i.e. what a user gets."""
    model.eval()
    detections = []
    every = replace(settings, score_threshold=0.0)
    for image, target in samples:
        picture = image.permute(1, 2, 0).cpu().numpy()
        instances = predict_picture(model, picture, every)  # samples are normalised as served already
        detections += coco_results(instances, target["image_id"], picture.shape[:2])
    return evaluate_instances(ground_truth, detections, max_detections=settings.max_detections,
                              f1_score_threshold=settings.score_threshold), detections


def fit(model: torch.nn.Module, train: InstanceDataset, val_samples: list, val_ground_truth: dict,
        config: MaskRCNNTraining, prediction: MaskRCNNServing, *,
        checkpoint_dir: Path | None = None, checkpoint_key: dict | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> TrainingHistory:
    """Train ``model`` on ``train`` and keep the weights of the epoch with the best validation mask AP50.

    With ``checkpoint_dir``, the model, optimiser, scaler, history and random states are saved after every epoch
    (atomically); a rerun with the same settings (``config`` plus ``checkpoint_key``) resumes after the last saved
    epoch, and one with other settings starts afresh. The checkpoint is removed once training completes. Loss that turns NaN stops training with an error.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = config.resolved_device()
    torch.manual_seed(config.seed)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True, collate_fn=collate,
                                         generator=generator, drop_last=len(train) > config.batch_size)
    total = config.epochs * len(loader)
    history = TrainingHistory()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_epoch = 0
    fingerprint = _fingerprint(config, checkpoint_key or {})
    checkpoint = checkpoint_dir / "last.pt" if checkpoint_dir is not None else None
    if checkpoint is not None and checkpoint.is_file():
        # On the CPU: random-number states must stay CPU tensors; load_state_dict moves weights to the model's device.
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scaler is not None and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            history = saved["history"]
            best_state = {k: v.to(device) for k, v in saved["best_state"].items()}
            generator.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            start_epoch = saved["epoch"] + 1
            history.resumed_from_epoch = saved["epoch"]  # the last completed epoch, as for every family
            logger.info("resuming from %s after epoch %d", checkpoint, saved["epoch"])
        else:
            logger.info("%s is from other settings: training from the start", checkpoint)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        sums: dict[str, float] = {}
        for step, (images, targets) in enumerate(loader):
            iteration = epoch * len(loader) + step
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * _lr_factor(iteration, config.warmup_iterations, total)
            images = [image.to(device) for image in images]
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, enabled=use_amp):
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
            if config.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            for key, value in {"loss": loss, **losses}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        epoch_losses = {k: v / max(1, len(loader)) for k, v in sums.items()}
        history.losses.append(epoch_losses)
        metrics = {**epoch_losses, "lr": optimizer.param_groups[0]["lr"]}
        last = epoch == config.epochs - 1
        if val_samples and ((epoch + 1) % config.validate_every == 0 or last):
            scores, _ = evaluate_model(model, val_samples, val_ground_truth, prediction)
            history.validation.append({"epoch": epoch, **scores.as_dict()})
            metrics.update({f"val_{k}": v for k, v in scores.as_dict().items()})
            if scores.mask_ap50 + 1e-3 * scores.mask_ap > history.best_score:
                history.best_score = scores.mask_ap50 + 1e-3 * scores.mask_ap
                history.best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif not val_samples:
            history.best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.epoch_seconds.append(time.perf_counter() - started)
        metrics["epoch_seconds"] = history.epoch_seconds[-1]
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        logger.info("epoch %d/%d: %s", epoch + 1, config.epochs,
                    ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            partial = checkpoint.with_suffix(".partial")
            torch.save({"fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                        "history": history, "best_state": best_state, "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state()}, partial)
            partial.replace(checkpoint)  # never a half-written checkpoint
    model.load_state_dict(best_state)
    if checkpoint is not None:
        # Finished: the caller keeps the model; a rerun trains afresh rather than "resuming" a finished run.
        checkpoint.unlink(missing_ok=True)
    return history


def loss_curves(history: TrainingHistory) -> dict[str, list[float]]:
    """Per-epoch curves for plotting: each loss term, and validation mask AP50/AP/F1 where measured."""
    curves: dict[str, list[float]] = {}
    for epoch_losses in history.losses:
        for key, value in epoch_losses.items():
            curves.setdefault(key, []).append(value)
    for key in ("mask_ap50", "mask_ap", "f1_50"):
        if history.validation:
            curves[f"val_{key}"] = [v[key] for v in history.validation]
    return {k: list(np.asarray(v, dtype=float)) for k, v in curves.items()}


def runtime_checks(model: torch.nn.Module, calibration_images: list[torch.Tensor], test_samples: list,
                   test_ground_truth: dict, settings: MaskRCNNServing, folder: str | Path, *,
                   runtimes: tuple[str, ...], tolerance: float,
                   repeats: int = 1) -> list[RuntimeCheck]:
    """Export the backbone into ``folder`` (:mod:`cellops.maskrcnn.runtime`) and measure each runtime of
    :mod:`cellops.runtimes` on the test samples as served (metric: mask AP50; ``tolerance``: the largest AP50 change
    accepted)."""
    names = export_maskrcnn(model, calibration_images, folder)

    def evaluate(module: torch.nn.Module) -> float:
        return evaluate_model(module, test_samples, test_ground_truth, settings)[0].mask_ap50

    return measure_runtimes(lambda runtime: with_runtime(model, runtime, folder, names), evaluate, runtimes,
                            tolerance, repeats=repeats, skip=default_skips(runtimes))
