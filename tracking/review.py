"""Review sets of a registered model's predictions (``cellops review export``) and the import of their corrections
(``cellops corrections import``): the registry side of :mod:`cellops.review` and :mod:`cellops.corrections`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cellops.families import read_serving
from cellops.io import FileReading
from cellops.review import ReviewPrediction, ReviewSet, write_review_set
from tracking import tags as names


def model_uri(reference: str) -> str:
    """The ``models:/`` URI of ``MODEL``, ``MODEL@ALIAS``, ``MODEL:VERSION`` or a ``models:/`` URI (``MODEL``
    alone: its champion).

    Examples
    --------
    >>> model_uri("cellops-unet"), model_uri("cellops-unet:3"), model_uri("cellops-unet@candidate")
    ('models:/cellops-unet@champion', 'models:/cellops-unet/3', 'models:/cellops-unet@candidate')
    >>> model_uri("models:/cellops-unet/2")
    'models:/cellops-unet/2'
    """
    if reference.startswith("models:/"):
        return reference
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return f"models:/{name}@{alias}"
    if ":" in reference:
        name, version = reference.split(":", 1)
        return f"models:/{name}/{version}"
    return f"models:/{reference}@champion"


def _predictor(record: dict, model, reading: FileReading):
    """``path -> ReviewPrediction`` for the version of ``record`` (its family's prediction with uncertainty)."""
    from cellops.microscopy import open_image

    settings = read_serving(record[names.INFERENCE_SETTINGS])
    family = record["family"]
    if family == "unet":
        from cellops.unet.predict import load_for_inference, segment_with_uncertainty

        prepared = load_for_inference(model)

        def predict_unet(path: Path) -> ReviewPrediction:
            image = open_image(path, channel=reading.channel, scene=reading.scene).single_channel("segmented")
            mask, uncertainty = segment_with_uncertainty(prepared, image.data, settings)
            return ReviewPrediction(path, uncertainty.image, labels=mask.astype("uint8"),
                                    pixel_size_um=image.yx_pixel_size_um, method=uncertainty.method)

        return predict_unet, "unet"
    if family == "maskrcnn":
        from cellops.maskrcnn.predict import label_image, predict_with_uncertainty

        def predict_maskrcnn(path: Path) -> ReviewPrediction:
            image = open_image(path, channel=reading.channel, scene=reading.scene)
            instances, uncertainty = predict_with_uncertainty(model, image.data, settings)
            labels = label_image(instances, image.data.shape[:2])
            categories = {i: settings.categories.get(instance.category, str(instance.category))
                          for i, instance in enumerate(instances, start=1)}
            return ReviewPrediction(path, uncertainty.image, labels=labels, categories=categories,
                                    object_uncertainty=uncertainty.per_object, pixel_size_um=image.yx_pixel_size_um,
                                    method=uncertainty.method)

        return predict_maskrcnn, "maskrcnn"
    from cellops.classifier.data import load_class_images
    from cellops.classifier.predict import classify_with_uncertainty

    def predict_classifier(path: Path) -> ReviewPrediction:
        images, failures = load_class_images([path], channels=settings.channels, size=settings.size,
                                             normalization=settings.normalization, reading=reading)
        if failures:
            raise ValueError(failures[0][1])
        probabilities, uncertainties = classify_with_uncertainty(model, images, settings)
        label = settings.classes[int(settings.predicted_classes(probabilities)[0])]
        return ReviewPrediction(path, uncertainties[0].image, label=label,
                                probabilities={name: float(p) for name, p in zip(settings.classes, probabilities[0])},
                                method=uncertainties[0].method)

    return predict_classifier, "classifier"


def export_review(tracking_uri: str, reference: str, files: Sequence[Path], out: Path, *,
                  reading: FileReading = FileReading()) -> tuple[ReviewSet, list[tuple[Path, str]]]:
    """Predict ``files`` with a registered version, with uncertainty, and write them as a review set.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    reference : str
        ``MODEL``, ``MODEL@ALIAS``, ``MODEL:VERSION`` or a ``models:/`` URI.
    files : sequence of Path
        The images to review.
    out : Path
        The review set's folder (new, or empty).
    reading : FileReading
        The channel and scene to read from multi-channel or multi-scene files.

    Returns
    -------
    review : ReviewSet
        The set written (images that could not be read are left out).
    failures : list of (Path, str)
        The files left out, and why.

    Raises
    ------
    LookupError
        No such store, model, version or alias; a version registered without its family's settings.
    ValueError
        When no file could be predicted, or ``out`` is not a new or empty folder (nothing is written).
    """
    from cellops.errors import ImageInputError
    from cellops.review import ReviewError
    from tracking.batch import resolve_batch_model
    from tracking.registry import load_registered

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReviewError(f"{out}: exists and is not an empty folder; a review set is written into a new folder "
                          "(its corrections are never overwritten)")
    record = resolve_batch_model(tracking_uri, model_uri(reference))
    model = load_registered(tracking_uri, record["registered_model"], record)
    predict, family = _predictor(record, model, reading)
    predictions, failures = [], []
    for path in files:
        try:
            predictions.append(predict(Path(path)))
        except (ImageInputError, ValueError, OSError) as error:
            failures.append((Path(path), str(error)))
    if not predictions:
        raise ReviewError("no image could be predicted: " + "; ".join(f"{p}: {why}" for p, why in failures))
    settings = read_serving(record[names.INFERENCE_SETTINGS])
    review = write_review_set(
        out, family=family, predictions=predictions, uncertainty_method=predictions[0].method,
        model={"name": record["registered_model"], "version": record["model_version"],
               "uri": model_uri(reference), "run_id": record.get(names.MLFLOW_RUN_ID)},
        classes=getattr(settings, "classes", None) if family == "classifier" else None,
        categories=getattr(settings, "categories", None) if family == "maskrcnn" else None,
        channel=reading.channel, scene=reading.scene)
    return review, failures


#: The commands of this module (:func:`add_commands`, :func:`run_command`).
COMMANDS = ("review", "corrections")
#: The loop's config of each family (:mod:`pipelines.corrections`).
LOOP_CONFIG = "configs/corrections_{family}.yaml"


def add_commands(commands) -> None:
    """Add ``cellops review export|status`` and ``cellops corrections import`` to the ``cellops`` parser.

    Parameters
    ----------
    commands : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.
    """
    review = commands.add_parser("review", help="review sets: a model's predictions to correct, most uncertain first")
    actions = review.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export", help="predict images with a registered model and write them as a review set",
        description="Write a review set: the images, the predictions as editable annotations (OME-TIFF label "
                    "images; COCO for Mask R-CNN; a CSV of labels for the classifier), the model version that made "
                    "them, and queue.csv ordered by uncertainty, most uncertain first. Open it in napari "
                    "(Plugins > cellops review) or correct the files with any editor.",
        epilog="exit codes: 0 written; 1 written without some images (named); 2 nothing written")
    export.add_argument("model", help="MODEL, MODEL@ALIAS, MODEL:VERSION or models:/... (MODEL alone: its champion), "
                        "e.g. cellops-unet@champion")
    export.add_argument("images", type=Path, nargs="+", help="image files (any format `cellops predict` reads)")
    export.add_argument("--out", type=Path, required=True, help="the review set's folder (new or empty)")
    export.add_argument("--channel", metavar="NAME|INDEX", help="the channel to read from multi-channel files")
    export.add_argument("--scene", metavar="NAME|INDEX", help="the scene (series) to read from multi-scene files")
    export.add_argument("--tracking-uri", default=None)
    status = actions.add_parser("status", help="how far a review set's review has come")
    status.add_argument("review_dir", type=Path)
    annotations = actions.add_parser(
        "import-annotations", help="save corrections made in CVAT, Label Studio, VIA or LabelMe into a review set",
        description="Each image the export annotates gets its objects as its corrected label image (U-Net: their "
                    "union as the mask), checked like any correction. Start the tool from the review set's "
                    "predictions/predictions.json (COCO) and images/.",
        epilog="exit codes: 0 saved; 2 refused (named)")
    annotations.add_argument("review_dir", type=Path)
    annotations.add_argument("export", type=Path, help="the tool's export: a COCO or VIA JSON file, or a folder of "
                             "LabelMe JSON files")
    annotations.add_argument("--format", choices=("coco", "via", "labelme"), default="coco")
    annotations.add_argument("--annotator", required=True, help="who corrected them")
    corrections = commands.add_parser("corrections", help="import a review set's corrections into the dataset")
    actions = corrections.add_subparsers(dest="action", required=True)
    imp = actions.add_parser(
        "import", help="check a review set's corrections and add them to the family's dataset as a new DVC version",
        description="Check every correction of the review set (the family's Great Expectations suite: its image is "
                    "in the set, same size, known label ids and categories, empty only when marked empty, made on "
                    "the set's model version), add them to the dataset's corrections folder with their provenance "
                    "and record the new data version (dvc add). Nothing changes when any correction is refused; "
                    "corrections imported before add nothing. With --train, the family's corrections pipeline "
                    "does the import and then fine-tunes the champion on the new data version.",
        epilog="exit codes: 0 imported (or already there); 2 refused, nothing changed")
    imp.add_argument("review_dir", type=Path, help="the review set, with its corrections/")
    imp.add_argument("--store", type=Path, default=None, help="the dataset's corrections folder (default: "
                     "data/corrections/<registered model name>, the folder the training configs read)")
    imp.add_argument("--dvc-file", type=Path, default=Path("data.dvc"), help="the .dvc file tracking the dataset")
    imp.add_argument("--no-dvc", action="store_true", help="write the corrections without recording a DVC version")
    imp.add_argument("--split", choices=("train", "val"), default="train",
                     help="where the loaders put these images (the test set never changes)")
    imp.add_argument("--train", action="store_true", help="run the family's corrections pipeline (import, then "
                     "fine-tune the champion; promoted only if better on the same test set)")
    imp.add_argument("--config", type=Path, default=None, help="with --train: the pipeline config (default: "
                     f"{LOOP_CONFIG.format(family='<family>')})")


