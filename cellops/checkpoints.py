"""Checkpoints that an interrupted training resumes from, shared by every model family.

A checkpoint lives in a folder named after a fingerprint of everything that must match for it to be resumed
(settings, model shape, data version), so the same command after a kill finds it, and a rerun with other
settings or data starts afresh beside it; the folder is removed once training completes.

Every family's ``fit`` keeps its state in one :class:`ResumableCheckpoint` and returns a subclass of
:class:`TrainingHistory`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import nn

from cellops.distributed import is_distributed, is_main_process

logger = logging.getLogger(__name__)

#: File of the state after the last completed epoch.
LAST_CHECKPOINT = "last.pt"

#: ``on_epoch_end(epoch, metrics)``: what a ``fit`` reports after each epoch (e.g. to an MLflow run).
EpochCallback = Callable[[int, dict[str, float]], None]


def fingerprint(key: dict) -> str:
    """A short stable hash of ``key`` (JSON, sorted keys; values that are not JSON are taken as text).

    Parameters
    ----------
    key : dict
        What identifies a training.

    Returns
    -------
    str
        16 hexadecimal digits of its SHA-256.

    Examples
    --------
    >>> fingerprint({"lr": 0.1, "epochs": 3}) == fingerprint({"epochs": 3, "lr": 0.1})
    True
    """
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_dir_for(root: str | Path, key: dict) -> Path:
    """The folder under ``root`` holding the checkpoints of a training described by ``key``.

    Parameters
    ----------
    root : str or Path
        Folder of the checkpoints of every training.
    key : dict
        What identifies this training.

    Returns
    -------
    Path
        ``root / fingerprint(key)``.

    Examples
    --------
    >>> checkpoint_dir_for("outputs/checkpoints", {"lr": 0.1}).parent.as_posix()
    'outputs/checkpoints'
    """
    return Path(root) / fingerprint(key)


def model_key(model: nn.Module) -> dict:
    """The part of a checkpoint's key that a model gives: its class and the shape of every tensor of its state.

    Parameters
    ----------
    model : nn.Module
        The model trained.

    Returns
    -------
    dict
        ``model`` (the class name) and ``parameters`` (name to shape).

    Examples
    --------
    >>> model_key(nn.Linear(3, 2))
    {'model': 'Linear', 'parameters': {'weight': [2, 3], 'bias': [2]}}
    """
    return {"model": type(model).__name__, "parameters": {k: list(v.shape) for k, v in model.state_dict().items()}}


def save_atomically(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file then rename: a kill mid-write never leaves a truncated checkpoint where
    the last good one was.

    Parameters
    ----------
    state : dict
        What to save.
    path : Path
        The checkpoint file (its folder is created).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict | None:
    """The state saved at ``path``, or None when there is none.

    Parameters
    ----------
    path : Path
        The checkpoint file.
    device : str or torch.device, optional
        Where its tensors are loaded.

    Returns
    -------
    dict or None
        The saved state.
    """
    return torch.load(path, map_location=device, weights_only=False) if path.is_file() else None


def random_states() -> dict:
    """Python's, NumPy's and torch's (CPU and CUDA) global random states, to resume exactly.

    Returns
    -------
    dict
        ``python``, ``numpy``, ``torch`` and ``cuda`` (None without a GPU).

    Examples
    --------
    >>> states = random_states()
    >>> first = torch.rand(1)
    >>> restore_random_states(states)
    >>> torch.equal(torch.rand(1), first)
    True
    """
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_random_states(states: dict) -> None:
    """Set the global random states saved by :func:`random_states`.

    Parameters
    ----------
    states : dict
        From :func:`random_states`.
    """
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def remove_checkpoints(directory: Path) -> None:
    """Delete a completed training's checkpoint folder (its model is in the registry by then).

    Parameters
    ----------
    directory : Path
        The folder; a missing one is not an error.
    """
    shutil.rmtree(directory, ignore_errors=True)


@dataclass
class TrainingHistory:
    """What every family's ``fit`` returns; each family's subclass adds its per-epoch curves.

    Attributes
    ----------
    epoch_seconds : list of float
        Wall-clock seconds of each epoch (training and validation).
    best_epoch : int
        The epoch whose weights ``fit`` returned (-1 before any).
    resumed_from_epoch : int or None
        The last epoch of the checkpoint training resumed after, None when it started afresh.
    """

    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    resumed_from_epoch: int | None = None

    def curves(self) -> dict[str, list[float]]:
        """Every per-epoch figure by name.

        Returns
        -------
        dict of str to list of float
            Each list-valued field.

        Examples
        --------
        >>> TrainingHistory(epoch_seconds=[1.5, 1.25]).curves()
        {'epoch_seconds': [1.5, 1.25]}
        """
        return {k: v for k, v in vars(self).items() if isinstance(v, list)}


History = TypeVar("History", bound=TrainingHistory)


class ResumableCheckpoint(Generic[History]):
    """One training's state, saved after every epoch so that the same command after a kill resumes it.

    ``fit`` builds it once its model, optimiser and scheduler exist, calls :meth:`restore` before the first epoch,
    :meth:`keep_best` when an epoch's weights are the best so far, :meth:`end_epoch` after each epoch and
    :meth:`finish` at the end. Under DDP every rank restores the same state; rank 0 alone saves, reports and
    removes the checkpoint, and :meth:`finish` gives every rank rank 0's best weights and history.

    Parameters
    ----------
    root : str, Path or None
        Folder of the checkpoints of every training; this one's lie in ``root / fingerprint(key)``. None: nothing
        is saved or resumed.
    key : dict
        Everything that must match for a checkpoint to be resumed (settings, model shape, data version).
    history : TrainingHistory
        The empty history of a training started afresh (its type is the family's).
    model : nn.Module
        The model trained (not a DDP wrapper of it).
    optimizer : torch.optim.Optimizer
        The optimiser of ``model``.
    scheduler : torch.optim.lr_scheduler.LRScheduler, optional
        The learning-rate schedule, when there is one.
    scaler : torch.amp.GradScaler, optional
        The gradient scaler of mixed-precision training.
    generator : torch.Generator, optional
        A generator the training draws from besides the global ones (e.g. a data loader's shuffling).
    resume : bool, optional
        False: start afresh whatever is saved (and overwrite it).

    Attributes
    ----------
    history : TrainingHistory
        The history restored or given.
    first_epoch : int
        The first epoch still to train (0, or the one after the epoch resumed from).
    best_weights : dict or None
        The state of the best epoch so far.

    Examples
    --------
    >>> import tempfile
    >>> def start(root, key):
    ...     model = nn.Linear(2, 1)
    ...     optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ...     return ResumableCheckpoint(root, key, TrainingHistory(), model=model, optimizer=optimizer)
    >>> root = tempfile.TemporaryDirectory()
    >>> checkpoint = start(root.name, {"lr": 0.1})
    >>> checkpoint.restore().resumed_from_epoch is None  # nothing saved yet: from the start
    True
    >>> checkpoint.keep_best(0)
    >>> checkpoint.end_epoch(0, {"loss": 1.0})  # then a kill
    >>> again = start(root.name, {"lr": 0.1})  # the same command again
    >>> again.restore(lambda epoch, metrics: print("reported again:", epoch, metrics)).resumed_from_epoch
    reported again: 0 {'loss': 1.0}
    0
    >>> again.first_epoch, again.finish().best_epoch, again.directory.exists()
    (1, 0, False)
    >>> root.cleanup()
    """

    def __init__(self, root: str | Path | None, key: dict, history: History, *, model: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 scaler: torch.amp.GradScaler | None = None, generator: torch.Generator | None = None,
                 resume: bool = True) -> None:
        self.fingerprint = fingerprint(key)
        self.directory = checkpoint_dir_for(root, key) if root is not None else None
        self.history = history
        self.model, self.optimizer, self.scheduler, self.scaler, self.generator = (model, optimizer, scheduler,
                                                                                   scaler, generator)
        self.resume = resume
        self.first_epoch = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._reported: list[tuple[int, dict[str, float]]] = []  # what on_epoch_end got, to report it again

    @property
    def path(self) -> Path | None:
        """The checkpoint file, None without a root."""
        return self.directory / LAST_CHECKPOINT if self.directory is not None else None

    def restore(self, on_epoch_end: EpochCallback | None = None) -> History:
        """Load the saved state when resuming, and return the history to extend.

        With ``resume`` and a checkpoint of the same key, model, optimiser, scheduler, scaler, generator, random
        states, best weights and history are restored, :attr:`first_epoch` becomes the epoch after the saved one,
        and on rank 0 every epoch already done is reported to ``on_epoch_end`` again, with the metrics it got
        then (so a new tracking run has the whole curve). Otherwise training starts afresh.

        Parameters
        ----------
        on_epoch_end : EpochCallback, optional
            ``on_epoch_end(epoch, metrics)``, as ``fit`` calls it after each epoch.

        Returns
        -------
        TrainingHistory
            The saved history (``resumed_from_epoch`` set to the saved epoch), or the empty one given.
        """
        state = load_checkpoint(self.path) if self.resume and self.path is not None else None
        if state is None:
            return self.history
        if state.get("fingerprint") != self.fingerprint:
            logger.info("%s was written by another training: starting afresh", self.path)
            return self.history
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        restore_random_states(state["random"])
        self.best_weights = state["best_weights"]
        self.history = type(self.history)(**{**state["history"], "resumed_from_epoch": state["epoch"]})
        self.first_epoch = state["epoch"] + 1
        self._reported = list(state["reported"])
        logger.info("resuming from %s after epoch %d", self.path, state["epoch"])
        if on_epoch_end is not None and is_main_process():
            for epoch, metrics in self._reported:
                on_epoch_end(epoch, metrics)
        return self.history

    def keep_best(self, epoch: int) -> None:
        """Note ``epoch`` as the best so far and keep a copy of the model's weights.

        Parameters
        ----------
        epoch : int
            The epoch just trained.
        """
        self.history.best_epoch = epoch
        self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def end_epoch(self, epoch: int, metrics: dict[str, float], on_epoch_end: EpochCallback | None = None) -> None:
        """After ``epoch`` (on rank 0): save the whole state atomically, then report ``metrics`` to ``on_epoch_end``.

        Saved first, so an epoch whose report fails is resumed after, and reported again then.

        Parameters
        ----------
        epoch : int
            The epoch just trained.
        metrics : dict of str to float
            Its figures, reported now and again on resume.
        on_epoch_end : EpochCallback, optional
            ``on_epoch_end(epoch, metrics)``.
        """
        self._reported.append((epoch, dict(metrics)))
        if self.path is not None and is_main_process():
            save_atomically({
                "fingerprint": self.fingerprint, "epoch": epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "generator": self.generator.get_state() if self.generator is not None else None,
                "random": random_states(), "best_weights": self.best_weights,
                "history": {k: v for k, v in asdict(self.history).items() if k != "resumed_from_epoch"},
                "reported": self._reported,
            }, self.path)
        if on_epoch_end is not None and is_main_process():
            on_epoch_end(epoch, metrics)

    def finish(self) -> History:
        """End of training: the model gets the best weights (rank 0's on every rank under DDP) and the checkpoint
        folder is removed (a rerun trains afresh rather than resuming a finished training).

        Returns
        -------
        TrainingHistory
            The history (rank 0's on every rank).
        """
        if is_distributed():
            shared = [self.best_weights, asdict(self.history)]
            torch.distributed.broadcast_object_list(shared, src=0)
            self.best_weights, self.history = shared[0], type(self.history)(**shared[1])
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        if self.directory is not None and is_main_process():
            remove_checkpoints(self.directory)
        return self.history
