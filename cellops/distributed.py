"""Data-parallel training with PyTorch DDP, launched by ``torchrun``: the settings, the launch command and the
helpers a training loop needs (who is rank 0, how to split a global batch, how to average a figure over ranks).

The ZenML step stays one process: it writes the step's inputs to a folder, runs ``torchrun`` as a subprocess
(:func:`torchrun_command`) and reads back what rank 0 wrote. Only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cellops.config import FromMapping

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class DistributedSettings(FromMapping):
    """How many processes train together (the config's ``distributed`` block).

    Attributes
    ----------
    nproc_per_node : int, optional
        Processes per machine (one per GPU with nccl; CPU cores with gloo). 1 with ``nnodes: 1``
        trains in the step's own process, without DDP.
    nnodes : int, optional
        Machines.
    node_rank : int, optional
        This machine's rank (0 on the machine that runs the ZenML step).
    master_addr : str, optional
        Where rank 0 listens for the others (``127.0.0.1`` on one machine).
    master_port : int, optional
        The port rank 0 listens on.
    backend : str, optional
        ``gloo`` (CPU) or ``nccl`` (GPUs).

    Examples
    --------
    >>> settings = DistributedSettings(nproc_per_node=2)
    >>> settings.world_size, settings.enabled
    (2, True)
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str = "gloo"

    def __post_init__(self) -> None:
        problems = []
        if self.nproc_per_node < 1 or self.nnodes < 1:
            problems.append(f"nproc_per_node and nnodes must be at least 1, got {self.nproc_per_node} and {self.nnodes}")
        if not 0 <= self.node_rank < max(self.nnodes, 1):
            problems.append(f"node_rank must lie in [0, {self.nnodes}), got {self.node_rank}")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "nccl" and not torch.cuda.is_available():
            problems.append("backend nccl needs CUDA GPUs, and none is visible: use gloo on CPUs")
        if problems:
            raise ValueError("distributed: " + "; ".join(problems))

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def torchrun_command(settings: DistributedSettings, module: str, *args: str) -> list[str]:
    """The ``torchrun`` command that starts ``python -m module args`` on every process of this machine.

    Parameters
    ----------
    settings : DistributedSettings
        Processes, machines and rendezvous.
    module : str
        The module every rank runs.
    *args : str
        Its arguments.

    Returns
    -------
    list of str
        The command line.

    Examples
    --------
    >>> torchrun_command(DistributedSettings(nproc_per_node=2), "cellops.unet.distributed_train", "in")[3:7]
    ['--nproc-per-node', '2', '--nnodes', '1']
    """
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(settings.nproc_per_node),
            "--nnodes", str(settings.nnodes), "--node-rank", str(settings.node_rank),
            "--master-addr", settings.master_addr, "--master-port", str(settings.master_port),
            "-m", module, *args]


def is_distributed() -> bool:
    """Whether this process is one rank of an initialised process group.

    Returns
    -------
    bool
        True inside an initialised process group.

    Examples
    --------
    >>> is_distributed()  # not started by torchrun
    False
    """
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the process group.

    Returns
    -------
    int
        The rank; 0 without a process group.

    Examples
    --------
    >>> rank()
    0
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes training together.

    Returns
    -------
    int
        The process group's size; 1 without one.

    Examples
    --------
    >>> world_size()
    1
    """
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the one process that logs, validates and writes checkpoints.

    Returns
    -------
    bool
        Whether this process is rank 0.

    Examples
    --------
    >>> is_main_process()
    True
    """
    return rank() == 0


def local_batch_size(global_batch_size: int) -> int:
    """Each rank's batch, so that all ranks together step on ``global_batch_size`` samples (DDP averages the
    gradients, so the update is the one a single process would make on the whole global batch).

    Parameters
    ----------
    global_batch_size : int
        Samples per step over all ranks; divisible by the number of ranks.

    Returns
    -------
    int
        Samples per step on this rank.

    Raises
    ------
    ValueError
        When the ranks cannot share the batch evenly.

    Examples
    --------
    >>> local_batch_size(8)  # one process
    8
    """
    world = world_size()
    if global_batch_size % world:
        raise ValueError(f"batch_size {global_batch_size} is not divisible by the {world} training processes")
    return global_batch_size // world


