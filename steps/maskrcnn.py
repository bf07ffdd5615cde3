"""Steps of the Mask R-CNN pipeline (thin adapters over cellops.maskrcnn, models and tracking): read and split the
annotations, validate them, pretrain on the source dataset, train and evaluate each configured model in its own
MLflow run, compare them, register them and promote the best."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import mlflow
import numpy as np
import torch
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cellops.config import deep_merge
from cellops.io import read_image_file
from cellops.lineage import data_dir_for
from cellops.maskrcnn.data import (SPLITS, ImageSplitSettings, InstanceAugmentation, InstanceDataset,
                                   build_instance_augmentation, load_instance_samples, model_image, split_images,
                                   subset_coco)
from cellops.maskrcnn.train import evaluate_model, fit, loss_curves
from cellops.maskrcnn.specs import MaskRCNNTraining
from cellops.maskrcnn.evaluation import match_detections
from cellops.distributed import weights_digest
from cellops.metrics import bootstrap_interval, pooled_f1
from cellops.thresholds import choose_score_threshold
from cellops.maskrcnn.predict import overlay, predict_picture
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.maskrcnn.specs import AnnotationSource, MaskRCNNModelSpec, SourceSettings, instance_test_fingerprint
from cellops.maskrcnn.validation import AnnotationExpectations, summarise_annotations, validate_annotation_dataset
from cellops.plots import save_png, training_curves
from models.maskrcnn import build_maskrcnn, find_initial_weights, transfer_weights
from steps.registry import log_comparison, register_ranked
from steps.validation import data_docs_page
from tracking import tags
from tracking.runs import (active_run_id, close_abandoned_runs, closed_on_interrupt, log_pytorch_model, log_run_config,
                           process_tags, system_metrics)

logger = get_logger(__name__)

#: Scores in the comparison table, in this order.
SCORE_COLUMNS = ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "f1_50", "f1_50_ci_low", "f1_50_ci_high",
                 "precision_50", "recall_50")


def _input_example(index: dict, settings: MaskRCNNServing) -> np.ndarray:
    """A (1, 3, 64, 64) corner of the dataset's first image as the network takes it: the model's input example
    (small, since MLflow stores it as JSON)."""
    return model_image(read_image_file(index["files"][0]), settings.normalization)[None, :, :64, :64].numpy()


def _no_output_schema(model, output) -> None:
    """Mask R-CNN returns a list of dicts of varying length, which no MLflow tensor schema describes."""
    return None


def _at_revision(annotations: dict, lineage: dict) -> dict:
    """The annotation source's folders and file as they are in the lineage's ``data_rev`` (unchanged without one)."""
    if not lineage.get("data_rev"):
        return annotations
    moved = {**annotations, "images_dir": str(data_dir_for(annotations["images_dir"], lineage))}
    if annotations.get("path"):
        path = Path(annotations["path"])
        moved["path"] = str(data_dir_for(path.parent, lineage) / path.name if path.suffix else data_dir_for(path, lineage))
    return moved


def _read(annotations: dict, split: dict, lineage: dict) -> tuple[dict, dict]:
    source = AnnotationSource.from_dict(_at_revision(annotations, lineage))
    coco = source.load()
    return coco, split_images(coco, source.images_dir, ImageSplitSettings.from_dict(split))


def _content_key(coco: dict) -> str:
    """A hash of the annotations (a rerun after fixing labels must not resume from a checkpoint of the old ones)."""
    return hashlib.sha256(json.dumps(coco, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ids(index: dict, split: str) -> list[int]:
    return [i for i, s in zip(index["image_ids"], index["splits"]) if s == split]


def _serving(coco: dict, prediction: dict, max_detections: int) -> MaskRCNNServing:
    """The served settings of a model trained on ``coco``: the config's prediction settings, its detection limit
    and the annotations' categories."""
    return MaskRCNNServing.from_dict({**prediction, "max_detections": int(max_detections),
                                      "categories": {c["id"]: c["name"] for c in coco["categories"]}})


@step
def load_instance_annotations(lineage: dict, annotations: dict, split: dict) -> tuple[Annotated[dict, "annotations"],
                                                                      Annotated[dict, "dataset_index"]]:
    """Read the annotations (COCO, VIA, LabelMe or label images) as COCO, and split the images (not the
    instances) into train, val and test; identical pictures stay in one split."""
    coco, index = _read(annotations, split, lineage)
    counts = {s: index["splits"].count(s) for s in SPLITS}
    instances = {s: sum(1 for a in coco["annotations"] if a["image_id"] in set(_ids(index, s))) for s in SPLITS}
    log_metadata(metadata={"images": counts, "instances": instances,
                           "categories": [c["name"] for c in coco["categories"]]})
    logger.info("%d images %s, %d instances %s", len(index["files"]), counts, len(coco["annotations"]), instances)
    return coco, index


