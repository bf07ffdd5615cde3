"""The runtime that runs a served network (``cellops.runtimes``): the one the registry chose for the model version
unless the operator overrides it, and the metadata that says so. Only the model services bundle this module."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException

from bento.common import model_metadata

logger = logging.getLogger("bentoml.cellops")


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


#: Environment variable with which an operator overrides the runtime the deployment chose (``torch`` always works).
RUNTIME_ENV = "CELLOPS_RUNTIME"


def serving_runtime(bento_model: bentoml.Model) -> dict:
    """Which runtime runs the network and on what.

    Parameters
    ----------
    bento_model : bentoml.Model
        The served BentoML model (its metadata names the runtime the registry chose).

    Returns
    -------
    dict
        ``runtime``: the one the registry chose (the fastest that passed its accuracy check, see
        ``cellops.runtimes``) unless ``CELLOPS_RUNTIME`` overrides it; its ``precision``; ``graphs``: the folder
        of its exported graph; and the kernels this CPU offers (oneDNN's ISA level, OpenVINO's device).

    Raises
    ------
    bentoml.exceptions.BentoMLException
        For a ``CELLOPS_RUNTIME`` that names no runtime.
    """
    from cellops.runtimes import RUNTIME_PRECISION, RUNTIMES, cpu_info, native_bf16

    chosen = dict(bento_model.info.metadata).get("runtime") or "torch"
    requested = os.environ.get(RUNTIME_ENV, "").strip() or chosen
    if requested not in RUNTIMES:
        raise BentoMLException(f"{RUNTIME_ENV}={requested!r} is not a runtime; choose one of {list(RUNTIMES)}")
    folder = Path(bento_model.path_of("runtimes"))
    machine = cpu_info()
    return {"runtime": requested, "precision": RUNTIME_PRECISION[requested], "chosen_by_registry": chosen,
            "overridden": requested != chosen,
            "graphs": str(folder) if folder.is_dir() else None,
            "cpu": machine["cpu_model"], "isa": machine["isa_flags"], "threads": machine["torch_threads"],
            "onednn": machine["torch_cpu_capability"], "native_bf16": native_bf16(),
            "openvino_device": machine.get("openvino_device"),
            "versions": {k: machine["versions"].get(k) for k in ("torch", "onnxruntime", "openvino")}}


def load_serving_runtime(bento_model: bentoml.Model, load) -> object:
    """The network in the runtime :func:`serving_runtime` names.

    Parameters
    ----------
    bento_model : bentoml.Model
        The served BentoML model.
    load : callable
        ``load(runtime, folder)`` builds the network in ``runtime`` from the exported graph in ``folder`` (None
        when the bento holds none).

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
    serving = serving_runtime(bento_model)
    runtime, folder = serving["runtime"], serving["graphs"]
    try:
        module = load(runtime, Path(folder) if folder else None)
    except Exception as error:
        raise BentoMLException(f"cannot load the {runtime!r} runtime of {bento_model.tag}: {error}; "
                               f"set {RUNTIME_ENV}=torch to serve the torch model") from error
    logger.info("%s runs on %s (%s, %s)", bento_model.tag, runtime, serving["cpu"], serving["onednn"])
    return module