def mean_over_ranks(value: float) -> float:
    """``value`` averaged over all ranks (itself without a process group).

    Parameters
    ----------
    value : float
        This rank's value.

    Returns
    -------
    float
        The mean over ranks.

    Examples
    --------
    >>> mean_over_ranks(0.25)
    0.25
    """
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to train: ``model`` itself in one process; under DDP, ``model`` wrapped in
    DistributedDataParallel (with synchronised batch norm on GPUs), sharing its parameters.

    Parameters
    ----------
    model : torch.nn.Module
        The model, already on ``device``.
    device : torch.device
        Where it trains.

    Returns
    -------
    torch.nn.Module
        ``model`` or its DDP wrapper.

    Examples
    --------
    >>> layer = torch.nn.Linear(2, 1)
    >>> data_parallel(layer, torch.device("cpu")) is layer  # one process
    True
    """
    if not is_distributed():
        return model
    trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model
    return torch.nn.parallel.DistributedDataParallel(trained, device_ids=[device] if device.type == "cuda" else None)


def init_from_environment(backend: str) -> None:
    """Join the process group ``torchrun`` describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR...).

    Parameters
    ----------
    backend : str
        ``gloo`` or ``nccl`` (which also selects this rank's GPU).

    Raises
    ------
    RuntimeError
        When the process was not started by ``torchrun``.
    """
    if "RANK" not in os.environ:
        raise RuntimeError("not started by torchrun: RANK and WORLD_SIZE are not set")
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers, in order (equal digests: bit-identical weights).

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    str
        64 hexadecimal digits.

    Examples
    --------
    >>> layer = torch.nn.Linear(2, 1)
    >>> len(weights_digest(layer)), weights_digest(layer) == weights_digest(torch.nn.Linear(2, 1))
    (64, False)
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def epoch_logger_from(settings: dict):
    """Rank 0's ``on_epoch_end``, made by the ``"module:function"`` the launcher named (called with
    ``epoch_logger_args``): the tracking adapters stay outside this library, and the launching step's run is
    logged to live.

    Parameters
    ----------
    settings : dict
        The launcher's settings: ``epoch_logger`` (``"module:function"``) and ``epoch_logger_args``.

    Returns
    -------
    EpochCallback or None
        What the function returned; None when no logger is named.
    """
    target = settings.get("epoch_logger")
    if not target:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(**settings.get("epoch_logger_args", {}))


def run_ranks(module: str, folder: Path, settings: DistributedSettings, env: dict | None = None) -> dict:
    """Run ``python -m module folder`` on every rank with ``torchrun`` (this machine's processes): one DDP training
    over the inputs the launcher wrote to ``folder``; returns the ``result.json`` rank 0 wrote there. Raises
    RuntimeError with the end of the ranks' output when any rank fails.

    Parameters
    ----------
    module : str
        The module every rank runs (e.g. :mod:`cellops.unet.distributed_train`).
    folder : Path
        Where the launcher wrote the inputs and rank 0 writes the result.
    settings : DistributedSettings
        Processes and rendezvous.
    env : dict or None, optional
        Environment variables added for the ranks.

    Returns
    -------
    dict
        The contents of ``result.json``.

    Raises
    ------
    RuntimeError
        When any rank fails.
    """
    command = torchrun_command(settings, module, str(folder))
    result = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"distributed training failed ({' '.join(command)}):\n{(result.stdout + result.stderr)[-4000:]}")
    return json.loads((folder / "result.json").read_text())


def write_rank_result(model: torch.nn.Module, history: dict, folder: Path) -> None:
    """End of a rank's training: every rank's weight digest is gathered, and rank 0 writes ``model.pt`` and
    ``result.json`` (the history and the digests) to ``folder`` for the launcher (:func:`read_rank_result`).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (not its DDP wrapper).
    history : dict
        The training history, JSON-ready.
    folder : Path
        The launcher's folder.
    """
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, weights_digest(model))
    if is_main_process():
        torch.save(model.state_dict(), folder / "model.pt")
        (folder / "result.json").write_text(json.dumps({"history": history, "rank_digests": digests,
                                                        "world_size": dist.get_world_size()}))


def read_rank_result(model: torch.nn.Module, folder: Path, result: dict) -> tuple[dict, list[str]]:
    """Load rank 0's final weights from ``folder`` into ``model``; returns the history and the ranks' digests.
    Raises RuntimeError if the ranks do not hold identical weights.

    Parameters
    ----------
    model : torch.nn.Module
        The model the weights are loaded into.
    folder : Path
        The launcher's folder.
    result : dict
        What :func:`run_ranks` returned.

    Returns
    -------
    history : dict
        The training history.
    digests : list of str
        Every rank's weight digest.

    Raises
    ------
    RuntimeError
        When the ranks' digests differ.
    """
    digests = result["rank_digests"]
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {len(digests)} ranks ended with different weights: {digests}")
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return result["history"], digests
