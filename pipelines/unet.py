"""U-Net mitochondria segmentation: training and deployment pipelines.

Run with ``zenml pipeline run pipelines.unet.training_pipeline -c configs/unet.yaml`` and
``zenml pipeline run pipelines.unet.deployment_pipeline -c configs/unet_deploy.yaml``.
"""

from typing import Optional

from zenml import pipeline

from steps.cards import record_model_card
from steps.deployment import build_bento, import_champion
from steps.lineage import record_corrections, record_lineage
from steps.unet.data import load_em_dataset, sample_augmented_patches, split_em_volume
from steps.unet.ood import record_unet_ood
from steps.unet.register import register_unet
from steps.unet.runtime import optimise_unet_runtime
from steps.unet.train import choose_unet_threshold, evaluate_unet, train_unet
from steps.unet.validation import validate_segmentation_data
from steps.validation import require_valid_dataset


@pipeline
def training_pipeline(inference: dict, architecture: dict, after: Optional[str] = None) -> None:
    """lineage -> load -> validate -> split -> augment -> train -> evaluate -> register (promote if better) ->
    export to the faster CPU runtimes and keep the fastest that holds its IoU; keep the registered version's
    out-of-distribution reference with it (training block, calibrated on the validation block).

    ``inference`` (tile, overlap, batch, normalisation, threshold) is set once for the run and used by validation
    during training; the probability threshold is then chosen on the validation block, and evaluation, the
    registered model (hence the service) and the runtime checks use the chosen one.

    ``after``: the invocation id of a step that must finish first (the corrections pipeline's import).
    """
    lineage = record_corrections(record_lineage(after=after))
    train_image, train_mask, test_image, test_mask = load_em_dataset(lineage)
    validation_result, _ = validate_segmentation_data(train_image, train_mask, test_image, test_mask)
    valid = require_valid_dataset(validation_result)
    fit_image, fit_mask, val_image, val_mask = split_em_volume(train_image, train_mask, after=[valid])
    patch_images, patch_masks = sample_augmented_patches(fit_image, fit_mask, lineage=lineage, inference=inference)
    model = train_unet(patch_images, patch_masks, val_image, val_mask, lineage, architecture=architecture,
                       inference=inference)
    served = choose_unet_threshold(model, val_image, val_mask, inference=inference)
    test_metrics, _ = evaluate_unet(model, test_image, test_mask, inference=served)
    registration = register_unet(model, test_metrics, lineage, test_image, test_mask, inference=served)
    runtime = optimise_unet_runtime(model, registration, fit_image, test_image, test_mask, inference=served)
    ood = record_unet_ood(model, registration, fit_image, val_image, inference=served)
    record_model_card(registration, after=[runtime, ood])


@pipeline
def deployment_pipeline() -> None:
    """champion from the MLflow registry -> BentoML model store -> bento."""
    bento_model_tag = import_champion()
    build_bento(bento_model_tag)
