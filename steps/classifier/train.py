"""Steps that pretrain the source backbone, train and evaluate each configured classifier, and compare them
(thin adapters over cellops.classifier)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Optional

import mlflow
import numpy as np
from mlflow import MlflowClient
from torch import nn
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.classifier.cost import count_parameters, model_costs
from cellops.classifier.data import Augmentation, build_augmentation
from cellops.classifier.distributed_train import fit_distributed
from cellops.classifier.metrics import classification_scores, positive_roc
from cellops.classifier.plots import cam_galleries, comparison_bars, roc_curves
from cellops.classifier.source_task import source_task_patches, SourceTask
from cellops.classifier.specs import check_parent_classifier, ClassifierModelSpec, ClassifierTraining, initial_weights
from cellops.classifier.train import ClassifierHistory, fit, predict_probabilities
from cellops.config import deep_merge
from cellops.metrics import sensitivity_interval
from cellops.distributed import DistributedSettings, weights_digest
from cellops.plots import training_curves
from cellops.registered_init import load_parent_state, registered_init
from cellops.thresholds import choose_operating_point
from models.classifier import build_classifier, transfer_features
from steps.classifier.data import SCORE_COLUMNS, serving_settings, split_subset
from steps.registry import log_comparison
from tracking import tags
from tracking.registry import load_init_weights
from tracking.runs import (
    training_run,
    active_run_id,
    log_dataset,
    log_pytorch_model,
)

logger = get_logger(__name__)


@step
def pretrain_source_backbone(
    lineage: dict,
    input: dict,
    architecture: dict,
    source_task: dict,
    training: dict,
    augmentation: dict,
    registered_model_name: str,
) -> Annotated[nn.Module, "source_backbone"]:
    """Pretrain ``architecture`` on the source task built from the project's other datasets (see
    :mod:`cellops.classifier.source_task`), in its own MLflow run; registered as ``registered_model_name``."""
    spec = ClassifierModelSpec.from_dict(architecture)
    task = SourceTask.from_dict(source_task)
    config = ClassifierTraining.from_dict(deep_merge(training, spec.training))
    images, labels, classes = source_task_patches(task.data_root, size=int(input["size"]), crop=task.crop,
                                                  patches_per_class=task.patches_per_class, seed=task.seed)
    if int(input["channels"]) == 3:
        images = np.repeat(images, 3, axis=1)
    chosen = np.random.default_rng(task.seed).permutation(len(images))
    n_val = max(len(classes), round(task.val_fraction * len(images)))
    val, train = chosen[:n_val], chosen[n_val:]
    model = build_classifier(spec.architecture, num_classes=len(classes), in_channels=int(input["channels"]),
                             options=spec.options, seed=config.seed)
    mlflow.set_tags({**tags.lineage_to_tags(lineage), "source_classes": ",".join(classes), "role": "source_backbone"})
    mlflow.log_params({"source.patches": len(images), "source.classes": len(classes)})
    logger.info("pretraining %s on %d source patches of %s", spec.architecture, len(images), classes)
    history = fit(model, (images[train], labels[train]), (images[val], labels[val]), config,
                  build_augmentation(Augmentation.from_dict(augmentation)), positive=0,
                  on_epoch_end=lambda epoch, m: mlflow.log_metrics(
                      {k: v for k, v in m.items() if "sensitivity" not in k}, step=epoch))
    mlflow.log_metrics({"source_val_accuracy": history.val_accuracy[history.best_epoch]})
    info = log_pytorch_model(model, images[val][:1], ["models"])
    version = mlflow.register_model(info.model_uri, registered_model_name).version
    for key, value in {**tags.lineage_to_tags(lineage), "source_classes": ",".join(classes),
                       **tags.metrics_to_tags({"source_val_accuracy": history.val_accuracy[history.best_epoch]})}.items():
        MlflowClient().set_model_version_tag(registered_model_name, version, key, value)
    log_metadata(metadata={"source_val_accuracy": history.val_accuracy[history.best_epoch],
                           "registered_model": registered_model_name, "model_version": str(version)})
    return model


def initial_model(name: str, model_spec: ClassifierModelSpec, settings, seed: int,
                  source_backbone: Optional[nn.Module]) -> tuple[nn.Module, dict[str, str], str | None]:
    """The configured model with its initial weights, the tags saying where they came from, and the registered
    version it starts from (``NAME:VERSION``; None for the other inits), checked against the config first."""
    weights, init_used = initial_weights(model_spec)
    if model_spec.init == "imagenet" and weights is None:
        logger.warning("%s: no local ImageNet weights for %s (set weights_file, or put torchvision's file in "
                       "$TORCH_HOME/hub/checkpoints); training from random weights (weights=None)",
                       name, model_spec.architecture)
    model = build_classifier(model_spec.architecture, num_classes=len(settings.classes), in_channels=settings.channels,
                             options=model_spec.options, imagenet_weights=weights, seed=seed)
    if model_spec.init == "source":
        if source_backbone is None:
            raise ValueError(f"{name}: init 'source' needs the pretrained source backbone, which this run did not train")
        transfer_features(model, source_backbone)
    parent = None
    if registered_init(model_spec.init):
        start = load_init_weights(mlflow.get_tracking_uri(), model_spec.init, "classifier")
        check_parent_classifier(start.parent, start.architecture, start.settings, model_spec, settings.classes,
                                settings.channels)
        load_parent_state(model, start.parent, start.state_dict)
        parent = init_used = start.parent
    return model, {tags.MODEL_NAME: name, tags.ARCHITECTURE: model_spec.architecture, tags.INIT: model_spec.init,
                   tags.INIT_USED: init_used, tags.IMAGENET_WEIGHTS: str(weights) if weights else "none"}, parent


def _train(model: nn.Module, train: tuple, val: tuple, config: ClassifierTraining, augmentation: dict, positive: int,
           checkpoint_dir: str, resume: bool, checkpoint_key: dict, distributed: dict, run) -> ClassifierHistory:
    """Fit in this process, or under DDP in ``torchrun`` ranks when ``distributed`` names several processes (rank 0
    logs each epoch to this run)."""
    parallel = DistributedSettings.from_dict(distributed)
    if not parallel.enabled:
        return fit(model, train, val, config, build_augmentation(Augmentation.from_dict(augmentation)), positive,
                   on_epoch_end=run.log_epoch, checkpoint_dir=Path(checkpoint_dir), resume=resume,
                   checkpoint_key=checkpoint_key)
    mlflow.set_tags({"distributed.world_size": parallel.world_size, "distributed.backend": parallel.backend})
    with tempfile.TemporaryDirectory(prefix="ddp-", dir=Path(checkpoint_dir).parent) as work:
        history, digests = fit_distributed(
            model, train, val, training=asdict(config), augmentation=augmentation, positive=positive,
            checkpoint_dir=Path(checkpoint_dir), resume=resume, checkpoint_key=checkpoint_key, settings=parallel,
            work_dir=Path(work), epoch_logger="tracking.runs:epoch_logger",
            epoch_logger_args={"tracking_uri": mlflow.get_tracking_uri(), "run_id": active_run_id()})
    mlflow.set_tag("distributed.weights_sha256", digests[0])
    return history


def _log_artifacts(model: nn.Module, history: ClassifierHistory, test: tuple, settings, scores,
                   gallery_size: int) -> None:
    """Training curves, the CAM gallery of test images and the confusion matrix, into the model's run."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        training_curves({k: v for k, v in history.curves().items() if k != "epoch_seconds"}, folder / "curves.png")
        mlflow.log_artifact(str(folder / "curves.png"), artifact_path="training")
        for path in cam_galleries(model, *test, settings.classes, settings.batch_size, gallery_size,
                                  folder / "cam_gallery"):
            mlflow.log_artifact(str(path), artifact_path="cam_gallery")
        (folder / "confusion.json").write_text(json.dumps({"classes": list(settings.classes),
                                                           "confusion": scores.confusion}))
        mlflow.log_artifact(str(folder / "confusion.json"), artifact_path="evaluation")


