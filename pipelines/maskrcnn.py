"""Mask R-CNN instance segmentation (hiPSC colonies by default, nuclei with configs/maskrcnn_nuclei.yaml): one
training pipeline comparing every configured model, and deployment.

Run with ``zenml pipeline run pipelines.maskrcnn.training_pipeline -c configs/maskrcnn.yaml`` and
``zenml pipeline run pipelines.maskrcnn.deployment_pipeline -c configs/maskrcnn_deploy.yaml``.
"""

from typing import Optional

from zenml import pipeline

from cellops.maskrcnn.specs import parse_models
from steps.cards import record_model_card
from steps.deployment import build_bento, import_champion
from steps.lineage import record_corrections, record_lineage
from steps.maskrcnn.data import load_instance_annotations
from steps.maskrcnn.ood import record_maskrcnn_ood
from steps.maskrcnn.register import register_maskrcnn
from steps.maskrcnn.runtime import optimise_maskrcnn_runtime
from steps.maskrcnn.train import compare_maskrcnn, pretrain_on_source, train_and_evaluate_maskrcnn
from steps.maskrcnn.validation import validate_instance_annotations
from steps.validation import require_valid_dataset


@pipeline
def training_pipeline(models: dict, model: dict, training: dict, augmentation: dict, prediction: dict,
                      max_detections: int, overlays: int, checkpoint_dir: str, resume: bool, after: Optional[str] = None) -> None:
    """lineage -> annotations (any format, as COCO) + image split -> validate -> [pretrain on the source dataset]
    -> train and evaluate each model (same split, same seeded augmentation, one MLflow run each) -> compare ->
    register, promote the best -> export its backbone to the faster CPU runtimes; keep every registered version's
    out-of-distribution reference with it (training images, calibrated on the validation images).

    ``after``: the invocation id of a step that must finish first (the corrections pipeline's import).
    """
    specs = parse_models(models, model)  # a bad model entry fails here, before anything runs
    lineage = record_corrections(record_lineage(after=after))
    annotations, dataset_index = load_instance_annotations(lineage)
    validation_result, _ = validate_instance_annotations(annotations, dataset_index)
    valid = require_valid_dataset(validation_result)
    shared = dict(model=model, training=training, augmentation=augmentation, prediction=prediction,
                  max_detections=max_detections, checkpoint_dir=checkpoint_dir, resume=resume)
    source_model = None
    if any(spec.init == "source" for spec in specs.values()):
        source_model = pretrain_on_source(lineage, **shared, after=[valid])
    evaluations = []
    for name, spec in models.items():
        _, evaluation = train_and_evaluate_maskrcnn(annotations, dataset_index, lineage, source_model, name=name,
                                                    spec=spec, overlays=overlays, **shared, id=f"train_{name}",
                                                    after=[valid])
        evaluations.append(evaluation)
    compare_maskrcnn(evaluations)
    registration = register_maskrcnn(evaluations, annotations, dataset_index, lineage)
    runtime = optimise_maskrcnn_runtime(registration, annotations, dataset_index)
    ood = record_maskrcnn_ood(registration, dataset_index)
    record_model_card(registration, after=[runtime, ood])


@pipeline
def deployment_pipeline() -> None:
    """champion from the MLflow registry -> BentoML model store -> bento."""
    bento_model_tag = import_champion()
    build_bento(bento_model_tag)
