"""Nuclear shape of HaCaT keratinocytes across culture groups (classical segmentation + statistics).

``zenml pipeline run pipelines.nuclei.nuclei_pipeline -c configs/nuclei.yaml``
"""

from zenml import pipeline

from steps.classical import analyse_nuclei, validate_image_folder
from steps.lineage import record_lineage
from steps.validation import require_valid_dataset


@pipeline
def nuclei_pipeline() -> None:
    """lineage -> validate images -> segment, measure, compare groups, score against ground truth."""
    lineage = record_lineage()
    validation_result, _ = validate_image_folder()
    valid = require_valid_dataset(validation_result)
    analyse_nuclei(lineage, after=[valid])