@step(experiment_tracker=True)  # the stack's tracker: one invocation per model, each its own nested MLflow run
def train_and_evaluate_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    dataset_index: dict,
    lineage: dict,
    source_backbone: Optional[nn.Module],
    name: str,
    spec: dict,
    input: dict,
    positive_class: str,
    training: dict,
    augmentation: dict,
    gallery_size: int,
    latency_batch_size: int,
    checkpoint_dir: str,
    resume: bool,
    distributed: dict,
) -> tuple[Annotated[nn.Module, "classifier"], Annotated[dict, "evaluation"]]:
    """Train one configured model on the shared split with the shared seeded augmentation, choose its operating
    point on validation, evaluate it on the test split, and log curves, scores, costs and a CAM gallery to its own
    MLflow run. With ``distributed`` naming more than one process, training runs under DDP (``torchrun`` ranks
    started by this step, which keeps its ZenML context and MLflow run)."""
    model_spec = ClassifierModelSpec.from_dict(spec)
    config = ClassifierTraining.from_dict(deep_merge(training, model_spec.training))
    settings = serving_settings(dataset_index, input, positive_class)
    model, init_tags, parent = initial_model(name, model_spec, settings, config.seed, source_backbone)
    train, val = split_subset(images, labels, dataset_index, "train"), split_subset(images, labels, dataset_index, "val")
    test = split_subset(images, labels, dataset_index, "test")
    logger.info("%s: %s from %s, %d parameters; %d train / %d val / %d test images", name, model_spec.architecture,
                init_tags[tags.INIT_USED], count_parameters(model), len(train[0]), len(val[0]), len(test[0]))
    # Checkpoints go to a folder of checkpoint_dir named after what must match to resume (not after the run).
    checkpoint_key = {"name": name, "spec": spec, "training": asdict(config), "input": input,
                      "augmentation": augmentation, "data_version": lineage["data_version"],
                      "dataset_index": dataset_index, **({tags.PARENT_MODEL: parent} if parent else {})}
    with training_run({**lineage, tags.PARENT_MODEL: parent} if parent else lineage, init_tags) as run:
        mlflow.log_params({"model.epochs": config.epochs, "model.learning_rate": config.learning_rate})
        log_dataset("classifier-train", train[0], lineage, source=str(dataset_index.get("root", "data")),
                    context="training", targets=train[1])
        history = _train(model, train, val, config, augmentation, settings.positive, checkpoint_dir, resume,
                         checkpoint_key, distributed, run)
        run.record_resume(history.resumed_from_epoch)
    model = model.cpu().eval()
    # The operating point (sensitivity against specificity) is chosen on the validation split, never the test one.
    val_probabilities = predict_probabilities(model, val[0], settings.batch_size)
    choice = choose_operating_point(val_probabilities[:, settings.positive], val[1] == settings.positive)
    settings = replace(settings, decision_threshold=float(choice.value))
    mlflow.log_metrics({"chosen_decision_threshold": choice.value, "val_youden_j_at_chosen": choice.metric_value})
    mlflow.log_dict(choice.as_dict(), "thresholds/decision_threshold.json")
    probabilities = predict_probabilities(model, test[0], settings.batch_size)
    scores = classification_scores(probabilities, test[1], settings.positive, threshold=settings.decision_threshold)
    all_scores = {**scores.as_dict(),
                  **sensitivity_interval(settings.predicted_classes(probabilities), test[1], settings.positive)}
    costs = {**model_costs(model, (settings.channels, settings.size, settings.size),
                           latency_batch_size=latency_batch_size),
             "train_seconds": float(sum(history.epoch_seconds)), "epochs": config.epochs}
    mlflow.log_metrics({**{f"test_{k}": v for k, v in all_scores.items()}, **costs, "best_epoch": history.best_epoch})
    _log_artifacts(model, history, test, settings, scores, gallery_size)
    # Logged in the model's own run, so its registered version points at the run with its curves and gallery.
    info = log_pytorch_model(model, test[0][:1], ["models"])
    fpr, tpr = positive_roc(probabilities, test[1], settings.positive)
    evaluation = {"name": name, "architecture": model_spec.architecture, "init": model_spec.init,
                  "init_used": init_tags[tags.INIT_USED], "model_uri": info.model_uri, "mlflow_run_id": active_run_id(),
                  "weights_sha256": weights_digest(model), "scores": all_scores, "confusion": scores.confusion,
                  "costs": costs, "settings": settings.as_dict(), "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
    log_metadata(metadata={"scores": scores.as_dict(), "costs": costs})
    logger.info("%s test: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in scores.as_dict().items()))
    return model, evaluation


@step
def compare_classifiers(evaluations: list[dict]) -> Annotated[dict, "comparison"]:
    """The comparison table (CSV and markdown), the grouped score bars and the ROC curves of every model, logged
    to the pipeline's parent MLflow run (and this step's)."""
    def plots(folder: Path) -> None:
        comparison_bars({e["name"]: e["scores"] for e in evaluations},
                        ["accuracy", "sensitivity", "specificity", "f1", "roc_auc"], folder / "comparison.png")
        roc_curves({e["name"]: (np.asarray(e["roc"]["fpr"]), np.asarray(e["roc"]["tpr"]), e["scores"]["roc_auc"])
                    for e in evaluations}, folder / "roc.png")

    return log_comparison(evaluations, SCORE_COLUMNS, plots)
