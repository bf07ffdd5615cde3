"""A registered model of any family on the batch engine (:mod:`cellops.batch`): the model and its registered settings
resolved from the MLflow registry, then the family's own ``*_to_files`` function as the batch's processor. What
``cellops predict`` and the batch inference pipeline run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cellops.batch import BatchResult, Processor, run_batch
from cellops.families import read_serving, record_family
from cellops.io import FileReading
from tracking import tags as names
from tracking.registry import load_registered, resolve_registered


def resolve_batch_model(tracking_uri: str, model_uri: str) -> dict:
    """The registered version ``model_uri`` names, with its family.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    model_uri : str
        ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.

    Returns
    -------
    dict
        Its :func:`tracking.tags.version_record`, with ``family`` and ``model_uri``.

    Raises
    ------
    LookupError
        Naming what exists, when there is no such model, version or alias.
    """
    name, record = resolve_registered(tracking_uri, model_uri)
    return {**record, "family": record_family(record[names.INFERENCE_SETTINGS]), "model_uri": model_uri}


def batch_key(record: dict, *, cams: bool = False, reading: FileReading = FileReading()) -> str:
    """What a prediction's outputs depend on besides the input (the batch key of :func:`cellops.batch.run_batch`):
    the model version, and for a classifier whether CAMs are drawn.

    Parameters
    ----------
    record : dict
        :func:`resolve_batch_model`.
    cams : bool
        Classifier: CAM overlays drawn.
    reading : FileReading
        The channel and scene read from each file (added when chosen).

    Returns
    -------
    str
        ``NAME/VERSION``, ``+cams`` added for a classifier drawing them, ``+channel=...`` for a chosen channel.

    Examples
    --------
    >>> batch_key({"registered_model": "cellops-classifier", "model_version": "3", "family": "classifier"}, cams=True)
    'cellops-classifier/3+cams'
    """
    key = f"{record['registered_model']}/{record['model_version']}"
    key += "+cams" if cams and record["family"] == "classifier" else ""
    return key + "".join(f"+{name}={value}" for name, value in (("channel", reading.channel), ("scene", reading.scene))
                         if value is not None)


def describe_settings(record: dict) -> str:
    """The registered settings a prediction runs with, in words (normalisation and decision).

    Parameters
    ----------
    record : dict
        :func:`resolve_batch_model`.

    Returns
    -------
    str
        E.g. ``percentile 1-99 normalisation, threshold 0.5``.
    """
    inference = record[names.INFERENCE_SETTINGS]
    if record["family"] == "unet":
        from cellops.unet.specs import UNetServing

        settings = UNetServing.from_dict(inference)
        decision = f"threshold {settings.threshold:g}"
    elif record["family"] == "maskrcnn":
        from cellops.maskrcnn.specs import MaskRCNNServing

        settings = MaskRCNNServing.from_dict(inference)
        decision = f"score threshold {settings.score_threshold:g}"
    else:
        from cellops.classifier.specs import ClassifierServing

        settings = ClassifierServing.from_dict(inference)
        decision = "most probable class" if settings.decision_threshold is None else \
            f"{settings.positive_class} from p >= {settings.decision_threshold:g}"
    return f"{settings.normalization.describe()} normalisation, {decision}"


def batch_predictor(tracking_uri: str, record: dict, *, slab: int = 8, cams: bool = False,
                    reading: FileReading = FileReading()) -> Processor:
    """Load the version of ``record`` on the CPU and return its batch processor.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    record : dict
        :func:`resolve_batch_model`.
    slab : int
        U-Net: slices read, segmented and written at a time.
    cams : bool
        Classifier: draw each image's CAM overlay (``<stem>_cam.png``).
    reading : FileReading
        The channel and scene to read from multi-channel or multi-scene files (Mask R-CNN, classifier).

    Returns
    -------
    cellops.batch.Processor
        ``(path, out_dir, stem) -> {"outputs": [...], **results}``.
    """
    settings = read_serving(record[names.INFERENCE_SETTINGS])  # the family's <Family>Serving, parsed once
    model = load_registered(tracking_uri, record["registered_model"], record)
    if record["family"] == "unet":
        from cellops.unet.predict import load_for_inference
        from cellops.unet.streaming import segment_volume_to_files

        model = load_for_inference(model)
        return lambda path, out, stem: segment_volume_to_files(model, path, out, stem, settings, slab=slab)
    if record["family"] == "maskrcnn":
        from cellops.maskrcnn.predict import segment_image_to_files

        return lambda path, out, stem: segment_image_to_files(model, path, out, stem, settings, reading=reading)
    from cellops.classifier.predict import classify_image_to_files

    return lambda path, out, stem: classify_image_to_files(model, Path(path), out, stem, settings, cams=cams,
                                                           reading=reading)


def predict_files(tracking_uri: str, record: dict, files: Sequence[Path], out_dir: str | Path, *, slab: int = 8,
                  cams: bool = False, progress: bool | None = True,
                  reading: FileReading = FileReading()) -> BatchResult:
    """Predict every file with the version of ``record`` on the batch engine, resumable: a file predicted into
    ``out_dir`` before by the same version (and, for a classifier, with CAMs as asked) from the same content is
    skipped.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    record : dict
        :func:`resolve_batch_model`.
    files : sequence of Path
        Images or volumes (TIFF stacks, zarr arrays), each once.
    out_dir : str or Path
        The output folder: the family's outputs per file, ``batch_summary.csv`` and ``batch_manifest.json``.
    slab : int
        U-Net: slices read, segmented and written at a time.
    cams : bool
        Classifier: draw each image's CAM overlay.
    progress : bool or None
        Progress bar over the files (None: only on a terminal).
    reading : FileReading
        The channel and scene to read from multi-channel or multi-scene files.

    Returns
    -------
    cellops.batch.BatchResult
        One row per file.
    """
    predict = batch_predictor(tracking_uri, record, slab=slab, cams=cams, reading=reading)
    return run_batch(files, out_dir, predict, batch_key(record, cams=cams, reading=reading), progress=progress)
