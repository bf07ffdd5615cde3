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

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cellops.distributed import (DistributedSettings, epoch_logger_from, init_from_environment, is_main_process,
                                 read_rank_result, run_ranks, write_rank_result)


def _rank_main(folder: Path) -> None:
    from cellops.unet.specs import UNetServing
    from cellops.unet.train import build_model, fit
    from cellops.unet.specs import Architecture, UNetTraining

    settings = json.loads((folder / "settings.json").read_text())
    init_from_environment(settings["backend"])
    try:
        config = UNetTraining.from_dict(settings["training"])
        model = build_model(Architecture.from_dict(settings["architecture"]), seed=config.seed)
        patches = tuple(torch.from_numpy(np.load(folder / f"patch_{kind}.npy")) for kind in ("images", "masks"))
        val = (np.load(folder / "val_image.npy"), np.load(folder / "val_mask.npy"))
        history = fit(model, patches, val, config, UNetServing.from_dict(settings["inference"]),
                      Path(settings["checkpoint_dir"]),
                      on_epoch_end=epoch_logger_from(settings) if is_main_process() else None,
                      resume=settings["resume"], checkpoint_key=settings["checkpoint_key"])
        write_rank_result(model, asdict(history), folder)
    finally:
        dist.destroy_process_group()


def fit_distributed(model: torch.nn.Module, patches: tuple[np.ndarray, np.ndarray],
                    val_volume: tuple[np.ndarray, np.ndarray], *, architecture: dict, training: dict, inference: dict,
                    checkpoint_dir: Path, resume: bool, settings: DistributedSettings, work_dir: Path,
                    epoch_logger: str | None = None, epoch_logger_args: dict | None = None,
                    checkpoint_key: dict | None = None):
    """:func:`cellops.unet.train.fit` on ``settings.world_size`` processes: the inputs go to ``work_dir``, torchrun
    trains, and ``model`` gets the best weights. Returns the :class:`~cellops.unet.train.UNetHistory` and the
    digest of each rank's final weights; raises RuntimeError if the ranks do not hold identical weights.

    ``model`` must be the one ``build_model(architecture, training["seed"])`` makes (each rank builds it again).
    ``epoch_logger`` (``"module:function"``) makes rank 0's per-epoch callback from ``epoch_logger_args``.
    ``checkpoint_dir``, ``resume`` and ``checkpoint_key`` (JSON) are :func:`~cellops.unet.train.fit`'s.
    """
    from cellops.unet.train import UNetHistory

    work_dir.mkdir(parents=True, exist_ok=True)
    for name, array in (("patch_images", patches[0]), ("patch_masks", patches[1]), ("val_image", val_volume[0]),
                        ("val_mask", val_volume[1])):
        np.save(work_dir / f"{name}.npy", np.ascontiguousarray(array))
    # default=str: values of the checkpoint key that are not JSON go as text, as its fingerprint takes them.
    (work_dir / "settings.json").write_text(json.dumps({
        "architecture": architecture, "training": training, "inference": inference,
        "checkpoint_dir": str(checkpoint_dir), "resume": resume, "checkpoint_key": checkpoint_key,
        "backend": settings.backend,
        "epoch_logger": epoch_logger, "epoch_logger_args": epoch_logger_args or {}}, default=str))
    result = run_ranks("cellops.unet.distributed_train", work_dir, settings)
    history, digests = read_rank_result(model, work_dir, result)
    return UNetHistory(**history), digests


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
