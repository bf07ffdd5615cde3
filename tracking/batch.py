"""A registered model of any family as a batch predictor (:data:`cellops.batch.Predictor`): the model and its
registered settings resolved from the MLflow registry, then the family's own ``*_to_files`` function."""

from __future__ import annotations

from pathlib import Path

from cellops.batch import Predictor
from cellops.families import record_family
from tracking import tags as names
from tracking.cli import load_registered, resolve_registered

def resolve_batch_model(tracking_uri: str, model_uri: str) -> dict:
    """The :func:`tracking.tags.version_record` of ``model_uri`` with its ``family``; a LookupError naming what exists
    when there is no such model, version or alias."""
    name, record = resolve_registered(tracking_uri, model_uri)
    return {**record, "family": record_family(record[names.INFERENCE_SETTINGS]), "model_uri": model_uri}


def batch_predictor(tracking_uri: str, record: dict, *, slab: int = 8, cams: bool = False) -> Predictor:
    """Load the version of ``record`` (:func:`resolve_batch_model`) on the CPU and return its batch predictor."""
    name, inference = record["registered_model"], record[names.INFERENCE_SETTINGS]
    model = load_registered(tracking_uri, name, record)
    if record["family"] == "unet":
        from cellops.unet.predict import load_for_inference
        from cellops.unet.specs import UNetServing
        from cellops.unet.streaming import segment_volume_to_files

        settings, model = UNetServing.from_dict(inference), load_for_inference(model)
        return lambda path, out, stem: segment_volume_to_files(model, path, out, stem, settings, slab=slab)
    if record["family"] == "maskrcnn":
        from cellops.maskrcnn.predict import segment_image_to_files
        from cellops.maskrcnn.specs import MaskRCNNServing

        settings = MaskRCNNServing.from_dict(inference)
        return lambda path, out, stem: segment_image_to_files(model, path, out, stem, settings)
    from cellops.classifier.predict import classify_image_to_files
    from cellops.classifier.specs import ClassifierServing

    settings = ClassifierServing.from_dict(inference)
    return lambda path, out, stem: classify_image_to_files(model, Path(path), out, stem, settings, cams=cams)
