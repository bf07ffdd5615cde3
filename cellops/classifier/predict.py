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

if TYPE_CHECKING:
    from cellops.io import FileReading


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
                redrawn = class_activation_maps(model, batch[differs], chosen[differs])[0]
                batch_maps[differs.numpy()] = redrawn.cpu().numpy()
        maps.append(batch_maps)
        probabilities.append(batch_probabilities)
    if not maps:
        return np.zeros((0, 0)), np.zeros((0,) + tuple(images.shape[-2:]))
    return np.concatenate(probabilities), np.concatenate(maps)


def classify_files(model: nn.Module, paths: Sequence[Path], settings: ClassifierServing, *,
                   with_cams: bool = False, reading: FileReading | None = None,
                   ) -> tuple[list[dict], list[tuple[Path, str]], np.ndarray | None, np.ndarray]:
    """Label and class probabilities of every readable file (one row each); unreadable files are returned with
    the reason, and the batch goes on. With ``with_cams`` also the CAMs (N, size, size) of the readable files;
    the prepared model inputs are returned last (for overlays).

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

    Returns
    -------
    rows : list of dict
        One row per readable file: ``file``, ``label`` and ``p_<class>`` for every class.
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
    rows = []
    for path, p, label in zip(readable, probabilities, settings.predicted_classes(probabilities)):
        row = {"file": str(path), "label": settings.classes[int(label)]}
        row.update({f"p_{name}": float(p[i]) for i, name in enumerate(settings.classes)})
        rows.append(row)
    return rows, failures, cams, images


def classify_image_to_files(model: nn.Module, path: Path, out_dir: str | Path, stem: str,
                            settings: ClassifierServing, *, cams: bool = False,
                            reading: FileReading | None = None) -> dict:
    """Label and class probabilities of one image file (a batch predictor: :func:`cellops.batch.run_batch`); with
    ``cams`` also its CAM overlay ``<stem>_cam.png`` under ``out_dir``. An unreadable image raises a ValueError
    naming the file and why.

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

    Returns
    -------
    dict
        ``outputs`` (files written), ``label`` and ``p_<class>`` for every class.

    Raises
    ------
    ValueError
        When the image cannot be read or used.
    """
    from PIL import Image

    rows, failures, maps, inputs = classify_files(model, [path], settings, with_cams=cams, reading=reading)
    if failures:
        raise ValueError(failures[0][1])
    result = {key: value for key, value in rows[0].items() if key != "file"}
    outputs = []
    if cams and maps is not None:
        Image.fromarray(cam_overlay(inputs[0], maps[0])).save(Path(out_dir) / f"{stem}_cam.png")
        outputs.append(f"{stem}_cam.png")
    return {"outputs": outputs, **result}
