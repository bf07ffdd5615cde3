"""Steps that pretrain on the source dataset, train and evaluate each configured Mask R-CNN, and compare them (thin
adapters over cellops.maskrcnn)."""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import mlflow
import torch
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.config import deep_merge
from cellops.distributed import weights_digest
from cellops.maskrcnn.data import (
    build_instance_augmentation,
    InstanceAugmentation,
    InstanceDataset,
    load_instance_samples,
    SPLITS,
    subset_coco,
)
from cellops.maskrcnn.evaluation import match_detections
from cellops.maskrcnn.predict import overlay, predict_picture
from cellops.maskrcnn.specs import (
    check_parent_model,
    MaskRCNNModelSpec,
    MaskRCNNServing,
    MaskRCNNTraining,
    SourceSettings,
)
from cellops.maskrcnn.train import MaskRCNNHistory, evaluate, fit
from cellops.maskrcnn.validation import AnnotationExpectations, summarise_annotations, validate_annotation_dataset
from cellops.metrics import bootstrap_interval, pooled_f1
from cellops.plots import save_png, training_curves
from cellops.registered_init import load_parent_state, registered_init
from cellops.thresholds import choose_score_threshold
from models.maskrcnn import build_maskrcnn, find_initial_weights, MaskRCNNSettings, transfer_weights
from steps.maskrcnn.data import (
    content_key,
    input_example,
    no_output_schema,
    read_annotations,
    SCORE_COLUMNS,
    serving_settings,
    split_ids,
)
from steps.registry import log_comparison
from tracking import tags
from tracking.registry import load_init_weights
from tracking.runs import (
    training_run,
    active_run_id,
    log_pytorch_model,
)

logger = get_logger(__name__)


def _train(name: str, model: torch.nn.Module, coco: dict, index: dict, training: dict, augmentation: dict,
           served: MaskRCNNServing, checkpoint_dir: str, resume: bool, checkpoint_key: dict,
           on_epoch_end) -> tuple[MaskRCNNHistory, list, list]:
    config = MaskRCNNTraining.from_dict(training)
    normalization = served.normalization  # training sees images scaled as they will be served
    train = load_instance_samples(coco, index, "train", normalization)
    val = load_instance_samples(coco, index, "val", normalization)
    torch.manual_seed(config.seed)
    history = fit(model, InstanceDataset(train, build_instance_augmentation(InstanceAugmentation.from_dict(augmentation))),
                  val, subset_coco(coco, split_ids(index, "val")), config, served,
                  checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None, resume=resume,
                  checkpoint_key={"name": name, **checkpoint_key}, on_epoch_end=on_epoch_end)
    return history, train, val


