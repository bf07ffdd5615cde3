"""The classifier in faster CPU runtimes (:mod:`cellops.runtimes`), each checked on the test split: accuracy within
a tolerance of torch fp32's, timed over classifying and explaining (CAM) the whole split.

What is exported is the whole path of :func:`models.cam.class_activation_maps`: the convolutional trunk
(``feature_maps``, quantised in the int8 graph), then, in fp32, global average pooling, the linear layer, every
class's map and the predicted class's map at the images' size, so that one runtime call per batch gives labels and
maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cellops.inference import prepare_for_inference
from cellops.runtimes import (RUNTIME_FILES, INPUT_NAME, RuntimeCheck, default_skips, export_onnx, load_runtime,
                              measure_runtimes, probe_static_shapes, quantize_int8)
from models.cam import normalise_maps, resize_maps, resize_matrix


class _Trunk(nn.Module):
    """``model.feature_maps`` as a module of its own, for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.feature_maps(x)


class _CamHead(nn.Module):
    """What follows the trunk, for export beside it: logits, every class's map at feature resolution, and the
    predicted class's map resized to ``size`` and scaled to [0, 1] (as :func:`models.cam.class_activation_maps`)."""

    def __init__(self, classifier: nn.Linear, feature_size: tuple[int, int], size: tuple[int, int]) -> None:
        super().__init__()
        self.classifier = classifier
        # Bilinear resizing as two matrix products (see resize_matrix: OpenVINO's Interpolate is 10x slower).
        self.register_buffer("rows", resize_matrix(feature_size[0], size[0]))
        self.register_buffer("columns", resize_matrix(feature_size[1], size[1]).T.contiguous())

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.classifier(features.mean(dim=(2, 3)))
        class_maps = torch.einsum("ck,nkhw->nchw", self.classifier.weight, features)
        chosen = logits.argmax(dim=1)[:, None, None, None].expand(-1, 1, *class_maps.shape[-2:])
        return logits, class_maps, normalise_maps(self.rows @ class_maps.gather(1, chosen)[:, 0] @ self.columns)


#: The outputs of an exported classifier graph: the trunk's, then the head's (:class:`_CamHead`).
GRAPH_OUTPUTS = ("features", "logits", "class_maps", "cam")


