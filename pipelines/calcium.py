"""Calcium influx assay on time-lapse fluorescence stacks.

``zenml pipeline run pipelines.calcium.calcium_pipeline -c configs/calcium.yaml``
"""

from zenml import pipeline

from steps.classical import analyse_calcium, validate_image_folder
from steps.lineage import record_lineage
from steps.validation import require_valid_dataset


@pipeline
def calcium_pipeline() -> None:
    """lineage -> validate stacks -> segment cells, dF/F0 traces, responses, group curves."""
    lineage = record_lineage()
    validation_result, _ = validate_image_folder()
    valid = require_valid_dataset(validation_result)
    analyse_calcium(lineage, after=[valid])
