"""Steps of the classical analyses (colonies, nuclei, calcium): validation of the image folder, and the dataset
report (analysis, group statistics, accuracy against the shipped ground truth) logged to MLflow.

Both are thin adapters: :func:`cellops.reports.run_report` does the work, for `cellops report` (the DVC stages)
exactly as here.
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

from cellops.lineage import data_dir_for
from cellops.classical.analyses import analysis_settings
from cellops.config import from_mapping
from cellops.io import ground_truth_file, write_table
from cellops.reports import DatasetReport, dataset_files, run_report
from cellops.validation import ImageSetExpectations, validate_image_files
from steps.validation import data_docs_page
from tracking.runs import log_run_config
from tracking.tags import lineage_to_tags

logger = get_logger(__name__)


@step
def validate_image_folder(
    lineage: dict,
    data_dir: str,
    pattern: str,
    ground_truth_suffix: str | None,
    expectations: dict,
) -> tuple[Annotated[dict, "validation_result"], Annotated[HTMLString, "data_docs"]]:
    """Great Expectations suite over the images of a folder (of the lineage's ``data_rev`` when it names one; kept
    as artifacts, pass or fail)."""
    files = dataset_files(data_dir_for(data_dir, lineage), pattern, ground_truth_suffix)
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in expectations.items()}
    truth = {str(f): ground_truth_file(f, ground_truth_suffix).exists() for f in files} if ground_truth_suffix else None
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_image_files(files, from_mapping(ImageSetExpectations, settings), truth,
                                      data_docs_dir=Path(tmp))
        html = data_docs_page(Path(tmp))
    log_metadata(metadata={"validation_success": report.success, "failed_expectations": report.failures,
                           "n_files": len(files)})
    return {"success": report.success, "failures": report.failures, "results": report.results}, html


def _report(kind: str, lineage: dict, data_dir: str, out_dir: str, analysis: dict, report: dict) -> DatasetReport:
    """Run the dataset report and log it (parameters with their defaults, metrics, tables, figures) to MLflow."""
    log_run_config()
    mlflow.set_tags(lineage_to_tags(lineage))
    result = run_report(kind, str(data_dir_for(data_dir, lineage)), out_dir, analysis, report)
    resolved, reading = analysis_settings(kind, analysis)
    mlflow.log_params({f"analysis.{k}": v for k, v in {**asdict(resolved), **asdict(reading)}.items()})
    mlflow.log_metrics({k: float(v) for k, v in result.accuracy.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in result.tables.items():
            mlflow.log_artifact(str(write_table(table, Path(tmp) / f"{name}.csv")), artifact_path="tables")
    for figure in result.figures[:4]:
        mlflow.log_artifact(str(figure), artifact_path="figures")
    log_metadata(metadata={"accuracy": result.accuracy})
    logger.info("accuracy: %s", result.accuracy)
    return result


def _figure(result: DatasetReport) -> Image.Image:
    return Image.open(result.figures[0]).copy()


@step
def report_colonies(
    lineage: dict, data_dir: str, out_dir: str, analysis: dict, report: dict,
) -> tuple[Annotated[pd.DataFrame, "colony_table"], Annotated[dict, "colony_accuracy"],
           Annotated[Image.Image, "colony_overlay"]]:
    """Measure every colony of every image; score detection (F1 at IoU) and area against the COCO ground truth."""
    result = _report("colonies", lineage, data_dir, out_dir, analysis, report)
    return result.tables["colonies"], result.accuracy, _figure(result)


@step
def report_nuclei(
    lineage: dict, data_dir: str, out_dir: str, analysis: dict, report: dict,
) -> tuple[Annotated[pd.DataFrame, "nucleus_table"], Annotated[pd.DataFrame, "group_statistics"],
           Annotated[dict, "nucleus_accuracy"], Annotated[Image.Image, "shape_by_group_plot"]]:
    """Segment and measure nuclei per group, compare groups, and score against the shipped ground truth."""
    result = _report("nuclei", lineage, data_dir, out_dir, analysis, report)
    return result.tables["nuclei"], result.tables["group_statistics"], result.accuracy, _figure(result)


@step
def report_calcium(
    lineage: dict, data_dir: str, out_dir: str, analysis: dict, report: dict,
) -> tuple[Annotated[pd.DataFrame, "cell_responses"], Annotated[pd.DataFrame, "group_curves"],
           Annotated[dict, "calcium_accuracy"], Annotated[Image.Image, "group_curves_plot"]]:
    """dF/F0 traces and responses per cell and group; traces scored against the ground-truth traces."""
    result = _report("calcium", lineage, data_dir, out_dir, analysis, report)
    return result.tables["cell_responses"], result.tables["group_curves"], result.accuracy, _figure(result)
