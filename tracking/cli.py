"""`cellops models` and `cellops lineage`: the registry as a lab reads it, without a server or a dashboard.

ZenML's open-source dashboard has no Models page, so this lists every registered model family, its versions,
their metrics, data versions and which one holds `champion` (with ZenML's stage for the same version).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlflow import MlflowClient

from tracking import tags as names
from tracking.registry import describe_versions, resolve_version
from tracking.runs import project_tracking_uri


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else this checkout's own store (what `make setup` configures)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or project_tracking_uri(Path.cwd())


def _zenml_stages(model_name: str) -> dict[str, str]:
    """MLflow version -> ZenML stage of the ZenML model version that registered it ({} without ZenML)."""
    try:
        from zenml.client import Client

        stages = {}
        for version in Client().list_model_versions(model=model_name, size=1000):
            mlflow_version = version.run_metadata.get("mlflow_model_version")
            if mlflow_version is not None:
                stages[str(mlflow_version)] = str(version.stage or "-")
        return stages
    except Exception:  # no ZenML store here, or no such model: the MLflow registry alone still answers
        return {}


def list_models(tracking_uri: str, family: str | None = None) -> str:
    """A table of every version of every ``cellops-*`` registered model (or of ``family``)."""
    client = MlflowClient(tracking_uri)
    names = sorted(m.name for m in client.search_registered_models() if m.name.startswith("cellops-"))
    if family:
        names = [n for n in names if n in (family, f"cellops-{family}")]
    if not names:
        return f"no registered cellops models in {tracking_uri}" + (f" named {family}" if family else "")
    lines = []
    for name in names:
        stages = _zenml_stages(name)
        lines.append(f"{name}")
        lines.append(f"  {'version':>7}  {'aliases':<10} {'zenml stage':<11} {'metric':<16} {'value':>8}  "
                     f"{'data version':<38} git commit")
        for record in describe_versions(client, name):
            metric = record["promotion_metric"] or "-"
            value = record["metrics"].get(metric)
            lines.append(
                f"  {record['model_version']:>7}  {','.join(record['aliases']) or '-':<10} "
                f"{stages.get(record['model_version'], '-'):<11} {metric:<16} "
                f"{'-' if value is None else f'{value:.4f}':>8}  {record.get('data_version', '-'):<38} "
                f"{record.get('git_commit', '-')[:12]}")
    return "\n".join(lines)


def lineage(tracking_uri: str, reference: str) -> dict:
    """``MODEL``, ``MODEL:VERSION`` or ``MODEL@ALIAS`` -> the version's full record (champion by default)."""
    if "@" in reference:
        name, ref = reference.split("@", 1)
        ref = f"@{ref}"
    elif ":" in reference:
        name, ref = reference.split(":", 1)
    else:
        name, ref = reference, None
    return resolve_version(MlflowClient(tracking_uri), name, ref)


