"""Figures of a classifier comparison: grouped score bars (as in the lab's figure), ROC curves in one plot, and
galleries of class-activation-map overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellops.plots import plt  # Agg backend already chosen there


def comparison_bars(table: dict[str, dict[str, float]], metrics: Sequence[str], path: str | Path) -> Path:
    """Grouped bars: one group per metric, one bar per model (``table[model][metric]``), values printed on top."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    models = list(table)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) * max(1, len(models)) / 2), 3.6))
    for i, model in enumerate(models):
        values = [table[model].get(metric, float("nan")) for metric in metrics]
        bars = ax.bar(np.arange(len(metrics)) + (i - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(np.arange(len(metrics)), metrics)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("test score")
    ax.legend(fontsize=7, ncols=min(4, len(models)), loc="lower center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path) -> Path:
    """Every model's ROC curve (false-positive rate, true-positive rate, AUC) in one plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cam_gallery(overlays: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, columns: int = 6) -> Path:
    """A grid of CAM overlays (RGB uint8) with a title each (e.g. "true EC / said EC 0.97")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = max(1, -(-len(overlays) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, overlay, title in zip(axes.ravel(), overlays, titles):
        ax.imshow(overlay)
        ax.set_title(title, fontsize=7)
    if not overlays:
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cam_galleries(model, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], batch_size: int,
                  per_gallery: int, folder: str | Path) -> list[Path]:
    """``correct.png`` and ``wrong.png`` in ``folder``: CAM overlays of up to ``per_gallery`` correctly and wrongly
    classified images, each titled with its true class, the predicted one and its probability."""
    from cellops.classifier.predict import cam_overlay, explain

    probabilities, cams = explain(model, images, batch_size)
    predicted = probabilities.argmax(axis=1)
    paths = []
    for name, chosen in (("correct", np.flatnonzero(predicted == labels)), ("wrong", np.flatnonzero(predicted != labels))):
        chosen = chosen[:per_gallery]
        titles = [f"true {classes[labels[i]]}\nsaid {classes[predicted[i]]} {probabilities[i, predicted[i]]:.2f}"
                  for i in chosen]
        paths.append(cam_gallery([cam_overlay(images[i], cams[i]) for i in chosen], titles, Path(folder) / f"{name}.png"))
    return paths