@step
def validate_instance_annotations(
    annotations: dict, dataset_index: dict, expectations: dict,
) -> tuple[Annotated[dict, "validation_result"], Annotated[HTMLString, "data_docs"]]:
    """The Great Expectations suite over the annotations: files exist and read at the annotated size, known
    categories, valid polygons inside the image, boxes matching masks, unique ids, instance counts within bounds,
    no picture in two splits. Result and Data Docs are kept, pass or fail."""
    expect = AnnotationExpectations.from_dict(expectations)
    table = summarise_annotations(annotations, dataset_index["images_dir"], dataset_index, expect)
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_annotation_dataset(table, expect, data_docs_dir=Path(tmp))
        html = data_docs_page(Path(tmp))
    log_metadata(metadata={"validation_success": report.success, "failed_expectations": report.failures})
    return {"success": report.success, "failures": report.failures, "results": report.results}, html


def _train(name: str, model: torch.nn.Module, coco: dict, index: dict, training: dict, augmentation: dict,
           served: MaskRCNNServing, checkpoint_dir: str, checkpoint_key: dict) -> tuple[object, list, list]:
    config = MaskRCNNTraining.from_dict(training)
    normalization = served.normalization  # training sees images scaled as they will be served
    train = load_instance_samples(coco, index, "train", normalization)
    val = load_instance_samples(coco, index, "val", normalization)
    torch.manual_seed(config.seed)
    history = fit(model, InstanceDataset(train, build_instance_augmentation(InstanceAugmentation.from_dict(augmentation))),
                  val, subset_coco(coco, _ids(index, "val")), config, served,
                  checkpoint_dir=Path(checkpoint_dir) / name if checkpoint_dir else None,
                  checkpoint_key=checkpoint_key,
                  on_epoch_end=lambda epoch, m: mlflow.log_metrics(m, step=epoch))
    return history, train, val


