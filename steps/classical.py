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

from cellops.classical.calcium import CalciumParams
from cellops.classical.colonies import ColonyParams
from cellops.classical.common import params_from_dict
from cellops.classical.nuclei import NucleusParams
from cellops.io import write_table
from cellops.reports import DatasetReport, calcium_report, colony_report, dataset_files, nuclei_report
from cellops.validation import ImageSetExpectations, validate_image_files
from steps.tracking import lineage_tags, log_run_config
from steps.validation import data_docs_page

logger = get_logger(__name__)


def _log_tables(tables: dict[str, pd.DataFrame], artifact_path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in tables.items():
            write_table(table, Path(tmp) / f"{name}.csv")
            mlflow.log_artifact(str(Path(tmp) / f"{name}.csv"), artifact_path=artifact_path)


def _start(lineage: dict, params: object) -> None:
    log_run_config()
    mlflow.set_tags(lineage_tags(lineage))
    mlflow.log_params({f"analysis.{k}": v for k, v in asdict(params).items()})


@step
def validate_image_folder(
    data_dir: str,
    pattern: str,
    ground_truth_suffix: str | None = None,
    expectations: dict | None = None,
) -> tuple[Annotated[dict, "validation_result"], Annotated[HTMLString, "data_docs"]]:
    """Great Expectations suite over the images of a folder (kept as artifacts, pass or fail)."""
    files = dataset_files(Path(data_dir), pattern)
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


def _log_report(report: DatasetReport, n_figures: int = 4) -> Image.Image:
    """Log a dataset report to the step's MLflow run; returns its headline figure for ZenML."""
    mlflow.log_metrics({k: float(v) for k, v in report.accuracy.items()})
    _log_tables(report.tables, "tables")
    for figure in report.figures[:n_figures]:
        mlflow.log_artifact(str(figure), artifact_path="figures")
    log_metadata(metadata={"accuracy": report.accuracy})
    logger.info("accuracy: %s", report.accuracy)
    return Image.open(report.figures[0]).copy()


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
    report = colony_report(Path(data_dir), Path(out_dir), colony_params, annotations=annotations,
                           iou_threshold=iou_threshold)
    figure = _log_report(report)
    return report.tables["colonies"], report.accuracy, figure


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
    report = nuclei_report(Path(data_dir), Path(out_dir), nucleus_params, groups=groups, features=features,
                           iou_threshold=iou_threshold)
    figure = _log_report(report)
    return report.tables["nuclei"], report.tables["group_statistics"], report.accuracy, figure


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
    report = calcium_report(Path(data_dir), Path(out_dir), calcium_params, groups=groups, iou_threshold=iou_threshold)
    figure = _log_report(report)
    return report.tables["cell_responses"], report.tables["group_curves"], report.accuracy, figure
