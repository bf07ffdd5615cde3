"""The corrections loop: a review set's corrections checked and added to the family's dataset as a new DVC data
version, then the family's training pipeline on that version (by default fine-tuning the champion on the
corrections mixed with the original training data); the promotion gate compares champion and candidate on the same
fixed test set, as always.

Run with ``zenml pipeline run pipelines.corrections.unet_pipeline -c configs/corrections_unet.yaml`` (and
``maskrcnn_pipeline``, ``classifier_pipeline``), or ``cellops corrections import REVIEW_DIR --train``.
"""

from zenml import pipeline

from pipelines import classifier, maskrcnn, unet
from steps.corrections import import_corrections

#: The step every family's training waits for (its first step runs after it).
IMPORT_STEP = "import_corrections"


@pipeline
def unet_pipeline(inference: dict, architecture: dict) -> None:
    """import the corrections (GX, new data version) -> the U-Net training pipeline on that version."""
    import_corrections()
    unet.training_pipeline(inference, architecture, after=IMPORT_STEP)


@pipeline
def maskrcnn_pipeline(models: dict, model: dict, training: dict, augmentation: dict, prediction: dict,
                      max_detections: int, overlays: int, checkpoint_dir: str, resume: bool) -> None:
    """import the corrections (GX, new data version) -> the Mask R-CNN training pipeline on that version."""
    import_corrections()
    maskrcnn.training_pipeline(models, model, training, augmentation, prediction, max_detections, overlays,
                               checkpoint_dir, resume, after=IMPORT_STEP)


@pipeline
def classifier_pipeline(input: dict, positive_class: str, models: dict, training: dict, augmentation: dict,
                        gallery_size: int, latency_batch_size: int, checkpoint_dir: str, resume: bool,
                        distributed: dict) -> None:
    """import the corrections (GX, new data version) -> the classifier training pipeline on that version."""
    import_corrections()
    classifier.training_pipeline(input, positive_class, models, training, augmentation, gallery_size,
                                 latency_batch_size, checkpoint_dir, resume, distributed, after=IMPORT_STEP)
