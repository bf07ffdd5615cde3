"""hiPSC colony recognition in phase contrast (classical OpenCV).

``zenml pipeline run pipelines.colonies.colony_pipeline -c configs/colonies.yaml``
"""

from zenml import pipeline

from steps.classical import analyse_colonies, validate_image_folder
from steps.lineage import record_lineage
from steps.validation import require_valid_dataset


@pipeline
def colony_pipeline() -> None:
    """lineage -> validate images -> detect and measure colonies, score against COCO ground truth."""
    lineage = record_lineage()
    validation_result, _ = validate_image_folder()
    valid = require_valid_dataset(validation_result)
    analyse_colonies(lineage, after=[valid])
