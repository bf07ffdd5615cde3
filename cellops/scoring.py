"""Accuracy of the classical analyses against the ground truth shipped with a dataset.

Each function reads what :mod:`cellops.classical.analyses` wrote (label TIFFs, CSV tables) next to the dataset's own
ground truth (COCO annotations, label images, drawn ellipses, true traces) and returns plain figures, so a
pipeline step, a DVC stage or a notebook can all score a run the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cellops.coco import coco_to_labels
from cellops.io import ground_truth_file, read_tiff_stack
from cellops.metrics import match_instances


def _labels(path: Path) -> np.ndarray:
    return read_tiff_stack(path).astype(np.int32)


def score_colonies(files: list[Path], out_dir: Path, annotations: Path, *, iou_threshold: float = 0.5) -> dict:
    """Mean detection F1 at ``iou_threshold`` and median relative area error of matched colonies."""
    coco = json.loads(annotations.read_text())
    f1s, errors = [], []
    for path in files:
        truth = coco_to_labels(coco, path.name)
        found = _labels(out_dir / f"{path.stem}_colonies.tif")
        match = match_instances(truth, found, iou_threshold=iou_threshold)
        f1s.append(match.f1)
        errors += [abs((found == p).sum() / (truth == t).sum() - 1) for t, p, _ in match.pairs]
    return {"detection_f1": float(np.mean(f1s)),
            "median_relative_area_error": float(np.median(errors)) if errors else float("nan")}


def score_nuclei(files_by_group: dict[str, list[Path]], out_dir: Path, table: pd.DataFrame,
                 ellipses: pd.DataFrame | None, *, ground_truth_suffix: str = "_labels.tif",
                 iou_threshold: float = 0.5) -> dict:
    """Mean nucleus F1 against ``<stem><ground_truth_suffix>`` and median relative error of the ellipse aspect ratio
    against the drawn one (``ellipses``: columns image, label, aspect_ratio). Files without labels are skipped."""
    f1s, errors = [], []
    for group, files in files_by_group.items():
        for path in files:
            truth_file = ground_truth_file(path, ground_truth_suffix)
            if not truth_file.is_file():
                continue
            match = match_instances(_labels(truth_file), _labels(out_dir / group / f"{path.stem}_nuclei.tif"),
                                    iou_threshold=iou_threshold)
            f1s.append(match.f1)
            if ellipses is None:
                continue
            drawn = ellipses[ellipses["image"] == f"{group}/{path.name}"].set_index("label")["aspect_ratio"]
            mine = table[(table["image"] == path.name) & (table["group"] == group)]
            measured = mine.set_index("label")["aspect_ratio_ellipse"]
            errors += [abs(measured[p] / drawn[t] - 1) for t, p, _ in match.pairs if t in drawn.index]
    scores: dict = {}
    if f1s:
        scores["nucleus_f1"] = float(np.mean(f1s))
    if errors:
        scores["median_relative_aspect_ratio_error"] = float(np.median(errors))
    return scores


def score_calcium(files: list[Path], out_dir: Path, *, ground_truth_suffix: str = "_labels.tif",
                  iou_threshold: float = 0.5) -> dict:
    """Median Pearson correlation of recovered and true dF/F0 over matched cells (labels
    ``<stem><ground_truth_suffix>``, traces ``<stem>_traces.csv``)."""
    correlations = []
    for path in files:
        truth_file, traces_file = ground_truth_file(path, ground_truth_suffix), ground_truth_file(path, "_traces.csv")
        if not (truth_file.is_file() and traces_file.is_file()):
            continue
        true_traces = pd.read_csv(traces_file).drop(columns="frame")
        dff = pd.read_csv(out_dir / f"{path.stem}_dff.csv").drop(columns="time_s")
        match = match_instances(_labels(truth_file), _labels(out_dir / f"{path.stem}_cells.tif"),
                                iou_threshold=iou_threshold)
        correlations += [float(np.corrcoef(dff[f"cell_{p}"], true_traces[f"cell_{t}"])[0, 1]) for t, p, _ in match.pairs]
    return {"median_trace_correlation": float(np.median(correlations))} if correlations else {}
