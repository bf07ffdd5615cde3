"""Each family's network in any runtime, and the unit of work a host times it on: what ``cellops predict``, batch
inference and the benchmarks share to run a version on the runtime chosen for this CPU (:func:`run_on_host`,
:mod:`cellops.host_runtime`). Services, which carry one family each, pass theirs to :mod:`bento.runtime`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import nn

from cellops.classifier.runtime import runtime_classifier
from cellops.config import ServingRecord
from cellops.host_runtime import HostChoice, resolve_host_runtime, unit_of_work
from cellops.maskrcnn.predict import timing_unit
from cellops.maskrcnn.runtime import with_runtime
from cellops.runtimes import load_runtime


def prepared_model(family: str, model: nn.Module) -> nn.Module:
    """The torch model as every runtime of ``family`` starts from it: eval mode, and for the U-Net and the
    classifier BatchNorm folded and channels-last (torch fp32, the baseline, runs this).

    Parameters
    ----------
    family : str
        ``unet``, ``classifier`` or ``maskrcnn``.
    model : nn.Module
        The registered model.

    Returns
    -------
    nn.Module
        The prepared model (a copy for the U-Net and the classifier).
    """
    if family in ("unet", "classifier"):
        from cellops.inference import prepare_for_inference

        return prepare_for_inference(model)
    return model.eval()


def family_module(family: str, runtime: str, folder: str | Path | None, prepared: nn.Module) -> nn.Module:
    """``prepared`` (:func:`prepared_model`) running in ``runtime``, called as the family's code calls its model.

    Parameters
    ----------
    family : str
        ``unet``, ``classifier`` or ``maskrcnn``.
    runtime : str
        One of :data:`cellops.runtimes.RUNTIMES`.
    folder : str or Path or None
        The version's exported graphs.
    prepared : nn.Module
        The prepared torch model.

    Returns
    -------
    nn.Module
        The U-Net's whole network, the classifier's trunk behind its linear layer, or a Mask R-CNN whose exported
        parts run in ``runtime``.
    """
    if family == "unet":
        return load_runtime(runtime, folder, prepared)
    if family == "classifier":
        return runtime_classifier(runtime, folder, prepared)
    if family == "maskrcnn":
        return with_runtime(prepared, runtime, folder)
    raise LookupError(f"unknown model family {family!r}")


def timing_run(family: str, settings: ServingRecord, seed: int = 0) -> Callable[[nn.Module], object]:
    """One representative unit of the family's served work, for timing runtimes on a host, the same a service of
    the family times (they share one cache): a forward pass of a batch of U-Net tiles or classifier images
    (:func:`cellops.host_runtime.unit_of_work`), or one Mask R-CNN tile of a synthetic field through the heads
    (:func:`cellops.maskrcnn.predict.timing_unit`: their cost depends on how many objects are found, so a blank
    image would time the backbone only).

    Parameters
    ----------
    family : str
        ``unet``, ``classifier`` or ``maskrcnn``.
    settings : ServingRecord
        The version's serving settings (tile, batch and image sizes).
    seed : int, optional
        Seed of the synthetic input.

    Returns
    -------
    callable
        ``run(module)``.
    """
    if family == "maskrcnn":
        return timing_unit(settings, seed)
    if family in ("unet", "classifier"):
        return unit_of_work(settings.as_dict(), seed)
    raise LookupError(f"unknown model family {family!r}")


def run_on_host(family: str, model: nn.Module, settings: ServingRecord, folder: str | Path | None, *,
                model_name: str, checks: Sequence[Mapping], registry_runtime: str = "torch",
                override: str | None = None, cache_dir: str | Path | None = None,
                repeats: int = 3) -> tuple[nn.Module, HostChoice]:
    """The version's network in the runtime chosen for this host (:func:`cellops.host_runtime.resolve_host_runtime`:
    the override, the cached choice, or the fastest accurate runtime timed now on :func:`timing_run`).

    Parameters
    ----------
    family : str
        ``unet``, ``classifier`` or ``maskrcnn``.
    model : nn.Module
        The registered torch model.
    settings : ServingRecord
        Its serving settings.
    folder : str or Path or None
        Its exported graphs.
    model_name : str
        :func:`cellops.host_runtime.model_key` of the version.
    checks : sequence of Mapping
        Its stored runtime checks.
    registry_runtime : str, optional
        The registering host's choice.
    override : str or None, optional
        A runtime to use untimed (default: ``CELLOPS_RUNTIME``).
    cache_dir : str or Path or None, optional
        Where choices are cached.
    repeats : int, optional
        Timed rounds.

    Returns
    -------
    module : nn.Module
        The network in the chosen runtime.
    choice : HostChoice
        The choice and its evidence.
    """
    prepared = prepared_model(family, model)
    choice = resolve_host_runtime(model_name, checks, folder,
                                  lambda runtime: family_module(family, runtime, folder, prepared),
                                  timing_run(family, settings), registry_runtime=registry_runtime,
                                  override=override, cache_dir=cache_dir, repeats=repeats)
    return family_module(family, choice.runtime, folder, prepared), choice
