"""Endothelial-cell classifier: one training pipeline comparing every configured model, and deployment.

Run with ``zenml pipeline run pipelines.classifier.training_pipeline -c configs/classifier.yaml`` and
``zenml pipeline run pipelines.classifier.deployment_pipeline -c configs/classifier_deploy.yaml``.
"""

from typing import Optional

from zenml import pipeline

from cellops.classifier.specs import parse_models
from steps.classifier.data import index_class_folders, load_classifier_images
from steps.classifier.ood import record_classifier_ood
from steps.classifier.register import register_classifiers
from steps.classifier.runtime import optimise_classifier_runtime
from steps.classifier.train import compare_classifiers, pretrain_source_backbone, train_and_evaluate_classifier
from steps.classifier.validation import validate_classification_data
from steps.cards import record_model_card
from steps.deployment import build_bento, import_champion
from steps.lineage import record_corrections, record_lineage
from steps.validation import require_valid_dataset


@pipeline
def training_pipeline(input: dict, positive_class: str, models: dict, training: dict, augmentation: dict,
                      gallery_size: int, latency_batch_size: int, checkpoint_dir: str, resume: bool,
                      distributed: dict, after: Optional[str] = None) -> None:
    """lineage -> index + split -> validate -> load -> [pretrain on the source task] -> train and evaluate each
    model (same split, same seeded augmentation, one MLflow run each) -> compare -> register, promote the best ->
    export the best to the faster CPU runtimes; keep every registered version's out-of-distribution reference with
    it (training split, calibrated on the validation split).

    ``after``: the invocation id of a step that must finish first (the corrections pipeline's import).
    """
    specs = parse_models(models)  # a bad model entry fails here, before anything runs
    lineage = record_corrections(record_lineage(after=after))
    dataset_index = index_class_folders(lineage)
    validation_result, _ = validate_classification_data(dataset_index)
    valid = require_valid_dataset(validation_result)
    images, labels = load_classifier_images(dataset_index, input=input, after=[valid])
    backbone = None
    if any(spec.init == "source" for spec in specs.values()):
        backbone = pretrain_source_backbone(lineage, input=input, training=training, augmentation=augmentation,
                                            after=[valid])
    evaluations = []
    for name, spec in models.items():
        _, evaluation = train_and_evaluate_classifier(
            images, labels, dataset_index, lineage, backbone, name=name, spec=spec, input=input,
            positive_class=positive_class, training=training, augmentation=augmentation, gallery_size=gallery_size,
            latency_batch_size=latency_batch_size, checkpoint_dir=checkpoint_dir, resume=resume, distributed=distributed,
            id=f"train_{name}")
        evaluations.append(evaluation)
    compare_classifiers(evaluations)
    registration = register_classifiers(evaluations, dataset_index, lineage)
    runtime = optimise_classifier_runtime(registration, images, labels, dataset_index)
    ood = record_classifier_ood(registration, dataset_index)
    record_model_card(registration, after=[runtime, ood])


@pipeline
def deployment_pipeline() -> None:
    """champion from the MLflow registry -> BentoML model store -> bento."""
    bento_model_tag = import_champion()
    build_bento(bento_model_tag)
