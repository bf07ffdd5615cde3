"""The runtime that runs a served network on this host (:mod:`cellops.host_runtime`): the fastest of the runtimes
the registry found accurate, timed on this CPU at the service's first start and cached per CPU model and ISA, unless
the operator overrides it (``CELLOPS_RUNTIME``); and the metadata that says so. Only the model services bundle this
module; it knows no family: each service passes how its network is built and one unit of its work."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException

from bento.common import model_metadata

logger = logging.getLogger("bentoml.cellops")

#: Environment variable with which an operator overrides the runtime timed here (``torch`` always works).
RUNTIME_ENV = "CELLOPS_RUNTIME"
#: How long a process without the network (an entry service) waits for its model process's timing, in seconds.
WAIT_FOR_CHOICE_S = 120.0


def served_model_metadata(bento_model: bentoml.Model) -> dict:
    """What a model service reports about the model it serves and how it runs it.

    Parameters
    ----------
    bento_model : bentoml.Model
        The served BentoML model.

    Returns
    -------
    dict
        :func:`bento.common.model_metadata` plus ``serving`` (:func:`serving_runtime`).
    """
    return {**model_metadata(bento_model), "serving": serving_runtime(bento_model)}


def _graphs(bento_model: bentoml.Model) -> Path | None:
    folder = Path(bento_model.path_of("runtimes"))
    return folder if folder.is_dir() else None


def _model_key(metadata: dict, bento_model: bentoml.Model) -> str:
    from cellops.host_runtime import model_key

    return model_key(metadata.get("registered_model", bento_model.tag.name), metadata.get("model_version", "?"),
                     metadata.get("mlflow_run_id"))


def host_choice(bento_model: bentoml.Model, load: Callable | None = None, run: Callable | None = None):
    """The runtime chosen for the bento's model on this host (:func:`cellops.host_runtime.resolve_host_runtime`):
    read from the cache, or, in a process that has the network (``load``), timed now on ``run``
    (:func:`cellops.host_runtime.unit_of_work` by default). A process without it reads what its model process
    chose, waiting for it.

    Parameters
    ----------
    bento_model : bentoml.Model
        The served BentoML model.
    load : callable or None, optional
        ``load(runtime, folder)``: the network in ``runtime``.
    run : callable or None, optional
        ``run(module)``: one unit of the served work.

    Returns
    -------
    cellops.host_runtime.HostChoice
        The choice and its evidence.

    Raises
    ------
    bentoml.exceptions.BentoMLException
        For a ``CELLOPS_RUNTIME`` that names no runtime.
    """
    from cellops.host_runtime import read_host_choice, resolve_host_runtime, unit_of_work

    metadata = dict(bento_model.info.metadata)
    folder = _graphs(bento_model)
    name, checks = _model_key(metadata, bento_model), metadata.get("runtime_checks") or []
    registry_runtime = metadata.get("runtime") or "torch"
    try:
        if load is None:
            return read_host_choice(name, checks, registry_runtime=registry_runtime, wait_seconds=WAIT_FOR_CHOICE_S)
        return resolve_host_runtime(name, checks, folder, lambda runtime: load(runtime, folder),
                                    run or unit_of_work(metadata.get("inference_settings") or {}),
                                    registry_runtime=registry_runtime)
    except ValueError as error:
        raise BentoMLException(str(error)) from error


def serving_runtime(bento_model: bentoml.Model, choice=None) -> dict:
    """Which runtime runs the network, why, and on what.

    Parameters
    ----------
    bento_model : bentoml.Model
        The served BentoML model.
    choice : cellops.host_runtime.HostChoice or None, optional
        The choice (by default :func:`host_choice` without a network: what this host's model process chose).

    Returns
    -------
    dict
        ``runtime`` and its ``precision``; ``reason`` (fastest here, no faster runtime, override); ``overridden``;
        ``chosen_by_registry``: the registering host's choice; ``registry_verdicts``: each runtime's accuracy
        verdict; ``host_timings``: seconds and speed-ups of the runtimes timed on this CPU, with those skipped and
        why; ``host``: the CPU identity the choice is cached under; ``graphs``: the folder of the exported graphs;
        this CPU's kernels.
    """
    from cellops.runtimes import cpu_info, native_bf16

    choice = choice if choice is not None else host_choice(bento_model)
    machine = cpu_info()
    return {"runtime": choice.runtime, "precision": choice.precision, "reason": choice.reason,
            "overridden": choice.reason == "override", "chosen_by_registry": choice.registry_runtime,
            "registry_verdicts": choice.verdicts,
            "host_timings": {"seconds": choice.seconds, "speedups": choice.speedups, "skipped": choice.skipped,
                             "measured_at": choice.measured_at, "cached": choice.cached},
            "host": choice.host, "graphs": str(_graphs(bento_model)) if _graphs(bento_model) else None,
            "cpu": machine["cpu_model"], "isa": machine["isa_flags"], "threads": machine["torch_threads"],
            "onednn": machine["torch_cpu_capability"], "native_bf16": native_bf16(),
            "openvino_device": machine.get("openvino_device"),
            "versions": {k: machine["versions"].get(k) for k in ("torch", "onnxruntime", "openvino")}}


def load_serving_runtime(bento_model: bentoml.Model, load, run: Callable | None = None) -> object:
    """The network in the runtime chosen for this host (:func:`host_choice`, timing it here if no process has).

    Parameters
    ----------
    bento_model : bentoml.Model
        The served BentoML model.
    load : callable
        ``load(runtime, folder)`` builds the network in ``runtime`` from the exported graph in ``folder`` (None
        when the bento holds none).
    run : callable or None, optional
        ``run(module)``: one unit of the served work (:func:`cellops.host_runtime.unit_of_work` by default).

    Returns
    -------
    object
        What ``load`` built.

    Raises
    ------
    bentoml.exceptions.BentoMLException
        For a runtime that cannot load, naming it and the way out (``CELLOPS_RUNTIME=torch``): never a silent
        fall back.
    """
    choice = host_choice(bento_model, load, run)
    try:
        module = load(choice.runtime, _graphs(bento_model))
    except Exception as error:
        raise BentoMLException(f"cannot load the {choice.runtime!r} runtime of {bento_model.tag}: {error}; "
                               f"set {RUNTIME_ENV}=torch to serve the torch model") from error
    logger.info("%s", choice.summary())
    return module