def _weights_key(model: torch.nn.Module) -> str:
    """A fingerprint of a model's initial weights (a transferred model's checkpoint belongs to its source model)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def initial_model(name: str, model_spec: MaskRCNNModelSpec, settings: MaskRCNNSettings, categories: list[dict],
                  seed: int, source_model: Optional[torch.nn.Module]) -> tuple[torch.nn.Module, str, str | None]:
    """The configured Mask R-CNN with its initial weights; the init that really applied (``NAME:VERSION`` for a
    registered version); and that version (None for the other inits), checked against the config first (backbone,
    categories, every tensor's shape)."""
    from_registry = registered_init(model_spec.init)  # the network is built as from scratch, then loaded
    weights = find_initial_weights("scratch" if from_registry else model_spec.init, settings.backbone,
                                   model_spec.weights_file)
    for note in weights.notes:
        logger.warning("%s: %s", name, note)
    net = build_maskrcnn(settings, len(categories) + 1, imagenet_weights=weights.imagenet,
                         coco_weights=weights.coco, seed=seed)
    if model_spec.init == "source":
        if source_model is None:
            raise ValueError(f"{name}: init 'source' needs the model pretrained on the source dataset, which this "
                             "run did not train (set steps.pretrain_on_source)")
        skipped = transfer_weights(net, source_model)
        logger.info("%s: initialised from the source model (not transferred: %s)", name, skipped or "nothing")
    if not from_registry:
        return net, weights.kind, None
    start = load_init_weights(mlflow.get_tracking_uri(), model_spec.init, "maskrcnn")
    check_parent_model(start.parent, start.architecture, start.settings.get("categories"), settings,
                       {c["id"]: c["name"] for c in categories})
    load_parent_state(net, start.parent, start.state_dict)
    logger.info("%s: starting from %s (%s)", name, start.parent, model_spec.init)
    return net, start.parent, start.parent


@step
def pretrain_on_source(
    lineage: dict, model: dict, training: dict, augmentation: dict, prediction: dict, max_detections: int,
    source: dict, checkpoint_dir: str, resume: bool,
) -> Annotated[torch.nn.Module, "source_model"]:
    """Train the shared model settings on the source dataset (e.g. nuclei: many instances per image), in its own
    MLflow run; models with ``init: source`` start from it. ``source`` holds its annotations, split and overrides
    of the shared model, training and augmentation settings (e.g. crops that keep small nuclei at full size)."""
    source_settings = SourceSettings.from_dict(source)
    coco, index = read_annotations(source_settings.annotations, source_settings.split, lineage)
    expect = AnnotationExpectations.from_dict(source_settings.expectations)
    report = validate_annotation_dataset(summarise_annotations(coco, index["images_dir"], index, expect), expect)
    if not report.success:
        raise ValueError("source dataset validation failed; failed expectations:\n  - " + "\n  - ".join(report.failures))
    settings = MaskRCNNModelSpec(model=source_settings.model).settings(model)
    config = deep_merge(training, source_settings.training)
    net = build_maskrcnn(settings, len(coco["categories"]) + 1, seed=int(config.get("seed", 0)))
    served = serving_settings(coco, prediction, max_detections)
    augmentation = deep_merge(augmentation, source_settings.augmentation)
    source_tags = {"role": "source_model", "source_images": source_settings.annotations["images_dir"]}
    with training_run(lineage, source_tags) as run:
        mlflow.log_params({"source.images": len(index["files"]), "source.instances": len(coco["annotations"])})
        history, _, _ = _train("source", net, coco, index, config, augmentation, served, checkpoint_dir, resume,
                               {"data": index["md5"], "annotations": content_key(coco), "splits": index["splits"],
                                "model": settings.as_dict(), "role": "source", "augmentation": augmentation},
                               run.log_epoch)
        run.record_resume(history.resumed_from_epoch)
    best = next((v for v in history.validation if v["epoch"] == history.best_epoch), {})
    mlflow.log_metrics({f"source_best_val_{k}": v for k, v in best.items() if k != "epoch"})
    log_pytorch_model(net, input_example(index, served), ["models"], output_of=no_output_schema)
    log_metadata(metadata={"source_val": best, "source_mlflow_run_id": active_run_id()})
    return net.cpu().eval()


@step(experiment_tracker=True)  # the stack's tracker: one invocation per model, each its own nested MLflow run
def train_and_evaluate_maskrcnn(
    annotations: dict,
    dataset_index: dict,
    lineage: dict,
    source_model: Optional[torch.nn.Module],
    name: str,
    spec: dict,
    model: dict,
    training: dict,
    augmentation: dict,
    prediction: dict,
    max_detections: int,
    overlays: int,
    checkpoint_dir: str,
    resume: bool,
) -> tuple[Annotated[torch.nn.Module, "maskrcnn"], Annotated[dict, "evaluation"]]:
    """Train one configured model on the shared split with the shared seeded augmentation, evaluate it on the
    test images as it would be served, and log curves, scores, speed and test overlays to its own MLflow run."""
    coco, index = annotations, dataset_index
    model_spec = MaskRCNNModelSpec.from_dict(spec)
    settings = model_spec.settings(model)
    config = deep_merge(training, model_spec.training)
    net, init_used, parent = initial_model(name, model_spec, settings, coco["categories"], int(config.get("seed", 0)),
                                           source_model)
    served = serving_settings(coco, prediction, max_detections)
    parameters = sum(p.numel() for p in net.parameters())
    logger.info("%s: Mask R-CNN %s-FPN from %s, %d parameters; %s images", name, settings.backbone, init_used,
                parameters, {s: index["splits"].count(s) for s in SPLITS})
    run_tags = {tags.MODEL_NAME: name, tags.ARCHITECTURE: f"maskrcnn_{settings.backbone}_fpn",
                tags.INIT: model_spec.init, tags.INIT_USED: init_used}
    with training_run({**lineage, tags.PARENT_MODEL: parent} if parent else lineage, run_tags) as run:
        mlflow.log_params({f"model.{k}": v for k, v in settings.as_dict().items()})
        history, _, val = _train(name, net, coco, index, config, augmentation, served, checkpoint_dir, resume,
                                 {"data": index["md5"], "annotations": content_key(coco), "splits": index["splits"],
                                  "spec": spec, "model": settings.as_dict(), "augmentation": augmentation,
                                  "init_used": init_used,
                                  "source": _weights_key(net) if model_spec.init == "source" else None},
                                 run.log_epoch)
        run.record_resume(history.resumed_from_epoch)
    net = net.cpu().eval()
    if val:  # the served score threshold: the best validation F1@0.5, never the test images
        val_truth = subset_coco(coco, split_ids(index, "val"))
        _, val_detections = evaluate(net, val, val_truth, served)
        choice = choose_score_threshold(match_detections(val_truth, val_detections))
        served = replace(served, score_threshold=float(choice.value))
        mlflow.log_metrics({"chosen_score_threshold": choice.value, "val_f1_50_at_chosen": choice.metric_value})
        mlflow.log_dict(choice.as_dict(), "thresholds/score_threshold.json")
        logger.info("%s: score threshold %.2f chosen on validation (F1@0.5 %.4f)", name, choice.value,
                    choice.metric_value)
    # ``served`` is what is tested, registered and served, chosen threshold included.
    test = load_instance_samples(coco, index, "test", served.normalization)
    test_truth = subset_coco(coco, split_ids(index, "test"))
    started = time.perf_counter()
    scores, test_detections = evaluate(net, test, test_truth, served)
    seconds_per_image = (time.perf_counter() - started) / max(1, len(test))
    # F1@0.5 with its bootstrap 95 % interval over the test images (their matches, detections and instances).
    counts = match_detections(test_truth, test_detections).per_image_counts(served.score_threshold)
    interval = bootstrap_interval(pooled_f1, *counts)
    scores = {**scores.as_dict(), "f1_50_ci_low": interval.low, "f1_50_ci_high": interval.high}
    costs = {"parameters": parameters, "train_seconds": float(sum(history.epoch_seconds)),
             "epochs": len(history.losses), "cpu_seconds_per_image": seconds_per_image}
    mlflow.log_metrics({**{f"test_{k}": v for k, v in scores.items()}, **costs,
                        "best_epoch": history.best_epoch})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        training_curves({k: v for k, v in history.curves().items() if k != "epoch_seconds"}, folder / "curves.png")
        mlflow.log_artifact(str(folder / "curves.png"), artifact_path="training")
        for image, target in test[:overlays]:
            picture = image.permute(1, 2, 0).numpy()  # as scored: normalised, colour kept
            drawn = overlay(picture, predict_picture(net, picture, served), served.categories)
            path = save_png(drawn, folder / f"test_{target['image_id']:04d}.png")
            mlflow.log_artifact(str(path), artifact_path="test_overlays")
    info = log_pytorch_model(net, input_example(index, served), ["models"],
                             output_of=no_output_schema)
    evaluation = {"name": name, "architecture": f"maskrcnn_{settings.backbone}_fpn", "init": model_spec.init,
                  "init_used": init_used, "model_uri": info.model_uri, "mlflow_run_id": active_run_id(),
                  "weights_sha256": weights_digest(net),
                  "scores": scores, "costs": costs, "settings": served.as_dict(),
                  "resumed_from_epoch": history.resumed_from_epoch}
    log_metadata(metadata={"scores": scores, "costs": costs})
    logger.info("%s test: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    return net, evaluation


@step
def compare_maskrcnn(evaluations: list[dict]) -> Annotated[dict, "comparison"]:
    """The comparison table (CSV and markdown) of every model on the test images, logged to the pipeline's
    parent MLflow run (and this step's): e.g. from-scratch vs transferred at equal budget."""
    return log_comparison(evaluations, SCORE_COLUMNS)
