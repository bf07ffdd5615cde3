"""Steps of the classifier pipeline (thin adapters over cellops.classifier, models and tracking): index and split
the class folders, validate them, load the images, pretrain a backbone on the project's own source task, train
and evaluate each configured model in its own MLflow run, compare them, register them and promote the best."""

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
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cellops.checkpoints import checkpoint_dir_for, remove_checkpoints
from cellops.classifier.cost import count_macs, count_parameters, cpu_latency_ms
from cellops.classifier.distributed_train import fit_distributed
from cellops.classifier.data import (SPLITS, Augmentation, SplitSettings, build_augmentation, index_class_folder,
                                     test_set_fingerprint)
from cellops.classifier.metrics import classification_scores, positive_roc
from cellops.distributed import weights_digest
from cellops.metrics import proportion_interval
from cellops.thresholds import choose_operating_point
from cellops.classifier.specs import ClassifierModelSpec, initial_weights
from cellops.classifier.plots import cam_galleries, comparison_bars, roc_curves
from cellops.classifier.specs import ClassifierServing
from cellops.classifier.source_task import SourceTask, source_task_patches
from cellops.classifier.train import fit, predict_probabilities
from cellops.classifier.specs import ClassifierTraining
from cellops.lineage import data_dir_for
from cellops.config import deep_merge, from_mapping
from cellops.distributed import DistributedSettings
from cellops.intensity import Normalization
from cellops.io import load_class_images
from cellops.plots import training_curves
from cellops.validation import ClassificationExpectations, summarise_class_images, validate_classification_dataset
from models.classifier import build_classifier, transfer_features
from steps.registry import log_comparison, register_ranked
from steps.validation import data_docs_page
from tracking import tags
from tracking.runs import (
    active_run_id,
    close_abandoned_runs,
    closed_on_interrupt,
    system_metrics,
    log_dataset,
    log_pytorch_model,
    log_run_config,
    process_tags,
)

logger = get_logger(__name__)

#: Scores in the comparison table, in this order.
SCORE_COLUMNS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "loss")


def _settings(dataset_index: dict, input: dict, positive_class: str) -> ClassifierServing:
    return ClassifierServing.from_dict({**input, "classes": dataset_index["classes"], "positive_class": positive_class})