def _weights_key(model: torch.nn.Module) -> str:
    """A fingerprint of a model's initial weights (a transferred model's checkpoint belongs to its source model)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@step
def pretrain_on_source(
    lineage: dict, model: dict, training: dict, augmentation: dict, prediction: dict, max_detections: int,
    source: dict, checkpoint_dir: str,
) -> Annotated[torch.nn.Module, "source_model"]:
    """Train the shared model settings on the source dataset (e.g. nuclei: many instances per image), in its own
    MLflow run; models with ``init: source`` start from it. ``source`` holds its annotations, split and overrides
    of the shared model, training and augmentation settings (e.g. crops that keep small nuclei at full size)."""
    source_settings = SourceSettings.from_dict(source)
    coco, index = _read(source_settings.annotations, source_settings.split, lineage)
    expect = AnnotationExpectations.from_dict(source_settings.expectations)
    report = validate_annotation_dataset(summarise_annotations(coco, index["images_dir"], index, expect), expect)
    if not report.success:
        raise ValueError("source dataset validation failed; failed expectations:\n  - " + "\n  - ".join(report.failures))
    settings = MaskRCNNModelSpec(model=source_settings.model).settings(model)
    config = deep_merge(training, source_settings.training)
    net = build_maskrcnn(settings, len(coco["categories"]) + 1, seed=int(config.get("seed", 0)))
    served = _serving(coco, prediction, max_detections)
    mlflow.set_tags({**tags.lineage_to_tags(lineage), "role": "source_model",
                     "source_images": source_settings.annotations["images_dir"]})
    mlflow.log_params({"source.images": len(index["files"]), "source.instances": len(coco["annotations"])})
    augmentation = deep_merge(augmentation, source_settings.augmentation)
    history, _, _ = _train("source", net, coco, index, config, augmentation, served, checkpoint_dir,
                           {"data": index["md5"], "annotations": _content_key(coco), "splits": index["splits"],
                            "model": settings.as_dict(), "role": "source", "augmentation": augmentation})
    best = next((v for v in history.validation if v["epoch"] == history.best_epoch), {})
    mlflow.log_metrics({f"source_best_val_{k}": v for k, v in best.items() if k != "epoch"})
    log_pytorch_model(net, _input_example(index, served), ["models"], output_of=_no_output_schema)
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
) -> tuple[Annotated[torch.nn.Module, "maskrcnn"], Annotated[dict, "evaluation"]]:
    """Train one configured model on the shared split with the shared seeded augmentation, evaluate it on the
    test images as it would be served, and log curves, scores, speed and test overlays to its own MLflow run."""
    coco, index = annotations, dataset_index
    model_spec = MaskRCNNModelSpec.from_dict(spec)
    settings = model_spec.settings(model)
    config = deep_merge(training, model_spec.training)
    weights = find_initial_weights(model_spec.init, settings.backbone, model_spec.weights_file)
    for note in weights.notes:
        logger.warning("%s: %s", name, note)
    net = build_maskrcnn(settings, len(coco["categories"]) + 1, imagenet_weights=weights.imagenet,
                         coco_weights=weights.coco, seed=int(config.get("seed", 0)))
    if model_spec.init == "source":
        if source_model is None:
            raise ValueError(f"{name}: init 'source' needs the model pretrained on the source dataset, which this "
                             "run did not train (set steps.pretrain_on_source)")
        skipped = transfer_weights(net, source_model)
        logger.info("%s: initialised from the source model (not transferred: %s)", name, skipped or "nothing")
    served = _serving(coco, prediction, max_detections)
    log_run_config()
    close_abandoned_runs()
    mlflow.set_tags({**tags.lineage_to_tags(lineage), tags.ZENML_RUN_ID: str(get_step_context().pipeline_run.id),
                     **process_tags(),
                     tags.MODEL_NAME: name, tags.ARCHITECTURE: f"maskrcnn_{settings.backbone}_fpn",
                     tags.INIT: model_spec.init, tags.INIT_USED: weights.kind})
    mlflow.log_params({f"model.{k}": v for k, v in settings.as_dict().items()})
    parameters = sum(p.numel() for p in net.parameters())
    logger.info("%s: Mask R-CNN %s-FPN from %s, %d parameters; %s images", name, settings.backbone, weights.kind,
                parameters, {s: index["splits"].count(s) for s in SPLITS})
    with closed_on_interrupt(), system_metrics():
        history, _, val = _train(name, net, coco, index, config, augmentation, served, checkpoint_dir,
                               {"data": index["md5"], "annotations": _content_key(coco), "splits": index["splits"],
                                "spec": spec, "model": settings.as_dict(), "augmentation": augmentation,
                                "init_used": weights.kind,
                                "source": _weights_key(net) if model_spec.init == "source" else None})
    mlflow.set_tag(tags.RESUMED_FROM_EPOCH, str(history.resumed_from_epoch))
    net = net.cpu().eval()
    if val:  # the served score threshold: the best validation F1@0.5, never the test images
        val_truth = subset_coco(coco, _ids(index, "val"))
        _, val_detections = evaluate_model(net, val, val_truth, served)
        choice = choose_score_threshold(match_detections(val_truth, val_detections))
        served = replace(served, score_threshold=float(choice.value))
        mlflow.log_metrics({"chosen_score_threshold": choice.value, "val_f1_50_at_chosen": choice.metric_value})
        mlflow.log_dict(choice.as_dict(), "thresholds/score_threshold.json")
        logger.info("%s: score threshold %.2f chosen on validation (F1@0.5 %.4f)", name, choice.value,
                    choice.metric_value)
    # ``served`` is what is tested, registered and served, chosen threshold included.
    test = load_instance_samples(coco, index, "test", served.normalization)
    test_truth = subset_coco(coco, _ids(index, "test"))
    started = time.perf_counter()
    scores, test_detections = evaluate_model(net, test, test_truth, served)
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
        training_curves(loss_curves(history), folder / "curves.png")
        mlflow.log_artifact(str(folder / "curves.png"), artifact_path="training")
        for image, target in test[:overlays]:
            picture = image.permute(1, 2, 0).numpy()  # as scored: normalised, colour kept
            drawn = overlay(picture, predict_picture(net, picture, served), served.categories)
            path = save_png(drawn, folder / f"test_{target['image_id']:04d}.png")
            mlflow.log_artifact(str(path), artifact_path="test_overlays")
    info = log_pytorch_model(net, _input_example(index, served), ["models"],
                             output_of=_no_output_schema)
    evaluation = {"name": name, "architecture": f"maskrcnn_{settings.backbone}_fpn", "init": model_spec.init,
                  "init_used": weights.kind, "model_uri": info.model_uri, "mlflow_run_id": active_run_id(),
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


@step(enable_cache=False)  # a side effect: a cache hit would silently skip the registration
def register_maskrcnn(
    evaluations: list[dict],
    annotations: dict,
    dataset_index: dict,
    lineage: dict,
    registered_model_name: str,
    promotion_metric: str,
    tie_breakers: list[str],
    alias: str,
    min_improvement: float,
) -> Annotated[dict, "registration"]:
    """Register every trained model (best first) and move ``alias`` to one only if it beats the champion on the
    same test images and annotations; a champion scored on another test set is re-scored on this one."""
    test_set = instance_test_fingerprint(annotations, dataset_index)
    truth = subset_coco(annotations, _ids(dataset_index, "test"))

    def rescore(champion) -> dict[str, float]:
        inference = tags.inference_from_tags(champion.tags) or {}
        ours = {str(c["id"]): c["name"] for c in annotations["categories"]}
        if {str(k): v for k, v in (inference.get("categories") or {}).items()} != ours:  # same names under the same ids, or its labels mean other classes
            raise ValueError(f"the champion's categories {inference.get('categories')} are not this run's {ours}: "
                             "not comparable; register under another name")
        old = mlflow.pytorch.load_model(f"models:/{registered_model_name}/{champion.version}", map_location="cpu")
        settings = MaskRCNNServing.from_dict(inference)  # the champion's own: it is judged as it is served
        test = load_instance_samples(annotations, dataset_index, "test", settings.normalization)
        return evaluate_model(old.eval(), test, truth, settings)[0].as_dict()

    return register_ranked(evaluations, lineage, test_set, rescore, registered_model_name=registered_model_name,
                           promotion_metric=promotion_metric, tie_breakers=tie_breakers, alias=alias,
                           min_improvement=min_improvement)

