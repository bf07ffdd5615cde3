"""The classifier in faster CPU runtimes (:mod:`cellops.runtimes`), each checked on the test split: accuracy within
a tolerance of torch fp32's, timed over classifying and explaining (CAM) the whole split.

What is exported is the convolutional trunk (``feature_maps``); global average pooling and the linear layer stay in
torch (a few thousand multiply-adds), so every runtime still yields the feature maps class-activation maps need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cellops.inference import prepare_for_inference
from cellops.runtimes import RuntimeCheck, default_skips, export_runtime_files, load_runtime, measure_runtimes


class _Trunk(nn.Module):
    """``model.feature_maps`` as a module of its own, for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.feature_maps(x)


class RuntimeClassifier(nn.Module):
    """A GAP classifier whose trunk runs in another runtime: ``feature_maps`` there, ``classifier`` (the linear layer)
    in torch, so :func:`models.cam.class_activation_maps` takes it like the torch model.

    Parameters
    ----------
    trunk : nn.Module
        The convolutional trunk in its runtime (maps images to feature maps).
    classifier : nn.Linear
        The torch model's final linear layer.
    """

    def __init__(self, trunk: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.trunk, self.classifier = trunk, classifier

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
        return self.trunk(x)

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
        return self.classifier(self.feature_maps(x).mean(dim=(2, 3)))


def export_classifier(model: nn.Module, calibration_images: np.ndarray, folder: str | Path,
                      batch_size: int = 32, calibration_batches: int = 8) -> nn.Module:
    """Fold ``model`` for inference and write the fp32 and int8 ONNX graphs of its trunk into ``folder`` (images of
    the calibration images' size, any batch); returns the folded torch model.

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
    fast = prepare_for_inference(model)
    images = np.asarray(calibration_images, dtype=np.float32)
    calibration = [images[i:i + batch_size] for i in range(0, len(images), batch_size)][:calibration_batches]
    export_runtime_files(_Trunk(fast), torch.from_numpy(images[:2]), calibration, folder)
    return fast


def runtime_classifier(runtime: str, folder: str | Path | None, fast: nn.Module) -> nn.Module:
    """The folded model itself (``torch``) or its trunk in ``runtime`` behind its linear layer.

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