def run_loop_pipeline(review_dir: Path, family: str, config: Path, store: Path | None, split: str) -> None:
    """Run the family's corrections pipeline (``pipelines.corrections``, as ``zenml pipeline run`` does) on
    ``review_dir``: its config with the review set (and, when given, the corrections folder of both the import
    and the loaders) filled in."""
    import subprocess
    import sys
    import tempfile

    import yaml

    values = yaml.safe_load(config.read_text())
    steps = values.setdefault("steps", {})
    steps.setdefault("import_corrections", {}).setdefault("parameters", {}).update(
        {"review_dir": str(review_dir), "split": split})
    if store is not None:
        steps["import_corrections"]["parameters"]["store"] = str(store)
        steps.setdefault("record_corrections", {}).setdefault("parameters", {})["store"] = str(store)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="corrections-", delete=False) as handle:
        yaml.safe_dump(values, handle, sort_keys=False)
    zenml = Path(sys.executable).parent / "zenml"
    command = [str(zenml) if zenml.exists() else "zenml", "pipeline", "run",
               f"pipelines.corrections.{family}_pipeline", "-c", handle.name]
    try:
        done = subprocess.run(command)
        if done.returncode != 0:
            raise ValueError(f"the corrections pipeline failed (exit code {done.returncode}; its log is above)")
    finally:
        Path(handle.name).unlink(missing_ok=True)


