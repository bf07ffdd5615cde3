"""Mask R-CNN in faster CPU runtimes (:mod:`cellops.runtimes`); :func:`cellops.maskrcnn.train.runtime_checks`
checks each on the test images (mask AP50 within a tolerance of torch fp32's, timed over predicting every test
image as it is served).

What is exported is the backbone with its feature pyramid and the region proposal network's convolutions (most of
the multiply-adds on CPU, and a fixed graph); the proposals' decoding and NMS, the box and mask heads
(data-dependent control flow, variable numbers of boxes) stay in torch, fed by the runtime's feature maps, with
the RoIAlign poolers replaced by a vectorised one (:mod:`cellops.maskrcnn.heads`). Graphs exported before the
RPN convolutions joined them (pyramid levels only) still load: their RPN head runs in torch.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.maskrcnn.evaluation import evaluate
from cellops.runtimes import RuntimeCheck, default_skips, export_runtime_files, load_runtime, measure_runtimes

DYNAMIC_IMAGE = {0: "batch", 2: "height", 3: "width"}


class _PyramidAndProposals(nn.Module):
    """The backbone's feature pyramid, then the RPN head's objectness and box deltas of every level, as one flat
    tuple (levels, objectness per level, deltas per level): one graph for the runtime, no dict outputs."""

    def __init__(self, backbone: nn.Module, rpn_head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.rpn_head = backbone, rpn_head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = list(self.backbone(x).values())
        objectness, deltas = self.rpn_head(levels)
        return (*levels, *objectness, *deltas)


class PrecomputedRPNHead(nn.Module):
    """Stands in for ``model.rpn.head``: hands the RPN the objectness and deltas the runtime computed with the
    pyramid (:class:`RuntimeBackbone` leaves them here), and runs the torch head on any other features.

    Parameters
    ----------
    head : nn.Module
        The model's RPN head.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        import threading

        self.head = head
        self.kept = threading.local()  # per thread: a service may predict several images at once

    def keep(self, features: list[torch.Tensor], objectness: list[torch.Tensor], deltas: list[torch.Tensor]) -> None:
        """Remember the runtime's RPN outputs for ``features`` (the pyramid they were computed from)."""
        self.kept.features, self.kept.outputs = list(features), (list(objectness), list(deltas))

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Objectness and box deltas of every level of ``features``.

        Parameters
        ----------
        features : list of torch.Tensor
            The pyramid's levels.

        Returns
        -------
        tuple of list of torch.Tensor
            Objectness (N, A, H, W) and deltas (N, 4A, H, W) per level.
        """
        outputs, kept = getattr(self.kept, "outputs", None), getattr(self.kept, "features", [])
        self.kept.features, self.kept.outputs = [], None  # used once: the next image brings its own
        if outputs is not None and len(kept) == len(features) and all(a is b for a, b in zip(kept, features)):
            return outputs
        return self.head(features)


class RuntimeBackbone(nn.Module):
    """Stands in for ``model.backbone``: the pyramid computed by another runtime, handed to the heads as the
    OrderedDict they expect.

    Parameters
    ----------
    pyramid : nn.Module
        The backbone and pyramid in a runtime, returning a tuple of levels.
    names : list of str
        The levels' names, in output order (:func:`pyramid_names`).
    out_channels : int
        Channels of every level (what the heads read from ``model.backbone``).
    rpn_head : PrecomputedRPNHead or None, optional
        Where the RPN outputs go when the runtime's graph computes them too (three outputs per level).
    """

    def __init__(self, pyramid: nn.Module, names: list[str], out_channels: int,
                 rpn_head: PrecomputedRPNHead | None = None) -> None:
        super().__init__()
        self.pyramid, self.names, self.out_channels = pyramid, list(names), out_channels
        self.rpn_head = rpn_head

    def forward(self, x: torch.Tensor) -> OrderedDict:
        """The feature pyramid of a batch of transformed images.

        Parameters
        ----------
        x : torch.Tensor
            Images (N, 3, H, W) as the model's transform makes them.

        Returns
        -------
        OrderedDict
            Level name to feature map.
        """
        outputs = self.pyramid(x)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        levels = len(self.names)
        if self.rpn_head is not None and len(outputs) == 3 * levels:
            self.rpn_head.keep(outputs[:levels], outputs[levels:2 * levels], outputs[2 * levels:])
        return OrderedDict(zip(self.names, outputs[:levels]))


def backbone_inputs(model: nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each image as the backbone sees it: resized, normalised and padded by the model's own transform.

    Parameters
    ----------
    model : nn.Module
        A torchvision Mask R-CNN (put in eval mode).
    images : list of torch.Tensor
        Images (3, H, W) in [0, 1].

    Returns
    -------
    list of torch.Tensor
        One batch (1, 3, H', W') per image.
    """
    model.eval()
    with torch.no_grad():
        return [model.transform([image])[0].tensors for image in images]


def export_maskrcnn(model: nn.Module, calibration_images: list[torch.Tensor], folder: str | Path) -> list[str]:
    """Write the fp32 and int8 ONNX graphs of ``model``'s backbone, pyramid and RPN convolutions (any image size)
    into ``folder``, calibrated on ``calibration_images`` ((3, H, W) in [0, 1], training images); returns the
    pyramid's level names.

    Parameters
    ----------
    model : nn.Module
        A trained torchvision Mask R-CNN.
    calibration_images : list of torch.Tensor
        Images (3, H, W) in [0, 1] for int8 calibration.
    folder : str or Path
        Where the runtime files are written.

    Returns
    -------
    list of str
        The pyramid's level names, in output order.
    """
    model.eval()
    inputs = backbone_inputs(model, calibration_images)
    with torch.no_grad():
        names = list(model.backbone(inputs[0]).keys())
    outputs = [f"{kind}_{name}" for kind in ("level", "objectness", "deltas") for name in names]
    export_runtime_files(_PyramidAndProposals(model.backbone, model.rpn.head), inputs[0],
                         [x.numpy() for x in inputs], folder, dynamic_axes=DYNAMIC_IMAGE, output_names=outputs)
    return names


