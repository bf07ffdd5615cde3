"""Figures for reports: segmentation overlays and training curves (numpy/matplotlib, no tracking code)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: pipelines and services have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def segmentation_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB overlay of a prediction on a grey slice: green true positive, red false positive, blue missed.

    Examples
    --------
    >>> img = np.zeros((2, 2), np.uint8)
    >>> segmentation_overlay(img, np.array([[1, 0], [1, 0]]), np.array([[1, 1], [0, 0]]))[0, 1].tolist()
    [115, 0, 0]
    """
    if not image.shape == truth.shape == prediction.shape:
        raise ValueError(f"shapes differ: image {image.shape}, truth {truth.shape}, prediction {prediction.shape}")
    grey = image.astype(np.float32)
    span = float(grey.max() - grey.min())
    grey = (grey - grey.min()) / span * 255.0 if span > 0 else np.zeros_like(grey)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    for region, colour in (
        (truth & prediction, (0, 255, 0)),
        (~truth & prediction, (255, 0, 0)),
        (truth & ~prediction, (0, 64, 255)),
    ):
        rgb[region] = (1 - alpha) * rgb[region] + alpha * np.array(colour, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def training_curves(history: dict[str, list[float]], path: str | Path) -> Path:
    """One panel per series in ``history`` (loss, validation IoU...), against the epoch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(history), figsize=(4 * len(history), 3), squeeze=False)
    for ax, (name, values) in zip(axes[0], history.items()):
        ax.plot(range(len(values)), values, marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
