"""A registered model of any family on the batch engine (:mod:`cellops.batch`): the model and its registered settings
resolved from the MLflow registry, then the family's own ``*_to_files`` function as the batch's processor. What
``cellops predict`` and the batch inference pipeline run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cellops.batch import BatchResult, Processor, run_batch
from cellops.families import read_serving, record_family
from cellops.io import FileReading
from cellops.ood import DEFAULT_POLICY, OODReference, check_policy
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


def batch_key(record: dict, *, cams: bool = False, reading: FileReading = FileReading(),
              uncertainty: bool = False, policy: str = DEFAULT_POLICY) -> str:
    """What a prediction's outputs depend on besides the input (the batch key of :func:`cellops.batch.run_batch`):
    the model version, for a classifier whether CAMs are drawn, whether the uncertainty is measured (so that
    results without it are predicted again when it is asked for), and the ``refuse`` OOD policy (a file refused
    is never recorded as done, but one predicted under ``flag`` must be judged again when refusal is asked for).

    Parameters
    ----------
    record : dict
        :func:`resolve_batch_model`.
    cams : bool
        Classifier: CAM overlays drawn.
    reading : FileReading
        The channel and scene read from each file (added when chosen).
    uncertainty : bool
        The uncertainty of each prediction measured.
    policy : str
        The out-of-distribution policy (:data:`cellops.ood.POLICIES`).

    Returns
    -------
    str
        ``NAME/VERSION``, ``+cams`` added for a classifier drawing them, ``+uncertainty`` when measured,
        ``+refuse`` under the refuse policy, ``+channel=...`` for a chosen channel.

    Examples
    --------
    >>> batch_key({"registered_model": "cellops-classifier", "model_version": "3", "family": "classifier"}, cams=True)
    'cellops-classifier/3+cams'
    >>> batch_key({"registered_model": "cellops-unet", "model_version": "2", "family": "unet"}, uncertainty=True)
    'cellops-unet/2+uncertainty'
    >>> batch_key({"registered_model": "cellops-unet", "model_version": "2", "family": "unet"}, policy="refuse")
    'cellops-unet/2+refuse'
    """
    key = f"{record['registered_model']}/{record['model_version']}"
    key += "+cams" if cams and record["family"] == "classifier" else ""
    key += "+uncertainty" if uncertainty else ""
    key += "+refuse" if check_policy(policy) == "refuse" else ""
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


def batch_reference(tracking_uri: str, record: dict) -> OODReference | None:
    """The OOD reference registered with the version of ``record`` (None for a version registered without one:
    its predictions then say so in ``ood_reason``).

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    record : dict
        :func:`resolve_batch_model`.

    Returns
    -------
    OODReference or None
    """
    from tracking.registry import load_ood_reference

    return load_ood_reference(tracking_uri, record["registered_model"], record["model_version"])


def batch_predictor(tracking_uri: str, record: dict, *, slab: int = 8, cams: bool = False,
                    reading: FileReading = FileReading(), uncertainty: bool = False,
                    policy: str = DEFAULT_POLICY) -> Processor:
    """Load the version of ``record`` on the CPU with its OOD reference (:func:`batch_reference`) and return its
    batch processor: each file's results carry its out-of-distribution verdict (``ood_score``, ``ood_threshold``,
    ``in_distribution``, ``ood_reason``).

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
    uncertainty : bool
        Also measure each prediction's uncertainty (``uncertainty`` and ``uncertainty_method`` in its results;
        :mod:`cellops.uncertainty`); the predictions themselves are the same.
    policy : str
        ``flag``: predict every file and flag those out of distribution; ``refuse``: such a file fails with the
        :class:`cellops.ood.OutOfDistribution` message (the batch goes on).

    Returns
    -------
    cellops.batch.Processor
        ``(path, out_dir, stem) -> {"outputs": [...], **results}``.
    """
    check_policy(policy)
    settings = read_serving(record[names.INFERENCE_SETTINGS])  # the family's <Family>Serving, parsed once
    model, choice = version_on_host(tracking_uri, record)
    logging.getLogger("cellops").info(choice.summary())
    ran_on = {"runtime": choice.runtime, "runtime_precision": choice.precision}
    ood = {"reference": batch_reference(tracking_uri, record), "policy": policy}
    if record["family"] == "unet":
        from cellops.unet.streaming import segment_volume_to_files

        def segment(path, out, stem) -> dict:
            results = segment_volume_to_files(model, path, out, stem, settings, slab=slab, **ood)
            if uncertainty:
                measured = volume_uncertainty(model, path, settings, slab=slab)
                results = {**results, "uncertainty": round(measured.image, 6), "uncertainty_method": measured.method}
            return {**results, **ran_on}

        return segment
    if record["family"] == "maskrcnn":
        from cellops.maskrcnn.files import segment_image_to_files

        return lambda path, out, stem: {**segment_image_to_files(model, path, out, stem, settings, reading=reading,
                                                                 uncertainty=uncertainty, **ood), **ran_on}
    from cellops.classifier.predict import classify_image_to_files

    return lambda path, out, stem: {**classify_image_to_files(model, Path(path), out, stem, settings, cams=cams,
                                                              reading=reading, uncertainty=uncertainty, **ood),
                                    **ran_on}


def version_on_host(tracking_uri: str, record: dict, *, override: str | None = None,
                    cache_dir: str | Path | None = None):
    """The registered version of ``record`` in the runtime chosen for this CPU (:mod:`cellops.host_runtime`):
    ``CELLOPS_RUNTIME`` (or ``override``) if set, else the cached choice for this host, else the fastest of the
    runtimes the registry found accurate, timed now. Its exported graphs are downloaded once, beside the cached
    choices.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    record : dict
        :func:`resolve_batch_model`.
    override : str or None, optional
        A runtime to use untimed.
    cache_dir : str or Path or None, optional
        Where choices are cached (:func:`cellops.host_runtime.default_cache_dir`); the graphs go to its
        ``graphs/`` folder.

    Returns
    -------
    module : torch.nn.Module
        The network, prepared for inference, in the chosen runtime.
    choice : cellops.host_runtime.HostChoice
        The choice and its evidence (:meth:`~cellops.host_runtime.HostChoice.summary`).
    """
    from cellops.family_runtimes import run_on_host
    from cellops.host_runtime import default_cache_dir, file_name, model_key

    name, version, run_id = record["registered_model"], record["model_version"], record.get(names.MLFLOW_RUN_ID)
    key = model_key(name, version, run_id)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = version_graphs_cached(tracking_uri, run_id, cache_dir / "graphs" / file_name(key))
    model = load_registered(tracking_uri, name, record)
    return run_on_host(record["family"], model, read_serving(record[names.INFERENCE_SETTINGS]), folder,
                       model_name=key, checks=record.get(names.RUNTIME_CHECKS) or [],
                       registry_runtime=record.get(names.RUNTIME) or "torch", override=override, cache_dir=cache_dir)


def version_graphs_cached(tracking_uri: str, run_id: str | None, folder: Path) -> Path | None:
    """The ``runtimes/`` artifacts of ``run_id`` in ``folder``, downloaded the first time (None: it has none)."""
    import shutil
    import tempfile

    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    if folder.is_dir():
        return folder
    if run_id is None or not MlflowClient(tracking_uri).list_artifacts(run_id, names.RUNTIME_ARTIFACTS):
        return None
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:  # complete or absent: renamed into place
        downloaded = download_artifacts(run_id=run_id, artifact_path=names.RUNTIME_ARTIFACTS, dst_path=tmp,
                                        tracking_uri=tracking_uri)
        try:
            shutil.move(downloaded, folder)
        except OSError:
            if not folder.is_dir():  # another process moved its copy first: use that one
                raise
    return folder


def volume_uncertainty(model, source: str | Path, settings, *, slab: int = 8):
    """The U-Net's uncertainty over a whole volume file, read slab by slab as it was segmented
    (:func:`cellops.unet.predict.stack_uncertainty`: the same normalisation bounds and z-smoothing halos).

    Parameters
    ----------
    model : nn.Module
        The U-Net, prepared for inference.
    source : str or Path
        The TIFF stack or zarr array.
    settings : UNetServing
        As served.
    slab : int
        Slices read at a time.

    Returns
    -------
    cellops.uncertainty.Uncertainty
        Method ``flip-tta``, without a pixel map.
    """
    from cellops.unet.predict import stack_uncertainty
    from cellops.unet.streaming import read_slab, volume_bounds, volume_info

    depth = volume_info(source).shape[0]
    halo = settings.z_smoothing // 2

    def slabs():
        for start in range(0, depth, slab):
            stop = min(depth, start + slab)
            first, last = max(0, start - halo), min(depth, stop + halo)
            yield read_slab(source, first, last), slice(start - first, stop - first)

    return stack_uncertainty(model, slabs(), settings, bounds=volume_bounds(source, settings.normalization, slab=slab))


def predict_files(tracking_uri: str, record: dict, files: Sequence[Path], out_dir: str | Path, *, slab: int = 8,
                  cams: bool = False, progress: bool | None = True,
                  reading: FileReading = FileReading(), uncertainty: bool = False,
                  policy: str = DEFAULT_POLICY) -> BatchResult:
    """Predict every file with the version of ``record`` on the batch engine, resumable: a file predicted into
    ``out_dir`` before by the same version (and, for a classifier, with CAMs as asked; with the uncertainty when
    asked; under the same OOD policy) from the same content is skipped. Each file's row carries its
    out-of-distribution verdict.

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
    uncertainty : bool
        Also measure each prediction's uncertainty: ``uncertainty`` and ``uncertainty_method`` columns in
        ``batch_summary.csv`` (costs about eight predictions per file instead of one for the segmentation
        families; see ``benchmarks/uncertainty_cost.py``).
    policy : str
        The OOD policy: ``flag`` (default) or ``refuse`` (a file out of distribution fails with the reason).

    Returns
    -------
    cellops.batch.BatchResult
        One row per file: ``ood_score``, ``ood_threshold``, ``in_distribution`` and ``ood_reason`` among its
        results.
    """
    predict = batch_predictor(tracking_uri, record, slab=slab, cams=cams, reading=reading, uncertainty=uncertainty,
                              policy=policy)
    key = batch_key(record, cams=cams, reading=reading, uncertainty=uncertainty, policy=policy)
    return run_batch(files, out_dir, predict, key, progress=progress)


def ood_counts(rows: list[dict]) -> dict[str, int]:
    """How many inputs of a batch's rows (:attr:`cellops.batch.BatchResult.rows`) were predicted in and out of
    distribution or not scored (kept from an earlier run included), and how many were refused (failed under the
    ``refuse`` policy).

    >>> ood_counts([{"status": "done", "in_distribution": False}, {"status": "failed", "problem": "a: the image is "
    ...             "out of distribution: ..."}, {"status": "skipped", "in_distribution": None}])
    {'in_distribution': 0, 'out_of_distribution': 1, 'not_scored': 1, 'refused': 1}
    """
    kept = [r for r in rows if r.get("status") in ("done", "skipped")]
    return {"in_distribution": sum(r.get("in_distribution") is True for r in kept),
            "out_of_distribution": sum(r.get("in_distribution") is False for r in kept),
            "not_scored": sum(r.get("in_distribution") is None for r in kept),
            "refused": sum(r.get("status") == "failed" and "out of distribution" in str(r.get("problem", ""))
                           for r in rows)}