def pyramid_names(model: nn.Module) -> list[str]:
    """The names of the backbone's pyramid levels, in output order.

    Parameters
    ----------
    model : nn.Module
        A torchvision Mask R-CNN (put in eval mode).

    Returns
    -------
    list of str
        The level names (e.g. ``["0", "1", "2", "3", "pool"]``).
    """
    model.eval()
    with torch.no_grad():
        return list(model.backbone(torch.zeros(1, 3, 64, 64)).keys())


def with_runtime(model: nn.Module, runtime: str, folder: str | Path | None,
                 names: list[str] | None = None) -> nn.Module:
    """``model`` itself (``torch``) or a copy of it whose backbone runs in ``runtime`` (``names``: the pyramid's
    level names, found from the model when not given).

    Parameters
    ----------
    model : nn.Module
        A torchvision Mask R-CNN.
    runtime : str
        Name of the runtime (:mod:`cellops.runtimes`).
    folder : str or Path or None
        Where :func:`export_maskrcnn` wrote the runtime files.
    names : list of str or None, optional
        The pyramid's level names.

    Returns
    -------
    nn.Module
        ``model`` for ``torch``, else a shallow copy sharing its heads.
    """
    if runtime == "torch":
        return model
    import copy

    names = names or pyramid_names(model)

    clone = copy.copy(model)  # shallow: the weights are shared, only the backbone, RPN head and poolers differ
    clone._modules = dict(model._modules)
    rpn = copy.copy(model.rpn)
    rpn._modules = dict(model.rpn._modules)
    rpn.head = PrecomputedRPNHead(model.rpn.head)
    clone.rpn = rpn
    clone.backbone = RuntimeBackbone(
        load_runtime(runtime, folder, _PyramidAndProposals(model.backbone, model.rpn.head)), names,
        model.backbone.out_channels, rpn.head)
    clone.roi_heads = fast_roi_heads(model.roi_heads, model.backbone.out_channels)
    return clone


def fast_roi_heads(roi_heads: nn.Module, channels: int) -> nn.Module:
    """A shallow copy of a Mask R-CNN's ``roi_heads`` whose RoIAlign poolers are
    :class:`~cellops.maskrcnn.heads.FastMultiScaleRoIAlign` and whose box head (torchvision's ``TwoMLPHead``)
    reads their channels-last output without a copy; the same outputs to float rounding, about 3x faster pooling.

    Parameters
    ----------
    roi_heads : nn.Module
        The model's ``RoIHeads`` (left as it is).
    channels : int
        Channels of the feature pyramid.

    Returns
    -------
    nn.Module
        The copy, sharing every weight.
    """
    import copy

    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    from cellops.maskrcnn.heads import FastMultiScaleRoIAlign, FastTwoMLPHead

    heads = copy.copy(roi_heads)
    heads._modules = dict(roi_heads._modules)
    heads.box_roi_pool = FastMultiScaleRoIAlign(roi_heads.box_roi_pool)
    if isinstance(roi_heads.box_head, TwoMLPHead):
        heads.box_head = FastTwoMLPHead(roi_heads.box_head, channels)
    if getattr(roi_heads, "mask_roi_pool", None) is not None:
        heads.mask_roi_pool = FastMultiScaleRoIAlign(roi_heads.mask_roi_pool)
    return heads


def runtime_checks(model: torch.nn.Module, calibration_images: list[torch.Tensor], test_samples: list,
                   test_ground_truth: dict, settings: MaskRCNNServing, folder: str | Path, *,
                   runtimes: tuple[str, ...], tolerance: float,
                   repeats: int = 1) -> list[RuntimeCheck]:
    """Export the backbone into ``folder`` (:mod:`cellops.maskrcnn.runtime`) and measure each runtime of
    :mod:`cellops.runtimes` on the test samples as served (metric: mask AP50; ``tolerance``: the largest AP50 change
    accepted).

    Parameters
    ----------
    model : torch.nn.Module
        A trained torchvision Mask R-CNN.
    calibration_images : list of torch.Tensor
        Training images (3, H, W) in [0, 1] for int8 calibration.
    test_samples : list
        (image, target) test samples, normalised as served.
    test_ground_truth : dict
        COCO annotations of the test images.
    settings : MaskRCNNServing
        How the model is applied, as served.
    folder : str or Path
        Where the runtime files are written.
    runtimes : tuple of str
        Names of the runtimes to measure.
    tolerance : float
        Largest mask-AP50 change from torch fp32 accepted.
    repeats : int, optional
        Timed repetitions of each evaluation.

    Returns
    -------
    list of RuntimeCheck
        One result per runtime.
    """
    names = export_maskrcnn(model, calibration_images, folder)

    def mask_ap50(module: torch.nn.Module) -> float:
        return evaluate(module, test_samples, test_ground_truth, settings)[0].mask_ap50

    return measure_runtimes(lambda runtime: with_runtime(model, runtime, folder, names), mask_ap50, runtimes,
                            tolerance, repeats=repeats, untimed=default_skips(runtimes))
