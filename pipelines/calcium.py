"""Calcium influx assay: time-lapse fluorescence, per-cell dF/F0, group curves and response metrics.

``zenml pipeline run pipelines.calcium.calcium_pipeline -c configs/calcium.yaml``
"""

from zenml import pipeline

from steps.classical import report_calcium, validate_image_folder
from steps.lineage import record_lineage
from steps.validation import require_valid_dataset


@pipeline
def calcium_pipeline(data_dir: str, out_dir: str, expectations: dict, analysis: dict, report: dict) -> None:
    """lineage -> validate movies -> segment cells, dF/F0 traces, group curves, score against true traces."""
    lineage = record_lineage()
    validation_result, _ = validate_image_folder(lineage, data_dir=data_dir, pattern=f"*/{report['pattern']}",
                                                 ground_truth_suffix=report["ground_truth_suffix"],
                                                 expectations=expectations)
    valid = require_valid_dataset(validation_result)
    report_calcium(lineage, data_dir=data_dir, out_dir=out_dir, analysis=analysis, report=report, after=[valid])
