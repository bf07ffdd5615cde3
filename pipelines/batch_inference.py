"""Batch inference: any registered model (a family's champion, or any ``models:/`` URI) over a folder of new images
or volumes, resumable. Run with
``zenml pipeline run pipelines.batch_inference.batch_inference_pipeline -c configs/batch_inference.yaml``.
"""

from zenml import pipeline

from steps.batch import predict_folder, resolve_model


@pipeline
def batch_inference_pipeline() -> None:
    """registered model -> predictions for every input not yet predicted by it."""
    predict_folder(resolve_model())
