"""Applying a trained classifier: the settings stored with it, labels and probabilities of image files, and
class-activation-map overlays (significant regions red, trivial ones blue)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cellops.classifier.specs import ClassifierServing
from cellops.uncertainty import Uncertainty, normalised_entropy

if TYPE_CHECKING:
    from cellops.io import FileReading
    from cellops.ood import OODReference


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture of ``image`` ((C, H, W) or (H, W), floats in [0, 1]) under the class-activation map
    ``cam`` ((H, W) in [0, 1]) in the jet colours: significant regions red, trivial ones blue.

    Parameters
    ----------
    image : np.ndarray
        (C, H, W) or (H, W), floats in [0, 1]; channels are averaged to grey.
    cam : np.ndarray
        Class-activation map (H, W) in [0, 1].
    alpha : float, optional
        Weight of the map's colours against the image.

    Returns
    -------
    np.ndarray
        RGB uint8 picture (H, W, 3).

    Examples
    --------
    >>> cam_overlay(np.zeros((1, 4, 4)), np.ones((4, 4))).shape
    (4, 4, 3)
    """
    from matplotlib import colormaps

    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=0)
    heat = colormaps["jet"](np.clip(np.asarray(cam, dtype=np.float64), 0.0, 1.0))[..., :3]
    mixed = (1 - alpha) * grey[..., None] + alpha * heat
    return np.round(np.clip(mixed, 0.0, 1.0) * 255).astype(np.uint8)