def _subset(images: np.ndarray, labels: np.ndarray, dataset_index: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.asarray(dataset_index["splits"]) == split
    return images[chosen], labels[chosen]


@step
def index_class_folders(lineage: dict, data_dir: str, split: dict) -> Annotated[dict, "dataset_index"]:
    """Every image of ``data_dir/<class>/`` (of the lineage's ``data_rev`` when it names one), its label, content
    hash and split (stratified per class; identical pictures stay in one split)."""
    index = index_class_folder(data_dir_for(data_dir, lineage), SplitSettings.from_dict(split))
    labels, splits = np.asarray(index["labels"]), np.asarray(index["splits"])
    counts = {name: {s: int(np.sum((labels == i) & (splits == s))) for s in SPLITS}
              for i, name in enumerate(index["classes"])}
    log_metadata(metadata={"classes": index["classes"], "images": len(labels), "split_counts": counts})
    logger.info("%d images in %d classes: %s", len(labels), len(index["classes"]), counts)
    return index


@step
def validate_classification_data(
    dataset_index: dict, expectations: dict,
) -> tuple[Annotated[dict, "validation_result"], Annotated[HTMLString, "data_docs"]]:
    """The Great Expectations suite over the files: readable, consistent sizes and channels, every class in every
    split, balance within bounds, no picture in two splits. Result and Data Docs are kept, pass or fail."""
    table = summarise_class_images([Path(p) for p in dataset_index["files"]],
                                   [dataset_index["classes"][i] for i in dataset_index["labels"]],
                                   dataset_index["splits"], content_hashes=dataset_index["md5"])
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_classification_dataset(table, dataset_index["classes"],
                                                 from_mapping(ClassificationExpectations, expectations),
                                                 data_docs_dir=Path(tmp), splits=SPLITS)
        html = data_docs_page(Path(tmp))
    log_metadata(metadata={"validation_success": report.success, "failed_expectations": report.failures})
    return {"success": report.success, "failures": report.failures, "results": report.results}, html


@step
def load_classifier_images(
    dataset_index: dict, input: dict,
) -> tuple[Annotated[np.ndarray, "images"], Annotated[np.ndarray, "labels"]]:
    """The images as model inputs (N, channels, size, size) float32, normalised as they will be served, and their
    labels."""
    images, failures = load_class_images([Path(p) for p in dataset_index["files"]], channels=int(input["channels"]),
                                         size=int(input["size"]),
                                         normalization=Normalization.from_dict(input["normalization"]))
    if failures:  # validation passed, so this means a file changed in between
        raise ValueError("unreadable images: " + "; ".join(f"{p}: {why}" for p, why in failures))
    return images, np.asarray(dataset_index["labels"], dtype=np.int64)


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
    """Train one configured model on the shared split with the shared seeded augmentation, evaluate it on the
    test split, and log curves, scores, costs and a CAM gallery to its own MLflow run.

    With ``distributed`` naming more than one process, training runs under DDP: ``torchrun`` is started as a
    subprocess of this step (the step keeps its ZenML context, MLflow run and artifacts; the ranks only compute).
    Rank 0 logs each epoch to this model's MLflow run."""
    model_spec = ClassifierModelSpec.from_dict(spec)
    config = ClassifierTraining.from_dict(deep_merge(training, model_spec.training))
    settings = _settings(dataset_index, input, positive_class)
    weights, init_used = initial_weights(model_spec)
    if model_spec.init == "imagenet" and weights is None:
        logger.warning("%s: no local ImageNet weights for %s (set weights_file, or put torchvision's file in "
                       "$TORCH_HOME/hub/checkpoints); training from random weights (weights=None)",
                       name, model_spec.architecture)
    model = build_classifier(model_spec.architecture, num_classes=len(settings.classes), in_channels=settings.channels,
                             options=model_spec.options, imagenet_weights=weights, seed=config.seed)
    if model_spec.init == "source":
        if source_backbone is None:
            raise ValueError(f"{name}: init 'source' needs the pretrained source backbone, which this run did not train")
        transfer_features(model, source_backbone)
    log_run_config()
    close_abandoned_runs()
    mlflow.set_tags({**tags.lineage_to_tags(lineage), tags.ZENML_RUN_ID: str(get_step_context().pipeline_run.id),
                     **process_tags(),
                     tags.MODEL_NAME: name, tags.ARCHITECTURE: model_spec.architecture, tags.INIT: model_spec.init,
                     tags.INIT_USED: init_used, tags.IMAGENET_WEIGHTS: str(weights) if weights else "none"})
    mlflow.log_params({"model.epochs": config.epochs, "model.learning_rate": config.learning_rate})
    train, val = _subset(images, labels, dataset_index, "train"), _subset(images, labels, dataset_index, "val")
    log_dataset("classifier-train", train[0], lineage, source=str(dataset_index.get("root", "data")),
                context="training", targets=train[1])
    test_images, test_labels = _subset(images, labels, dataset_index, "test")
    logger.info("%s: %s from %s, %d parameters; %d train / %d val / %d test images", name, model_spec.architecture,
                init_used, count_parameters(model), len(train[0]), len(val[0]), len(test_images))
    # Named after what must match to resume (not after the run): the same command after a kill finds it.
    run_dir = checkpoint_dir_for(checkpoint_dir, {"name": name, "spec": spec, "training": asdict(config),
                                                  "input": input, "augmentation": augmentation,
                                                  "data_version": lineage["data_version"],
                                                  "dataset_index": dataset_index})
    parallel = DistributedSettings.from_dict(distributed)
    with closed_on_interrupt(), system_metrics():
        if parallel.enabled:
            mlflow.set_tags({"distributed.world_size": parallel.world_size, "distributed.backend": parallel.backend})
            with tempfile.TemporaryDirectory(prefix="ddp-", dir=Path(checkpoint_dir).parent) as work:
                history, digests = fit_distributed(
                    model, train, val, training=asdict(config), augmentation=augmentation, positive=settings.positive,
                    checkpoint_dir=run_dir, resume=resume, settings=parallel, work_dir=Path(work),
                    epoch_logger="tracking.runs:epoch_logger",
                    epoch_logger_args={"tracking_uri": mlflow.get_tracking_uri(), "run_id": active_run_id()})
            mlflow.set_tag("distributed.weights_sha256", digests[0])
        else:
            history = fit(model, train, val, config, build_augmentation(Augmentation.from_dict(augmentation)),
                          settings.positive, on_epoch_end=lambda epoch, m: mlflow.log_metrics(m, step=epoch),
                          checkpoint_dir=run_dir, resume=resume)
    if history.resumed_from_epoch is not None:
        # The epochs before the interruption were logged on the killed run: this run gets the whole curve too.
        for epoch in range(history.resumed_from_epoch + 1):
            mlflow.log_metrics({k: v[epoch] for k, v in history.curves().items()}, step=epoch)
        logger.info("%s: resumed after epoch %d from %s", name, history.resumed_from_epoch, run_dir)
    mlflow.set_tag(tags.RESUMED_FROM_EPOCH, str(history.resumed_from_epoch))
    remove_checkpoints(run_dir)
    model = model.cpu().eval()
    # The operating point (sensitivity against specificity) is chosen on the validation split, never the test one.
    val_probabilities = predict_probabilities(model, val[0], settings.batch_size)
    choice = choose_operating_point(val_probabilities[:, settings.positive], val[1] == settings.positive)
    settings = replace(settings, decision_threshold=float(choice.value))
    mlflow.log_metrics({"chosen_decision_threshold": choice.value, "val_youden_j_at_chosen": choice.metric_value})
    mlflow.log_dict(choice.as_dict(), "thresholds/decision_threshold.json")
    probabilities = predict_probabilities(model, test_images, settings.batch_size)
    scores = classification_scores(probabilities, test_labels, settings.positive, threshold=settings.decision_threshold)
    # Sensitivity (the promotion metric) with its 95 % interval: each positive test image found or not, the Wilson
    # score interval (a bootstrap of a proportion at 1 would have no width).
    said = settings.predicted_classes(probabilities) == settings.positive
    is_positive = test_labels == settings.positive
    if is_positive.any():
        interval = proportion_interval(int(np.sum(said & is_positive)), int(np.sum(is_positive)))
        interval_scores = {"sensitivity_ci_low": interval.low, "sensitivity_ci_high": interval.high}
    else:  # no positive test image: sensitivity is undefined, and so is its interval
        interval_scores = {"sensitivity_ci_low": float("nan"), "sensitivity_ci_high": float("nan")}
    input_shape = (settings.channels, settings.size, settings.size)
    costs = {"parameters": count_parameters(model), "macs": count_macs(model, input_shape),
             "cpu_latency_ms": cpu_latency_ms(model, input_shape, batch_size=latency_batch_size),
             "train_seconds": float(sum(history.epoch_seconds)), "epochs": config.epochs}
    mlflow.log_metrics({**{f"test_{k}": v for k, v in {**scores.as_dict(), **interval_scores}.items()}, **costs,
                        "best_epoch": history.best_epoch})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        training_curves({k: v for k, v in history.curves().items() if k != "epoch_seconds"}, folder / "curves.png")
        mlflow.log_artifact(str(folder / "curves.png"), artifact_path="training")
        for path in cam_galleries(model, test_images, test_labels, settings.classes, settings.batch_size, gallery_size,
                                  folder / "cam_gallery"):
            mlflow.log_artifact(str(path), artifact_path="cam_gallery")
        (folder / "confusion.json").write_text(json.dumps({"classes": list(settings.classes),
                                                           "confusion": scores.confusion}))
        mlflow.log_artifact(str(folder / "confusion.json"), artifact_path="evaluation")
    # Logged in the model's own run, so its registered version points at the run with its curves and gallery.
    info = log_pytorch_model(model, test_images[:1], ["models"])
    fpr, tpr = positive_roc(probabilities, test_labels, settings.positive)
    evaluation = {"name": name, "architecture": model_spec.architecture, "init": model_spec.init, "init_used": init_used,
                  "model_uri": info.model_uri, "mlflow_run_id": active_run_id(), "weights_sha256": weights_digest(model),
                  "scores": {**scores.as_dict(), **interval_scores},
                  "confusion": scores.confusion, "costs": costs, "settings": settings.as_dict(),
                  "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
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


@step(enable_cache=False)  # a side effect: a cache hit would silently skip the registration
def register_classifiers(
    evaluations: list[dict],
    dataset_index: dict,
    lineage: dict,
    registered_model_name: str,
    promotion_metric: str,
    tie_breakers: list[str],
    alias: str,
    min_improvement: float,
) -> Annotated[dict, "registration"]:
    """Register every trained model (best first) and move ``alias`` to one only if it beats the champion on the
    same test data; a champion scored on another data version is re-scored on this run's test split."""
    positive_class = evaluations[0]["settings"]["positive_class"]
    test_files = [Path(f) for f, s in zip(dataset_index["files"], dataset_index["splits"]) if s == "test"]
    test_labels = np.asarray(dataset_index["labels"])[np.asarray(dataset_index["splits"]) == "test"]
    # The test set by content and labels: a champion scored on another one (other split, folder or positive
    # class, same DVC version or not) is re-scored before the comparison.
    test_set = test_set_fingerprint(dataset_index["md5"], [dataset_index["classes"][i] for i in dataset_index["labels"]],
                                    dataset_index["splits"], positive_class)

    def rescore(champion) -> dict[str, float]:
        settings = ClassifierServing.from_dict(tags.inference_from_tags(champion.tags))
        if list(settings.classes) != list(dataset_index["classes"]) or settings.positive_class != positive_class:
            raise ValueError(f"the champion classifies {list(settings.classes)} (positive {settings.positive_class!r}), "
                             f"this run {dataset_index['classes']} (positive {positive_class!r}): not comparable; "
                             "register under another name")
        # The champion's own input settings: it is judged on these images as it is served.
        prepared, failures = load_class_images(test_files, channels=settings.channels, size=settings.size,
                                             normalization=settings.normalization)
        if failures:
            raise ValueError(f"test images became unreadable: {failures}")
        old = mlflow.pytorch.load_model(f"models:/{registered_model_name}/{champion.version}", map_location="cpu")
        probabilities = predict_probabilities(old.eval(), prepared, settings.batch_size)
        return classification_scores(probabilities, test_labels, settings.positive,
                                     threshold=settings.decision_threshold).as_dict()

    return register_ranked(evaluations, lineage, test_set, rescore, registered_model_name=registered_model_name,
                           promotion_metric=promotion_metric, tie_breakers=tie_breakers, alias=alias,
                           min_improvement=min_improvement)
