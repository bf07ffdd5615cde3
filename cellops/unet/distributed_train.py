"""One rank of a data-parallel U-Net training, as ``torchrun`` starts it (see :func:`train_distributed`).

The launching process writes the inputs to a folder: ``patch_images.npy``, ``patch_masks.npy``, ``val_image.npy``,
``val_mask.npy`` and ``settings.json``. Every rank reads them (memory-mapped), joins the process group and runs
:func:`cellops.unet.train.fit`, which shards the patches with a DistributedSampler and averages gradients with DDP.
Rank 0 validates, reports each epoch to the callback the settings name (the step's MLflow run) and writes the
checkpoints. At the end,
it writes ``model.pt`` (the best weights, which every rank then holds) and ``result.json`` (the history and each
rank's weight digest).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cellops.distributed import DistributedSettings, init_from_environment, is_main_process, torchrun_command


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers, in order (equal digests: bit-identical weights)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _epoch_logger(settings: dict):
    """Rank 0's ``on_epoch_end``, made by the ``"module:function"`` the launcher named (called with
    ``epoch_logger_args``): the tracking adapters stay outside this library, and the launching step's run is
    logged to live."""
    target = settings.get("epoch_logger")
    if not target:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(**settings.get("epoch_logger_args", {}))


def _rank_main(folder: Path) -> None:
    from cellops.unet.predict import InferenceSettings
    from cellops.unet.train import Architecture, TrainingConfig, build_model, fit

    settings = json.loads((folder / "settings.json").read_text())
    init_from_environment(settings["backend"])
    try:
        config = TrainingConfig.from_dict(settings["training"])
        model = build_model(Architecture.from_dict(settings["architecture"]), seed=config.seed)
        patches = tuple(torch.from_numpy(np.load(folder / f"patch_{kind}.npy")) for kind in ("images", "masks"))
        val = (np.load(folder / "val_image.npy"), np.load(folder / "val_mask.npy"))
        history = fit(model, patches, val, config, InferenceSettings.from_dict(settings["inference"]),
                      Path(settings["checkpoint_dir"]), on_epoch_end=_epoch_logger(settings) if is_main_process() else None, resume=settings["resume"])
        digests: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(digests, weights_digest(model))
        if is_main_process():
            torch.save(model.state_dict(), folder / "model.pt")
            (folder / "result.json").write_text(json.dumps({"history": asdict(history), "rank_digests": digests,
                                                            "world_size": dist.get_world_size()}))
    finally:
        dist.destroy_process_group()


def train_distributed(folder: Path, settings: DistributedSettings, env: dict | None = None) -> dict:
    """Run one DDP training over the inputs in ``folder`` with ``torchrun`` (this machine's processes); returns
    ``result.json``. Raises RuntimeError with the end of the ranks' output when any rank fails."""
    command = torchrun_command(settings, "cellops.unet.distributed_train", str(folder))
    result = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"distributed training failed ({' '.join(command)}):\n{(result.stdout + result.stderr)[-4000:]}")
    return json.loads((folder / "result.json").read_text())


def fit_distributed(model: torch.nn.Module, patches: tuple[np.ndarray, np.ndarray],
                    val_volume: tuple[np.ndarray, np.ndarray], *, architecture: dict, training: dict, inference: dict,
                    checkpoint_dir: Path, resume: bool, settings: DistributedSettings, work_dir: Path,
                    epoch_logger: str | None = None, epoch_logger_args: dict | None = None):
    """:func:`cellops.unet.train.fit` on ``settings.world_size`` processes: the inputs go to ``work_dir``, torchrun
    trains, and ``model`` gets the best weights. Returns the :class:`~cellops.unet.train.TrainingHistory` and the
    digest of each rank's final weights; raises RuntimeError if the ranks do not hold identical weights.

    ``model`` must be the one ``build_model(architecture, training["seed"])`` makes (each rank builds it again).
    ``epoch_logger`` (``"module:function"``) makes rank 0's per-epoch callback from ``epoch_logger_args``.
    """
    from cellops.unet.train import TrainingHistory

    work_dir.mkdir(parents=True, exist_ok=True)
    for name, array in (("patch_images", patches[0]), ("patch_masks", patches[1]), ("val_image", val_volume[0]),
                        ("val_mask", val_volume[1])):
        np.save(work_dir / f"{name}.npy", np.ascontiguousarray(array))
    (work_dir / "settings.json").write_text(json.dumps({
        "architecture": architecture, "training": training, "inference": inference,
        "checkpoint_dir": str(checkpoint_dir), "resume": resume, "backend": settings.backend,
        "epoch_logger": epoch_logger, "epoch_logger_args": epoch_logger_args or {}}))
    result = train_distributed(work_dir, settings)
    digests = result["rank_digests"]
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {len(digests)} ranks ended with different weights: {digests}")
    model.load_state_dict(torch.load(work_dir / "model.pt", weights_only=True))
    return TrainingHistory(**result["history"]), digests


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