def parse_model_uri(uri: str) -> tuple[str, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, ref for :func:`resolve_version`).

    >>> parse_model_uri("models:/cellops-classifier@champion"), parse_model_uri("models:/cellops-classifier/3")
    (('cellops-classifier', '@champion'), ('cellops-classifier', '3'))
    """
    if not uri.startswith("models:/"):
        raise LookupError(f"{uri}: give a registry URI, models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest")
    path = uri.removeprefix("models:/")
    if "@" in path:
        name, alias = path.split("@", 1)
        return name, f"@{alias}"
    if "/" in path:
        name, version = path.split("/", 1)
        return name, version
    return path, None


def predict_classifier(tracking_uri: str, model_uri: str, images: list[Path], out: Path, *, cams: bool) -> int:
    """Label and probabilities of every image in ``out/predictions.csv`` (unreadable files get a row with the
    reason, and the batch goes on) and, with ``cams``, each image's CAM overlay as ``out/cams/<name>.png``.
    Returns 0 when every file was classified, 1 otherwise."""
    import csv
    import sys

    import mlflow

    from cellops.classifier.predict import ClassifierSettings, cam_overlay, classify_files
    from cellops.plots import save_png

    name, ref = parse_model_uri(model_uri)
    record = resolve_version(MlflowClient(tracking_uri), name, ref)
    if not record[names.INFERENCE_SETTINGS]:
        raise LookupError(f"{name} v{record['model_version']} was registered without input settings; retrain it")
    settings = ClassifierSettings.from_dict(record[names.INFERENCE_SETTINGS])
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pytorch.load_model(f"models:/{name}/{record['model_version']}", map_location="cpu").eval()
    rows, failures, maps, inputs = classify_files(model, images, settings, with_cams=cams)
    out.mkdir(parents=True, exist_ok=True)
    if cams and maps is not None:
        for number, (row, image, cam) in enumerate(zip(rows, inputs, maps)):
            # Numbered: two files of the same name in different folders keep a CAM each.
            row["cam"] = f"cams/{number:04d}_{Path(row['file']).stem}.png"
            save_png(cam_overlay(image, cam), out / row["cam"])
    columns = ["file", "label", *(f"p_{c}" for c in settings.classes), "cam", "error"]
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({"cam": "", **row, "error": ""} for row in rows)
        writer.writerows({"file": str(path), "error": why} for path, why in failures)
    print(f"{len(rows)} images classified with {name} v{record['model_version']} -> {out / 'predictions.csv'}")
    for path, why in failures:
        print(f"cellops predict: skipped {path}: {why}", file=sys.stderr)
    return 1 if failures else 0


def predict_maskrcnn(tracking_uri: str, model_uri: str, images: list[Path], out: Path) -> int:
    """Segment every image with a registered Mask R-CNN: ``out/<stem>_labels.tif`` (16-bit label image),
    ``out/<stem>_instances.csv`` (label, category, score, area, box, centroid) and ``out/<stem>_overlay.png`` per
    image, tiled when larger than the training images; ``out/summary.csv`` lists every file with its instance
    count or why it was skipped. Returns 0 when every file was segmented, 1 otherwise."""
    import csv
    import sys

    import mlflow

    from cellops.io import ImageInputError, read_image_file, write_tiff_stack
    from cellops.maskrcnn.predict import (PredictionSettings, as_picture, instance_table, label_image, overlay,
                                          predict_image)
    from cellops.plots import save_png

    name, ref = parse_model_uri(model_uri)
    record = resolve_version(MlflowClient(tracking_uri), name, ref)
    inference = record[names.INFERENCE_SETTINGS]
    if not inference or "categories" not in inference:
        raise LookupError(f"{name} v{record['model_version']} is not a Mask R-CNN registered with its prediction "
                          "settings; retrain it with pipelines.maskrcnn")
    settings = PredictionSettings.from_dict({k: v for k, v in inference.items()
                                             if k not in ("max_detections", "categories")})
    categories = {int(k): v for k, v in inference["categories"].items()}
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pytorch.load_model(f"models:/{name}/{record['model_version']}", map_location="cpu").eval()
    out.mkdir(parents=True, exist_ok=True)
    summary, used = [], set()
    for path in images:
        try:
            image = as_picture(read_image_file(path), source=str(path))
            instances = predict_image(model, image, settings)
        except (ImageInputError, OSError) as error:
            summary.append({"file": str(path), "instances": "", "error": str(error)})
            print(f"cellops predict: skipped {path}: {error}", file=sys.stderr)
            continue
        stem, number = path.stem, 1
        while stem in used:  # two files of the same name in different folders keep an output each
            number += 1
            stem = f"{path.stem}_{number}"
        used.add(stem)
        shape = image.shape[:2]
        write_tiff_stack(out / f"{stem}_labels.tif", label_image(instances, shape))
        instance_table(instances, categories).to_csv(out / f"{stem}_instances.csv", index=False)
        save_png(overlay(image, instances, categories), out / f"{stem}_overlay.png")
        summary.append({"file": str(path), "instances": len(instances), "error": "", "outputs": stem})
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "instances", "outputs", "error"])
        writer.writeheader()
        writer.writerows({"outputs": "", **row} for row in summary)
    done = sum(1 for row in summary if not row["error"])
    print(f"{done} images segmented with {name} v{record['model_version']} -> {out}")
    return 0 if done == len(summary) else 1


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="cellops")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="registered model versions, metrics, data versions, champions")
    models.add_argument("family", nargs="?", help="e.g. unet or cellops-unet (default: all)")
    models.add_argument("--tracking-uri", default=None)
    lin = commands.add_parser("lineage", help="the lineage of one model version, from the registry")
    lin.add_argument("reference", help="MODEL, MODEL:VERSION or MODEL@ALIAS (e.g. cellops-unet@champion)")
    lin.add_argument("--tracking-uri", default=None)
    pred = commands.add_parser("predict", help="classify or segment image files with a registered model")
    pred.add_argument("family", choices=["classifier", "maskrcnn"])
    pred.add_argument("images", type=Path, nargs="+", help="PNG, TIFF or JPEG files (grey or RGB, 8/16-bit)")
    pred.add_argument("--out", type=Path, required=True, help="output folder (classifier: predictions.csv and "
                      "cams/; maskrcnn: label TIFF, instance CSV and overlay PNG per image, summary.csv)")
    pred.add_argument("--model", default=None, help="models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest "
                      "(default: models:/cellops-<family>@champion)")
    pred.add_argument("--no-cams", action="store_true", help="classifier: skip the class-activation-map PNGs")
    pred.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    try:
        if args.command == "predict":
            model_uri = args.model or f"models:/cellops-{args.family}@champion"
            if args.family == "maskrcnn":
                return predict_maskrcnn(uri, model_uri, args.images, args.out)
            return predict_classifier(uri, model_uri, args.images, args.out, cams=not args.no_cams)
        if args.command == "models":
            print(list_models(uri, args.family))
        else:
            print(json.dumps(lineage(uri, args.reference), indent=2, sort_keys=True))
    except LookupError as error:
        print(f"cellops {args.command}: {error}")
        return 1 if args.command != "predict" else 2
    return 0
