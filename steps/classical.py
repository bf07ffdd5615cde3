"""Steps of the classical analyses (colonies, nuclei, calcium): lineage, validation, analysis + MLflow logging.

Each analysis step reads the versioned data folder, calls the cellops functions, scores the result against
the ground truth shipped with the data (when there is some), logs parameters, metrics, tables and figures to
MLflow and returns the tables as ZenML artifacts.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
from PIL import Image
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cellops import analyze as batch
from cellops.classical.calcium import CalciumParams
from cellops.classical.colonies import ColonyParams
from cellops.classical.common import params_from_dict
from cellops.classical.nuclei import NucleusParams
from cellops.lineage import collect_lineage
from cellops.scoring import score_calcium, score_colonies, score_nuclei
from cellops.validation import ImageSetExpectations, validate_image_files
from steps.tracking import log_run_config
from steps.validation import data_docs_page

logger = get_logger(__name__)


def _files(data_dir: str, pattern: str) -> list[Path]:
    files = sorted(p for p in Path(data_dir).glob(pattern) if not p.stem.endswith("_labels"))
    if not files:
        raise FileNotFoundError(f"{data_dir}: no files match {pattern!r}; run `make data` or add your images")
    return files


def _log_tables(tables: dict[str, pd.DataFrame], artifact_path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in tables.items():
            table.to_csv(Path(tmp) / f"{name}.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / f"{name}.csv"), artifact_path=artifact_path)


def _start(lineage: dict, params: object) -> None:
    log_run_config()
    mlflow.set_tags({f"lineage.{k}": str(v) for k, v in lineage.items()})
    mlflow.log_params({f"analysis.{k}": v for k, v in asdict(params).items()})


@step
def record_lineage(dvc_file: str = "data.dvc") -> Annotated[dict, "lineage"]:
    """The DVC data version and git commit this run analyses."""
    lineage = collect_lineage(dvc_file).as_dict()
    log_metadata(metadata={"lineage": lineage})
    return lineage


@step
def validate_image_folder(
    data_dir: str,
    pattern: str,
    ground_truth_suffix: str | None = None,
    expectations: dict | None = None,
) -> tuple[Annotated[dict, "validation_result"], Annotated[HTMLString, "data_docs"]]:
    """Great Expectations suite over the images of a folder (kept as artifacts, pass or fail)."""
    files = _files(data_dir, pattern)
    settings = dict(expectations or {})
    for key in ("allowed_ndim", "allowed_dtypes"):
        if key in settings:
            settings[key] = tuple(settings[key])
    truth = None
    if ground_truth_suffix:
        truth = {str(f): f.with_name(f.stem + ground_truth_suffix).exists() for f in files}
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_image_files(files, ImageSetExpectations(**settings), truth, data_docs_dir=Path(tmp))
        html = data_docs_page(Path(tmp))
    log_metadata(metadata={"validation_success": report.success, "failed_expectations": report.failures,
                           "n_files": len(files)})
    return {"success": report.success, "failures": report.failures, "results": report.results}, html


@step
def analyse_colonies(
    lineage: dict,
    data_dir: str = "data/colonies",
    annotations: str = "annotations.json",
    params: dict | None = None,
    out_dir: str = "outputs/colonies",
    iou_threshold: float = 0.5,
) -> tuple[Annotated[pd.DataFrame, "colony_table"], Annotated[dict, "colony_accuracy"],
           Annotated[Image.Image, "colony_overlay"]]:
    """Measure every colony of every image; score detection (F1 at IoU) and area against the COCO ground truth."""
    colony_params = params_from_dict(ColonyParams, params)
    _start(lineage, colony_params)
    files = _files(data_dir, "images/*.png")
    report = batch.analyze_colonies(files, Path(out_dir), colony_params, group="colonies")
    if report.failures:
        raise ValueError(f"colony analysis failed on {len(report.failures)} files: {report.failures}")
    coco_path = Path(data_dir) / annotations
    accuracy: dict = {"n_images": len(files), "n_colonies": len(report.table)}
    if coco_path.is_file():
        accuracy.update(score_colonies(files, Path(out_dir), coco_path, iou_threshold=iou_threshold))
    mlflow.log_metrics({k: float(v) for k, v in accuracy.items()})
    _log_tables({"colonies": report.table}, "tables")
    overlays = sorted(Path(out_dir).glob("*_overlay.png"))
    for overlay in overlays[:4]:
        mlflow.log_artifact(str(overlay), artifact_path="overlays")
    log_metadata(metadata={"accuracy": accuracy})
    logger.info("colonies: %s", accuracy)
    return report.table, accuracy, Image.open(overlays[0]).copy()


@step
def analyse_nuclei(
    lineage: dict,
    data_dir: str = "data/nuclei",
    groups: list[str] | None = None,
    params: dict | None = None,
    out_dir: str = "outputs/nuclei",
    features: list[str] | None = None,
    iou_threshold: float = 0.5,
) -> tuple[Annotated[pd.DataFrame, "nucleus_table"], Annotated[pd.DataFrame, "group_statistics"],
           Annotated[dict, "nucleus_accuracy"], Annotated[Image.Image, "shape_by_group_plot"]]:
    """Segment and measure nuclei per group, compare groups, and score against the shipped ground truth."""
    nucleus_params = params_from_dict(NucleusParams, params)
    _start(lineage, nucleus_params)
    features = features or batch.NUCLEUS_FEATURES
    groups = groups or sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir())
    files_by_group = {group: _files(str(Path(data_dir) / group), "*.tif") for group in groups}
    tables = []
    for group, files in files_by_group.items():
        report = batch.analyze_nuclei(files, Path(out_dir) / group, nucleus_params, group)
        if report.failures:
            raise ValueError(f"nucleus analysis failed on {len(report.failures)} files: {report.failures}")
        tables.append(report.table)
    table = pd.concat(tables, ignore_index=True)
    summary, statistics, plot = batch.nuclei_group_report(table, Path(out_dir), features)
    ellipses_file = Path(data_dir) / "ellipses.csv"
    ellipses = pd.read_csv(ellipses_file) if ellipses_file.is_file() else None
    accuracy: dict = {"n_nuclei": len(table), **{f"n_{g}": int((table["group"] == g).sum()) for g in groups},
                      **score_nuclei(files_by_group, Path(out_dir), table, ellipses, iou_threshold=iou_threshold)}
    kruskal = statistics[(statistics["feature"] == "aspect_ratio_ellipse") & (statistics["comparison"] == "all groups")]
    if len(kruskal):
        accuracy["aspect_ratio_kruskal_p"] = float(kruskal["p_value"].iloc[0])
    mlflow.log_metrics({k: float(v) for k, v in accuracy.items()})
    _log_tables({"nuclei": table, "group_statistics": statistics, "group_summary": summary}, "tables")
    mlflow.log_artifact(str(plot), artifact_path="plots")
    log_metadata(metadata={"accuracy": accuracy})
    logger.info("nuclei: %s", accuracy)
    return table, statistics, accuracy, Image.open(plot).copy()


@step
def analyse_calcium(
    lineage: dict,
    data_dir: str = "data/calcium",
    groups: list[str] | None = None,
    params: dict | None = None,
    out_dir: str = "outputs/calcium",
    iou_threshold: float = 0.5,
) -> tuple[Annotated[pd.DataFrame, "cell_responses"], Annotated[pd.DataFrame, "group_curves"],
           Annotated[dict, "calcium_accuracy"], Annotated[Image.Image, "group_curves_plot"]]:
    """dF/F0 traces and responses per cell and group; traces scored against the ground-truth traces."""
    calcium_params = params_from_dict(CalciumParams, params)
    _start(lineage, calcium_params)
    groups = groups or sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir())
    files = [f for g in groups for f in _files(str(Path(data_dir) / g), "*.tif")]
    report = batch.analyze_calcium(files, Path(out_dir), calcium_params)
    if report.failures:
        raise ValueError(f"calcium analysis failed on {len(report.failures)} files: {report.failures}")
    curves = pd.read_csv(Path(out_dir) / "calcium_group_curves.csv")
    accuracy: dict = {"n_cells": len(report.table),
                      "responder_fraction": float(report.table["responder"].mean()) if len(report.table) else 0.0,
                      **score_calcium(files, Path(out_dir), iou_threshold=iou_threshold)}
    mlflow.log_metrics({k: float(v) for k, v in accuracy.items()})
    _log_tables({"cell_responses": report.table, "group_curves": curves}, "tables")
    plot = Path(out_dir) / "calcium_group_curves.png"
    mlflow.log_artifact(str(plot), artifact_path="plots")
    log_metadata(metadata={"accuracy": accuracy})
    logger.info("calcium: %s", accuracy)
    return report.table, curves, accuracy, Image.open(plot).copy()
