"""One rank of a data-parallel classifier training, as ``torchrun`` starts it (see :func:`fit_distributed`).

The launching process writes the inputs to a folder: ``train_images.npy``, ``train_labels.npy``, ``val_images.npy``,
``val_labels.npy``, ``initial.pt`` (the model as the launcher built and initialised it: ImageNet or source weights
included) and ``settings.json``. Every rank loads them and runs :func:`cellops.classifier.train.fit`, which trains
each rank on its share of every global batch with DDP; rank 0 validates, reports each epoch and checkpoints. At the
end rank 0 writes ``model.pt`` (the best weights, which every rank then holds) and ``result.json`` (the history and
each rank's weight digest).
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

ARRAYS = ("train_images", "train_labels", "val_images", "val_labels")


def _rank_main(folder: Path) -> None:
    from cellops.classifier.data import Augmentation, build_augmentation
    from cellops.classifier.train import fit
    from cellops.classifier.specs import ClassifierTraining

    settings = json.loads((folder / "settings.json").read_text())
    init_from_environment(settings["backend"])
    try:
        model = torch.load(folder / "initial.pt", weights_only=False)
        arrays = {name: np.load(folder / f"{name}.npy") for name in ARRAYS}
        history = fit(model, (arrays["train_images"], arrays["train_labels"]),
                      (arrays["val_images"], arrays["val_labels"]), ClassifierTraining.from_dict(settings["training"]),
                      build_augmentation(Augmentation.from_dict(settings["augmentation"])), settings["positive"],
                      on_epoch_end=epoch_logger_from(settings) if is_main_process() else None,
                      checkpoint_dir=Path(settings["checkpoint_dir"]), resume=settings["resume"],
                      checkpoint_key=settings["checkpoint_key"])
        write_rank_result(model, asdict(history), folder)
    finally:
        dist.destroy_process_group()


def fit_distributed(model: torch.nn.Module, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                    *, training: dict, augmentation: dict, positive: int, checkpoint_dir: Path, resume: bool,
                    settings: DistributedSettings, work_dir: Path, epoch_logger: str | None = None,
                    epoch_logger_args: dict | None = None, checkpoint_key: dict | None = None):
    """:func:`cellops.classifier.train.fit` on ``settings.world_size`` processes: the inputs go to ``work_dir``,
    torchrun trains, and ``model`` gets the best weights. Returns the
    :class:`~cellops.classifier.train.ClassifierHistory` and the digest of each rank's final weights; raises
    RuntimeError if the ranks do not hold identical weights. ``epoch_logger`` (``"module:function"``) makes rank 0's
    per-epoch callback from ``epoch_logger_args``. ``checkpoint_dir``, ``resume`` and ``checkpoint_key`` (JSON) are
    :func:`~cellops.classifier.train.fit`'s."""
    from cellops.classifier.train import ClassifierHistory

    work_dir.mkdir(parents=True, exist_ok=True)
    for name, array in zip(ARRAYS, (*train, *val)):
        np.save(work_dir / f"{name}.npy", np.ascontiguousarray(array))
    torch.save(model, work_dir / "initial.pt")
    # default=str: values of the checkpoint key that are not JSON go as text, as its fingerprint takes them.
    (work_dir / "settings.json").write_text(json.dumps({
        "training": training, "augmentation": augmentation, "positive": positive,
        "checkpoint_dir": str(checkpoint_dir), "resume": resume, "checkpoint_key": checkpoint_key,
        "backend": settings.backend,
        "epoch_logger": epoch_logger, "epoch_logger_args": epoch_logger_args or {}}, default=str))
    result = run_ranks("cellops.classifier.distributed_train", work_dir, settings)
    history, digests = read_rank_result(model, work_dir, result)
    return ClassifierHistory(**history), digests


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
