"""hiPSC colony recognition in phase contrast (classical OpenCV).

``zenml pipeline run pipelines.colonies.colony_pipeline -c configs/colonies.yaml``
"""

from zenml import pipeline

from steps.classical import report_colonies, validate_image_folder
from steps.lineage import record_lineage
from steps.validation import require_valid_dataset


@pipeline
def colony_pipeline(data_dir: str, out_dir: str, expectations: dict, analysis: dict, report: dict) -> None:
    """lineage -> validate images -> detect and measure colonies, score against COCO ground truth."""
    lineage = record_lineage()
    validation_result, _ = validate_image_folder(lineage, data_dir=data_dir, pattern=report["pattern"], ground_truth_suffix=None,
                                                 expectations=expectations)
    valid = require_valid_dataset(validation_result)
    report_colonies(lineage, data_dir=data_dir, out_dir=out_dir, analysis=analysis, report=report, after=[valid])
