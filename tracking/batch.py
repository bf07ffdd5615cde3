"""A registered model of any family as a batch predictor (:data:`cellops.batch.Predictor`): the model and its
registered settings resolved from the MLflow registry, then the family's own ``*_to_files`` function."""

from __future__ import annotations

from pathlib import Path

from cellops.batch import Predictor
from tracking import tags as names
from tracking.cli import load_registered, resolve_registered

FAMILIES = ("unet", "classifier", "maskrcnn")


def model_family(inference: dict | None) -> str:
    """Which family a version's registered inference settings belong to.

    >>> model_family({"tile_size": 128, "threshold": 0.5}), model_family({"classes": ["a", "b"]})
    ('unet', 'classifier')
    """
    inference = inference or {}
    if "categories" in inference:
        return "maskrcnn"
    if "classes" in inference:
        return "classifier"
    if "tile_size" in inference:
        return "unet"
    raise LookupError("this model version was registered without the inference settings of a cellops family "
                      "(U-Net, classifier, Mask R-CNN); retrain it with its pipeline")


def resolve_batch_model(tracking_uri: str, model_uri: str) -> dict:
    """The :func:`tracking.tags.version_record` of ``model_uri`` with its ``family``; a LookupError naming what exists
    when there is no such model, version or alias."""
    name, record = resolve_registered(tracking_uri, model_uri)
    return {**record, "family": model_family(record[names.INFERENCE_SETTINGS]), "model_uri": model_uri}


def batch_predictor(tracking_uri: str, record: dict, *, slab: int = 8, cams: bool = False) -> Predictor:
    """Load the version of ``record`` (:func:`resolve_batch_model`) on the CPU and return its batch predictor."""
    name, inference = record["registered_model"], record[names.INFERENCE_SETTINGS]
    model = load_registered(tracking_uri, name, record)
    if record["family"] == "unet":
        from cellops.unet.predict import InferenceSettings, load_for_inference
        from cellops.unet.streaming import segment_volume_to_files

        settings, model = InferenceSettings.from_dict(inference), load_for_inference(model)
        return lambda path, out, stem: segment_volume_to_files(model, path, out, stem, settings, slab=slab)
    if record["family"] == "maskrcnn":
        from cellops.maskrcnn.predict import PredictionSettings, segment_image_to_files

        settings = PredictionSettings.from_dict({k: v for k, v in inference.items()
                                                 if k not in ("max_detections", "categories")})
        categories = {int(k): v for k, v in inference["categories"].items()}
        return lambda path, out, stem: segment_image_to_files(model, path, out, stem, settings, categories)
    from cellops.classifier.predict import ClassifierSettings, classify_image_to_files

    settings = ClassifierSettings.from_dict(inference)
    return lambda path, out, stem: classify_image_to_files(model, Path(path), out, stem, settings, cams=cams)
