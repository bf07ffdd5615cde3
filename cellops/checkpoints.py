"""Checkpoints that an interrupted training resumes from, shared by every model family.

A checkpoint lives in a folder named after a fingerprint of everything that must match for it to be resumed
(settings, model shape, data version), so the same command after a kill finds it, and a rerun with other
settings or data starts afresh beside it; the folder is removed once training completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

#: File of the state after the last completed epoch.
LAST_CHECKPOINT = "last.pt"


def fingerprint(key: dict) -> str:
    """A short stable hash of ``key`` (JSON, sorted keys; values that are not JSON are taken as text).

    >>> fingerprint({"lr": 0.1, "epochs": 3}) == fingerprint({"epochs": 3, "lr": 0.1})
    True
    """
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_dir_for(root: str | Path, key: dict) -> Path:
    """The folder under ``root`` holding the checkpoints of a training described by ``key``."""
    return Path(root) / fingerprint(key)


def save_atomically(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file then rename: a kill mid-write never leaves a truncated checkpoint where
    the last good one was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict | None:
    """The state saved at ``path``, or None when there is none."""
    return torch.load(path, map_location=device, weights_only=False) if path.is_file() else None


def random_states() -> dict:
    """Python's, NumPy's and torch's (CPU and CUDA) global random states, to resume exactly."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_random_states(states: dict) -> None:
    """Undo :func:`random_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def remove_checkpoints(directory: Path) -> None:
    """Delete a completed training's checkpoint folder (its model is in the registry by then)."""
    shutil.rmtree(directory, ignore_errors=True)