class RuntimeClassifier(nn.Module):
    """A GAP classifier whose trunk runs in another runtime, with :meth:`class_activation_maps` for
    :func:`models.cam.class_activation_maps`.

    A graph written by :func:`export_classifier` holds the whole CAM path (:data:`GRAPH_OUTPUTS`): one runtime call
    gives logits and maps, and no torch kernel runs between calls (with 2 cores, torch's OpenMP threads spinning
    after a kernel slowed the runtime's next call). A graph of the trunk alone (exported by earlier versions, or
    ``trunk`` a torch module such as :class:`cellops.runtimes.Bf16Module`) gives the feature maps, and the rest
    runs in torch, in fp32.

    Parameters
    ----------
    trunk : nn.Module
        The graph in its runtime (maps images to :data:`GRAPH_OUTPUTS`, or to feature maps alone).
    classifier : nn.Linear
        The torch model's final linear layer.
    """

    def __init__(self, trunk: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.trunk, self.classifier = trunk, classifier

    def _outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Features, logits, every class's map at feature resolution, and the predicted class's map (None when the
        graph holds the trunk alone)."""
        out = self.trunk(x)
        if isinstance(out, tuple):
            return out
        logits = self.classifier(out.mean(dim=(2, 3)))
        return out, logits, torch.einsum("ck,nkhw->nchw", self.classifier.weight, out), None

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's feature maps, computed in the runtime.

        Parameters
        ----------
        x : torch.Tensor
            Images (N, C, H, W).

        Returns
        -------
        torch.Tensor
            Feature maps (N, K, h, w).
        """
        out = self.trunk(x)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: global average pooling of the feature maps, then the linear layer.

        Parameters
        ----------
        x : torch.Tensor
            Images (N, C, H, W).

        Returns
        -------
        torch.Tensor
            Logits (N, classes).
        """
        out = self.trunk(x)
        return out[1] if isinstance(out, tuple) else self.classifier(out.mean(dim=(2, 3)))

    @torch.inference_mode()
    def class_activation_maps(self, images: torch.Tensor, classes: torch.Tensor | None = None, *,
                              normalise: bool = True,
                              size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What :func:`models.cam.class_activation_maps` computes, from one runtime call; the graph's own map
        where it answers the question asked (predicted classes, normalised, at the exported size).

        Parameters
        ----------
        images : torch.Tensor
            Images (N, C, H, W).
        classes : torch.Tensor or None, optional
            The class of each image to explain (None: the predicted one).
        normalise : bool, optional
            Scale each map to [0, 1].
        size : tuple of int or None, optional
            Size of the maps (None: the images').

        Returns
        -------
        maps : torch.Tensor
            (N, *size).
        logits : torch.Tensor
            (N, classes).
        """
        size = tuple(size or images.shape[-2:])
        _, logits, class_maps, cam = self._outputs(images)
        if cam is not None and classes is None and normalise and tuple(cam.shape[-2:]) == size:
            return cam, logits
        chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
        return resize_maps(class_maps[torch.arange(len(chosen)), chosen], size, normalise), logits


def export_classifier(model: nn.Module, calibration_images: np.ndarray, folder: str | Path,
                      batch_size: int = 32, calibration_batches: int = 8) -> nn.Module:
    """Fold ``model`` for inference and write the fp32 and int8 ONNX graphs of its trunk followed by its CAM path
    (:data:`GRAPH_OUTPUTS`; the CAM path stays fp32 in both) into ``folder`` (images of the calibration images'
    size, any batch); returns the folded torch model.

    Parameters
    ----------
    model : nn.Module
        The trained classifier (left as it is).
    calibration_images : np.ndarray
        Model inputs (N, C, H, W) for int8 calibration (not the test split).
    folder : str or Path
        Where the runtime files are written.
    batch_size : int, optional
        Images per calibration batch.
    calibration_batches : int, optional
        Largest number of calibration batches.

    Returns
    -------
    nn.Module
        The model prepared for inference.
    """
    import onnx
    from onnx.compose import merge_models

    folder = Path(folder)
    fast = prepare_for_inference(model)
    images = np.asarray(calibration_images, dtype=np.float32)
    calibration = [images[i:i + batch_size] for i in range(0, len(images), batch_size)][:calibration_batches]
    example = torch.from_numpy(images[:2])
    # The trunk is exported and quantised alone, then the head appended to each graph: int8 stays in the trunk.
    trunk = export_onnx(_Trunk(fast), example, folder / RUNTIME_FILES["onnxruntime"], output_names=GRAPH_OUTPUTS[:1])
    quantize_int8(trunk, calibration, folder / RUNTIME_FILES["onnxruntime-int8"])
    with torch.inference_mode():
        features = fast.feature_maps(example)
    head_file = export_onnx(_CamHead(fast.classifier, tuple(features.shape[-2:]), tuple(example.shape[-2:])), features,
                            folder / "head.onnx",
                            output_names=GRAPH_OUTPUTS[1:])
    head = onnx.load(str(head_file))
    head_file.unlink()
    head.graph.input[0].name = "head_input"  # export_onnx names every graph's input alike
    for node in head.graph.node:
        node.input[:] = ["head_input" if name == INPUT_NAME else name for name in node.input]
    for name in {RUNTIME_FILES["onnxruntime"], RUNTIME_FILES["onnxruntime-int8"]}:
        graph = onnx.load(str(folder / name))
        head.ir_version = graph.ir_version
        merged = merge_models(graph, head, io_map=[(GRAPH_OUTPUTS[0], "head_input")], prefix2="head/",
                              outputs=[GRAPH_OUTPUTS[0], *(f"head/{o}" for o in GRAPH_OUTPUTS[1:])])
        for output in merged.graph.output[1:]:  # the head's outputs keep their own names
            _rename(merged.graph, output.name, output.name.removeprefix("head/"))
        onnx.save(merged, str(folder / name))
    probe_static_shapes(folder, tuple(example.shape))
    return fast


def _rename(graph, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` throughout an ONNX graph."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def runtime_classifier(runtime: str, folder: str | Path | None, fast: nn.Module) -> nn.Module:
    """The folded model itself (``torch``) or its graph in ``runtime`` (:class:`RuntimeClassifier`); ``torch-bf16``
    runs the trunk under bf16 autocast and the CAM path in fp32.

    Parameters
    ----------
    runtime : str
        Name of the runtime (:mod:`cellops.runtimes`).
    folder : str or Path or None
        Where :func:`export_classifier` wrote the runtime files.
    fast : nn.Module
        The folded torch model.

    Returns
    -------
    nn.Module
        ``fast`` for ``torch``, else a :class:`RuntimeClassifier`.
    """
    if runtime == "torch":
        return fast
    return RuntimeClassifier(load_runtime(runtime, folder, _Trunk(fast)), fast.classifier)


def runtime_checks(model: nn.Module, calibration_images: np.ndarray, test_images: np.ndarray,
                              test_labels: np.ndarray, positive: int, folder: str | Path, *,
                              runtimes: tuple[str, ...], tolerance: float, batch_size: int = 32,
                              repeats: int = 1, threshold: float | None = None) -> list[RuntimeCheck]:
    """Export the classifier into ``folder`` and measure each runtime on the test split (metric: accuracy at the
    stored operating point ``threshold``; ``tolerance``: the largest accuracy change accepted, either way, as a
    fraction: 0.005 is half a point).

    Parameters
    ----------
    model : nn.Module
        The trained classifier.
    calibration_images : np.ndarray
        Model inputs for int8 calibration.
    test_images : np.ndarray
        Model inputs of the test split.
    test_labels : np.ndarray
        Their class indices.
    positive : int
        The index of the positive class.
    folder : str or Path
        Where the runtime files are written.
    runtimes : tuple of str
        Names of the runtimes to measure.
    tolerance : float
        Largest accuracy change from torch fp32 accepted, as a fraction.
    batch_size : int, optional
        Images per forward pass.
    repeats : int, optional
        Timed repetitions of each pass over the split.
    threshold : float or None, optional
        The stored operating point (None: the most probable class).

    Returns
    -------
    list of RuntimeCheck
        One result per runtime.
    """
    from cellops.classifier.metrics import classification_scores
    from cellops.classifier.predict import explain

    fast = export_classifier(model, calibration_images, folder, batch_size)

    def evaluate(module: nn.Module) -> float:
        probabilities, _ = explain(module, test_images, batch_size)  # what the service does: labels and CAMs
        return classification_scores(probabilities, np.asarray(test_labels), positive, threshold=threshold).accuracy

    return measure_runtimes(lambda runtime: runtime_classifier(runtime, folder, fast), evaluate, runtimes,
                            tolerance, repeats=repeats, untimed=default_skips(runtimes))
