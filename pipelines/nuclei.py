"""Nuclear shape of HaCaT keratinocytes across culture groups (classical segmentation + statistics).

``zenml pipeline run pipelines.nuclei.nuclei_pipeline -c configs/nuclei.yaml``
"""

from zenml import pipeline

from steps.classical import report_nuclei, validate_image_folder
from steps.lineage import record_lineage
from steps.validation import require_valid_dataset


@pipeline
def nuclei_pipeline(data_dir: str, out_dir: str, expectations: dict, analysis: dict, report: dict) -> None:
    """lineage -> validate images -> segment, measure, compare groups, score against ground truth."""
    lineage = record_lineage()
    validation_result, _ = validate_image_folder(lineage, data_dir=data_dir, pattern=f"*/{report['pattern']}",
                                                 ground_truth_suffix=report["ground_truth_suffix"],
                                                 expectations=expectations)
    valid = require_valid_dataset(validation_result)
    report_nuclei(lineage, data_dir=data_dir, out_dir=out_dir, analysis=analysis, report=report, after=[valid])