def run_command(args, parser, tracking_uri: str) -> int:
    """Run ``cellops review ...`` or ``cellops corrections ...`` (``tracking_uri``: the MLflow store of
    ``review export``).

    Returns
    -------
    int
        0 done; 1 a review set written without some images; 2 nothing done (the reason on stderr).
    """
    import sys

    from cellops.corrections import CorrectionsError, import_corrections
    from cellops.review import ReviewError

    try:
        if args.command == "review" and args.action == "export":
            review, failures = export_review(tracking_uri, args.model, args.images,
                                             args.out, reading=FileReading(args.channel, args.scene))
            first = review.queue[0]
            print(f"review set {args.out}: {len(review.items)} images predicted by {review.model_version} "
                  f"(uncertainty: {review.manifest['uncertainty']}); most uncertain first: {first} "
                  f"({review.items[first].uncertainty:.3f}); queue in {args.out / 'queue.csv'}")
            for path, why in failures:
                print(f"cellops review export: {path}: left out ({why})", file=sys.stderr)
            return 1 if failures else 0
        if args.command == "review" and args.action == "import-annotations":
            from cellops.review import save_annotations

            done = save_annotations(ReviewSet.open(args.review_dir), args.format, args.export, annotator=args.annotator)
            print(f"{args.review_dir}: {len(done['saved'])} corrections saved from {args.export}"
                  + (f"; without objects, left unreviewed: {', '.join(done['unannotated'])}" if done["unannotated"]
                     else ""))
            return 0
        if args.command == "review":
            review = ReviewSet.open(args.review_dir)
            done, total = review.progress()
            upcoming = review.next_item()
            print(f"{args.review_dir}: {done} of {total} reviewed ({review.family}, {review.model_version}); next: "
                  f"{upcoming or 'none, all reviewed'}")
            return 0
        review = ReviewSet.open(args.review_dir)
        store = args.store
        if args.train:
            config = args.config or Path(LOOP_CONFIG.format(family=review.family))
            if not config.is_file():
                parser.error(f"--config {config}: no such file")
            run_loop_pipeline(args.review_dir, review.family, config, store, args.split)
            return 0
        store = store or Path("data/corrections") / str(review.model.get("name"))
        summary = import_corrections(args.review_dir, store, split=args.split,
                                     dvc_file=None if args.no_dvc else args.dvc_file, imported_by="cellops CLI")
        version = f"; data version {summary.data_version}" if summary.data_version else ""
        print(f"{args.review_dir}: {len(summary.added)} corrections added to {store}, "
              f"{len(summary.unchanged)} already there{version}")
        return 0
    except (ReviewError, CorrectionsError, LookupError, ValueError) as error:
        print(f"cellops {args.command} {args.action}: {error}", file=sys.stderr)
        return 2