def explain(model: nn.Module, images: np.ndarray, batch_size: int,
            decide: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, classes) and the CAM of each image's predicted class (N, H, W), batch by batch, one
    forward pass per batch (see :func:`models.cam.class_activation_maps`). ``decide`` maps probabilities to the
    predicted classes (:meth:`ClassifierServing.predicted_classes`: the stored operating point); by default the
    most probable class. Where it differs from the most probable, that image's map is computed again for it.

    Parameters
    ----------
    model : nn.Module
        The classifier (put in eval mode).
    images : np.ndarray
        Model inputs (N, C, H, W) float in [0, 1].
    batch_size : int
        Images per forward pass.
    decide : callable, optional
        Maps probabilities (N, classes) to the predicted class of each row.

    Returns
    -------
    probabilities : np.ndarray
        Class probabilities (N, classes).
    cams : np.ndarray
        The map of each image's predicted class (N, H, W).
    """
    from models.cam import class_activation_maps

    model.eval()
    probabilities, maps = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.as_tensor(images[start:start + batch_size])
        cams, logits = class_activation_maps(model, batch)
        batch_probabilities = torch.softmax(logits.double(), dim=1).cpu().numpy()
        batch_maps = cams.cpu().numpy()
        if decide is not None:
            chosen = torch.as_tensor(decide(batch_probabilities), dtype=torch.long)
            differs = chosen != logits.argmax(dim=1).cpu()
            if bool(differs.any()):
                batch_maps = batch_maps.copy()
                if hasattr(model, "class_activation_maps"):
                    # A graph in a runtime: the whole batch again, as a subset's new shape would compile a new graph.
                    redrawn = class_activation_maps(model, batch, chosen)[0][differs]
                else:
                    redrawn = class_activation_maps(model, batch[differs], chosen[differs])[0]
                batch_maps[differs.numpy()] = redrawn.cpu().numpy()
        maps.append(batch_maps)
        probabilities.append(batch_probabilities)
    if not maps:
        return np.zeros((0, 0)), np.zeros((0,) + tuple(images.shape[-2:]))
    return np.concatenate(probabilities), np.concatenate(maps)


#: The uncertainty methods of :func:`classify_with_uncertainty`.
UNCERTAINTY_METHODS = ("entropy", "mc-dropout")
#: The method used when the serving settings name none. Chosen by measurement (``benchmarks/uncertainty_cost.py``):
#: efficientcellnets (dropout 0.2) trained briefly on synthetic endothelial images (3 seeds, 94-95 % accuracy on
#: 400 held-out images each) find their mistakes as well by the entropy of the one served pass as by MC dropout
#: (AUROC of error detection 0.884 against 0.885; MC dropout's mutual information 0.71), and entropy costs nothing
#: beyond the prediction where MC dropout costs MC_SAMPLES passes; it also holds on every runtime the registry may
#: serve (ONNX Runtime and OpenVINO graphs have no dropout to switch on).
DEFAULT_UNCERTAINTY = "entropy"
#: Forward passes with dropout on, for ``mc-dropout``.
MC_SAMPLES = 16


def _dropout_modules(model: nn.Module) -> list[nn.Module]:
    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    return [m for m in model.modules() if isinstance(m, kinds) and m.p > 0]


@torch.no_grad()
def mc_dropout_probabilities(model: nn.Module, images: np.ndarray, batch_size: int, samples: int = MC_SAMPLES,
                             seed: int = 0) -> np.ndarray:
    """Class probabilities of ``samples`` forward passes with the network's dropout layers on (Monte Carlo
    dropout; batch normalisation and everything else stay in eval mode), seeded so that a rerun gives the same
    numbers; the model is left as it was.

    Parameters
    ----------
    model : nn.Module
        The classifier; it must hold dropout with ``p > 0``.
    images : np.ndarray
        Model inputs (N, C, H, W) float in [0, 1].
    batch_size : int
        Images per forward pass.
    samples : int, optional
        Passes per image.
    seed : int, optional
        Seed of the dropout masks (torch's global generator is left as it was).

    Returns
    -------
    np.ndarray
        float64 (samples, N, classes).

    Raises
    ------
    ValueError
        When the network has no dropout.
    """
    dropouts = _dropout_modules(model)
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layer: MC dropout needs one; use 'entropy'")
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    for module in dropouts:
        module.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tensor = torch.as_tensor(images)
            out = np.stack([np.concatenate([torch.softmax(model(tensor[i:i + batch_size].to(device)).double(), dim=1)
                                            .cpu().numpy() for i in range(0, len(tensor), batch_size)])
                            for _ in range(samples)])
    finally:
        model.train(was_training)
    return out


def classify_with_uncertainty(model: nn.Module, images: np.ndarray, settings: ClassifierServing, *,
                              method: str | None = None) -> tuple[np.ndarray, list[Uncertainty]]:
    """Class probabilities of prepared inputs (those :func:`cellops.classifier.train.predict_probabilities` serves,
    so the labels do not change) and how sure the classifier is of each image.

    ``entropy``: the entropy of the probabilities divided by ``log(classes)`` (one pass, the served one).
    ``mc-dropout``: the same of the mean of :data:`MC_SAMPLES` passes with dropout on
    (:func:`mc_dropout_probabilities`; networks with dropout only, e.g. efficientcellnet). Default: the serving
    settings' ``uncertainty`` when they have one, else :data:`DEFAULT_UNCERTAINTY`.

    Parameters
    ----------
    model : nn.Module
        The classifier.
    images : np.ndarray
        Model inputs (N, C, H, W) float in [0, 1], as :func:`explain` takes them.
    settings : ClassifierServing
        Batch size, as served.
    method : str, optional
        One of :data:`UNCERTAINTY_METHODS`.

    Returns
    -------
    probabilities : np.ndarray
        float64 (N, classes).
    uncertainties : list of Uncertainty
        One per image, in order.

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> settings = ClassifierServing(classes=("a", "b"), positive_class="b", channels=1, size=8, batch_size=4)
    >>> p, u = classify_with_uncertainty(net, np.zeros((3, 1, 2, 2), np.float32), settings)
    >>> p.shape, len(u), u[0].method
    ((3, 2), 3, 'entropy')
    """
    from cellops.classifier.train import predict_probabilities

    probabilities = predict_probabilities(model, images, settings.batch_size)
    return probabilities, uncertainties(model, images, probabilities, settings, method=method)


def uncertainties(model: nn.Module, images: np.ndarray, probabilities: np.ndarray, settings: ClassifierServing, *,
                  method: str | None = None) -> list[Uncertainty]:
    """The uncertainty of each image whose served ``probabilities`` are known already (see
    :func:`classify_with_uncertainty`): ``entropy`` costs nothing more, ``mc-dropout`` :data:`MC_SAMPLES` passes.

    Parameters
    ----------
    model : nn.Module
        The classifier.
    images : np.ndarray
        Model inputs (N, C, H, W) float in [0, 1].
    probabilities : np.ndarray
        Their served probabilities (N, classes).
    settings : ClassifierServing
        As served.
    method : str, optional
        One of :data:`UNCERTAINTY_METHODS` (default: the settings', else :data:`DEFAULT_UNCERTAINTY`).

    Returns
    -------
    list of Uncertainty
        One per image, in order.
    """
    method = method or getattr(settings, "uncertainty", None) or DEFAULT_UNCERTAINTY
    if method not in UNCERTAINTY_METHODS:
        raise ValueError(f"unknown uncertainty method {method!r}; one of {', '.join(UNCERTAINTY_METHODS)}")
    if len(probabilities) == 0:
        return []
    if method == "entropy":
        scores = normalised_entropy(probabilities)
    else:
        scores = normalised_entropy(mc_dropout_probabilities(model, images, settings.batch_size).mean(axis=0))
    return [Uncertainty(float(score), method) for score in scores]


def classify_files(model: nn.Module, paths: Sequence[Path], settings: ClassifierServing, *,
                   with_cams: bool = False, reading: FileReading | None = None, uncertainty: bool = False,
                   ) -> tuple[list[dict], list[tuple[Path, str]], np.ndarray | None, np.ndarray]:
    """Label and class probabilities of every readable file (one row each); unreadable files are returned with
    the reason, and the batch goes on. With ``with_cams`` also the CAMs (N, size, size) of the readable files;
    the prepared model inputs are returned last (for overlays). With ``uncertainty`` each row also holds
    ``uncertainty`` and ``uncertainty_method`` (:func:`uncertainties`).

    Parameters
    ----------
    model : nn.Module
        The classifier.
    paths : sequence of Path
        The image files.
    settings : ClassifierServing
        How images are prepared and classes decided, as served.
    with_cams : bool, optional
        Also compute the class-activation maps.
    reading : FileReading, optional
        The channel and scene to read from multi-channel or multi-scene files.
    uncertainty : bool, optional
        Also measure each image's uncertainty.

    Returns
    -------
    rows : list of dict
        One row per readable file: ``file``, ``label`` and ``p_<class>`` for every class (and the uncertainty).
    failures : list of tuple of (Path, str)
        The unreadable files with the reason.
    cams : np.ndarray or None
        The CAMs (N, size, size) of the readable files with ``with_cams``, else None.
    images : np.ndarray
        The prepared model inputs of the readable files.
    """
    from cellops.classifier.data import load_class_images

    images, failures = load_class_images(list(paths), channels=settings.channels, size=settings.size,
                                         normalization=settings.normalization, reading=reading)
    failed = {Path(p) for p, _ in failures}
    readable = [Path(p) for p in paths if Path(p) not in failed]
    if len(readable) == 0:
        return [], failures, None, images
    if with_cams:
        probabilities, cams = explain(model, images, settings.batch_size, decide=settings.predicted_classes)
    else:
        from cellops.classifier.train import predict_probabilities

        probabilities, cams = predict_probabilities(model, images, settings.batch_size), None
    measured = uncertainties(model, images, probabilities, settings) if uncertainty else [None] * len(readable)
    rows = []
    for path, p, label, u in zip(readable, probabilities, settings.predicted_classes(probabilities), measured):
        row = {"file": str(path), "label": settings.classes[int(label)]}
        row.update({f"p_{name}": float(p[i]) for i, name in enumerate(settings.classes)})
        if u is not None:
            row.update({"uncertainty": round(u.image, 6), "uncertainty_method": u.method})
        rows.append(row)
    return rows, failures, cams, images


def classify_image_to_files(model: nn.Module, path: Path, out_dir: str | Path, stem: str,
                            settings: ClassifierServing, *, cams: bool = False,
                            reading: FileReading | None = None, uncertainty: bool = False,
                            reference: OODReference | None = None, policy: str = "flag") -> dict:
    """Label and class probabilities of one image file (a batch predictor: :func:`cellops.batch.run_batch`); with
    ``cams`` also its CAM overlay ``<stem>_cam.png`` under ``out_dir``. An unreadable image raises a ValueError
    naming the file and why. The answer carries the image's out-of-distribution verdict
    (:func:`cellops.classifier.ood.verdict_for`, from the model input and the probabilities of the same pass).

    Parameters
    ----------
    model : nn.Module
        The classifier.
    path : Path
        The image file.
    out_dir : str or Path
        Folder of the overlay.
    stem : str
        Prefix of the overlay's name.
    settings : ClassifierServing
        How the image is prepared and the class decided, as served.
    cams : bool, optional
        Also write the CAM overlay.
    reading : FileReading, optional
        The channel and scene to read from a multi-channel or multi-scene file.
    uncertainty : bool, optional
        Also measure the image's uncertainty (``uncertainty``, ``uncertainty_method`` in the answer).
    reference : OODReference, optional
        The model version's OOD reference (None: it has none, and the verdict says so).
    policy : str, optional
        ``flag`` (answer and flag) or ``refuse`` (:func:`cellops.ood.enforce`).

    Returns
    -------
    dict
        ``outputs`` (files written), ``label`` and ``p_<class>`` for every class (and the uncertainty), then
        ``ood_score``, ``ood_threshold``, ``in_distribution`` and ``ood_reason``.

    Raises
    ------
    ValueError
        When the image cannot be read or used.
    cellops.ood.OutOfDistribution
        Under the ``refuse`` policy, for an image out of distribution (a ValueError: the batch records the file
        as failed with the message and goes on).
    """
    from PIL import Image

    from cellops.classifier.ood import verdict_for
    from cellops.ood import check_policy, enforce

    check_policy(policy)
    rows, failures, maps, inputs = classify_files(model, [path], settings, with_cams=cams, reading=reading,
                                                  uncertainty=uncertainty)
    if failures:
        raise ValueError(failures[0][1])
    result = {key: value for key, value in rows[0].items() if key != "file"}
    probabilities = np.array([result[f"p_{name}"] for name in settings.classes])
    verdict = enforce(verdict_for(reference, inputs[0], probabilities), policy)
    outputs = []
    if cams and maps is not None:
        Image.fromarray(cam_overlay(inputs[0], maps[0])).save(Path(out_dir) / f"{stem}_cam.png")
        outputs.append(f"{stem}_cam.png")
    return {"outputs": outputs, **result, **verdict.as_dict()}
