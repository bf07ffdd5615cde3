"""`cellops models`, `cellops lineage` and `cellops predict`: the registry as a lab reads it, without a server or
a dashboard.

ZenML's open-source dashboard has no Models page, so this lists every registered model family, its versions,
their metrics, data versions and which one holds `champion` (with ZenML's stage for the same version).
`predict` follows the batch exit codes of `cellops analyze` (:func:`cellops.cli.batch_exit_code`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mlflow import MlflowClient

from cellops.cli import BATCH_EXIT_CODES, EXIT_NOT_RUN, EXIT_SOME_FAILED, batch_exit_code
from tracking import tags as names
from tracking.registry import champion_version, describe_versions, resolve_version
from tracking.runs import local_store_path, project_tracking_uri

#: The alias ``cellops lineage MODEL`` and ``predict`` look for first.
CHAMPION = "champion"


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else this checkout's own store (what `make setup` configures)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or project_tracking_uri(Path.cwd())


def check_store_exists(tracking_uri: str) -> None:
    """Raise a ``LookupError`` when ``tracking_uri`` is a local store that does not exist (MLflow would create an
    empty one and answer that nothing is registered); a server is not checked."""
    store = local_store_path(tracking_uri)
    if store is not None and not store.exists():
        raise LookupError(f"no MLflow store at {store}: run `make setup` and a training pipeline in this checkout, "
                          "or give --tracking-uri (or MLFLOW_TRACKING_URI)")


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
    """A table of every version of every ``cellops-*`` registered model (or of ``family``: ``unet`` or
    ``cellops-unet``). Raises a ``LookupError`` naming ``family`` and the models this store holds when it is none
    of them."""
    client = MlflowClient(tracking_uri)
    names = sorted(m.name for m in client.search_registered_models() if m.name.startswith("cellops-"))
    if family:
        known = names
        names = [n for n in names if n in (family, f"cellops-{family}")]
        if not names:
            raise LookupError(f"no registered model {family!r} in this store; registered models: "
                              f"{', '.join(known) or 'none'}")
    if not names:
        return f"no registered cellops models in {tracking_uri}"
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


def parse_reference(reference: str) -> tuple[str, str | None]:
    """``MODEL``, ``MODEL:VERSION`` or ``MODEL@ALIAS`` -> (name, ref for :func:`resolve_version`; None: not given).

    >>> parse_reference("cellops-unet"), parse_reference("cellops-unet:3"), parse_reference("cellops-unet@champion")
    (('cellops-unet', None), ('cellops-unet', '3'), ('cellops-unet', '@champion'))
    """
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return name, f"@{alias}"
    if ":" in reference:
        name, version = reference.split(":", 1)
        return name, version
    return reference, None


def lineage(tracking_uri: str, reference: str) -> dict:
    """The full record of one registered version (:func:`tracking.tags.version_record`): ``MODEL:VERSION``,
    ``MODEL@ALIAS``, or ``MODEL`` alone for the version holding ``champion``, else the latest version."""
    check_store_exists(tracking_uri)
    name, ref = parse_reference(reference)
    client = MlflowClient(tracking_uri)
    if ref is None:
        ref = f"@{CHAMPION}" if champion_version(client, name, CHAMPION) is not None else "latest"
    return resolve_version(client, name, ref)


def _value(value: object) -> str:
    """A setting or metric as one short line: floats to 6 significant digits, mappings and lists as JSON."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "-" if value is None else str(value)


def format_lineage(record: dict) -> str:
    """A version's record (:func:`lineage`) as a person reads it: the chain from the model version back to the
    runs, the data and the code, then the metrics at registration and the settings they were measured with.

    >>> print(format_lineage({"registered_model": "cellops-unet", "model_version": "3", "aliases": ["champion"],
    ...                       "mlflow_run_id": "r1", "zenml_run_id": None, "data_version": "ab12.dir",
    ...                       "git_commit": "c0ffee", "metrics": {"dice": 0.91234567}, "promotion_metric": "dice",
    ...                       "inference_settings": {"tile_size": 256}}))
    cellops-unet version 3 (aliases: champion)
      MLflow run      r1
      ZenML run       - (not recorded)
      data version    ab12.dir (DVC hash of the training data)
      git commit      c0ffee
      metrics at registration (promotion metric: dice):
        dice          0.912346
      measured with these inference settings:
        tile_size     256
    """
    fixed = {"registered_model", "model_version", "aliases", names.MLFLOW_RUN_ID, names.ZENML_RUN_ID, "metrics",
             "promotion_metric", names.INFERENCE_SETTINGS, "data_version", "git_commit", names.RUNTIME,
             names.RUNTIME_CHECKS}
    lines = [f"{record['registered_model']} version {record['model_version']} "
             f"(aliases: {', '.join(record.get('aliases') or []) or 'none'})"]
    chain = [("MLflow run", record.get(names.MLFLOW_RUN_ID)), ("ZenML run", record.get(names.ZENML_RUN_ID)),
             ("data version", record.get("data_version")), ("git commit", record.get("git_commit"))]
    chain += [(key.replace("_", " "), value) for key, value in sorted(record.items()) if key not in fixed]
    for label, value in chain:
        shown = "- (not recorded)" if value in (None, "") else _value(value)
        if label == "data version" and value:
            shown += " (DVC hash of the training data)"
        lines.append(f"  {label:<15} {shown}")
    metrics = record.get("metrics") or {}
    promotion = record.get("promotion_metric")
    lines.append("  metrics at registration" + (f" (promotion metric: {promotion}):" if promotion else ":"))
    lines += [f"    {key:<13} {_value(value)}" for key, value in sorted(metrics.items())] or ["    (none recorded)"]
    settings = record.get(names.INFERENCE_SETTINGS)
    lines.append("  measured with these inference settings:")
    lines += ([f"    {key:<13} {_value(value)}" for key, value in sorted(settings.items())] if settings
              else ["    (none recorded)"])
    checks = record.get(names.RUNTIME_CHECKS) or []
    if checks:
        lines.append(f"  served with runtime {record.get(names.RUNTIME)}; each runtime against torch fp32:")
        for check in checks:
            speed = f"{check['speedup']}x" if check.get("speedup") is not None else "-"
            change = f"metric {check['change']:+.4g}" if check.get("change") is not None else ""
            verdict = "passed" if check.get("passed") else "not used"
            lines.append(f"    {check['runtime']:<17} {speed:>6}  {change:<16} {verdict}"
                         + (f" ({check['note']})" if check.get("note") else ""))
    return "\n".join(lines)


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


def resolve_registered(tracking_uri: str, model_uri: str) -> tuple[str, dict]:
    """The registered model's name and :func:`resolve_version` record (LookupError naming what exists)."""
    check_store_exists(tracking_uri)
    name, ref = parse_model_uri(model_uri)
    return name, resolve_version(MlflowClient(tracking_uri), name, ref)


def load_registered(tracking_uri: str, name: str, record: dict):
    """That version's PyTorch model, on the CPU, in eval mode."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pytorch.load_model(f"models:/{name}/{record['model_version']}", map_location="cpu").eval()


def predict_classifier(tracking_uri: str, model_uri: str, images: list[Path], out: Path, *, cams: bool) -> int:
    """Label and probabilities of every image in ``out/predictions.csv`` (unreadable files get a row with the
    reason, and the batch goes on) and, with ``cams``, each image's CAM overlay as ``out/cams/<name>.png``.
    Returns :func:`cellops.cli.batch_exit_code`: 0 every file classified, 1 some failed, 2 none could be."""
    import csv

    from cellops.classifier.predict import cam_overlay, classify_files
    from cellops.classifier.specs import ClassifierServing
    from cellops.plots import save_png

    name, record = resolve_registered(tracking_uri, model_uri)
    if not record[names.INFERENCE_SETTINGS]:
        raise LookupError(f"{name} v{record['model_version']} was registered without input settings; retrain it")
    settings = ClassifierServing.from_dict(record[names.INFERENCE_SETTINGS])
    model = load_registered(tracking_uri, name, record)
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
    point = "most probable class" if settings.decision_threshold is None else \
        f"{settings.positive_class} from p >= {settings.decision_threshold:g}"
    print(f"{len(rows)} images classified with {name} v{record['model_version']} ({settings.normalization.describe()} "
          f"normalisation, {point}) -> {out / 'predictions.csv'}")
    for path, why in failures:
        print(f"cellops predict: skipped {why if why.startswith(str(path)) else f'{path}: {why}'}", file=sys.stderr)
    return _batch_end(len(images), len(failures))


def predict_unet(tracking_uri: str, model_uri: str, volume: Path, out: Path, *, slab: int) -> int:
    """Segment the TIFF stack ``volume`` with a registered U-Net (its registered inference settings) into the mask
    TIFF ``out``, slab by slab: memory stays bounded by one slab however large the volume."""
    from tqdm.auto import tqdm

    from cellops.unet.predict import load_for_inference
    from cellops.unet.specs import UNetServing
    from cellops.unet.streaming import segment_volume_file

    name, record = resolve_registered(tracking_uri, model_uri)
    if not record[names.INFERENCE_SETTINGS]:
        raise LookupError(f"{name} v{record['model_version']} was registered without inference settings; retrain it")
    settings = UNetServing.from_dict(record[names.INFERENCE_SETTINGS])
    model = load_for_inference(load_registered(tracking_uri, name, record))
    with tqdm(desc=volume.name, unit="slice") as progress:
        def advance(done: int, total: int) -> None:
            progress.total = total
            progress.update(done - progress.n)
        info = segment_volume_file(model, volume, out, settings, slab=slab, on_slab=advance)
    print(f"{volume}: {'x'.join(map(str, info.shape))} segmented with {name} v{record['model_version']} "
          f"({settings.normalization.describe()} normalisation, threshold {settings.threshold:g}) -> {out}")
    return 0


def _batch_end(n_files: int, n_failed: int) -> int:
    """The exit code of a prediction batch, with the closing line on stderr when files failed."""
    code = batch_exit_code(n_files, n_failed)
    if code == EXIT_SOME_FAILED:
        print(f"cellops predict: some files failed ({n_failed} of {n_files}); the others were predicted",
              file=sys.stderr)
    elif code == EXIT_NOT_RUN:
        print("cellops predict: no file could be used", file=sys.stderr)
    return code


def predict_maskrcnn(tracking_uri: str, model_uri: str, images: list[Path], out: Path) -> int:
    """Segment every image with a registered Mask R-CNN: ``out/<stem>_labels.tif`` (16-bit label image),
    ``out/<stem>_instances.csv`` (label, category, score, area, box, centroid) and ``out/<stem>_overlay.png`` per
    image, tiled when larger than the training images; ``out/summary.csv`` lists every file with its instance
    count or why it was skipped. Images that share a name get the folders that tell them apart
    (:func:`cellops.analyze.input_names`: ``Control/x_labels.tif``); a file given twice is segmented once.
    Returns :func:`cellops.cli.batch_exit_code`: 0 every file segmented, 1 some failed, 2 none could be."""
    import csv

    from cellops.analyze import distinct_files, input_names, repeat_note
    from cellops.io import ImageInputError
    from cellops.maskrcnn.predict import segment_image_to_files
    from cellops.maskrcnn.specs import MaskRCNNServing

    name, record = resolve_registered(tracking_uri, model_uri)
    inference = record[names.INFERENCE_SETTINGS]
    if not inference or "categories" not in inference:
        raise LookupError(f"{name} v{record['model_version']} is not a Mask R-CNN registered with its prediction "
                          "settings; retrain it with pipelines.maskrcnn")
    settings = MaskRCNNServing.from_dict(inference)
    model = load_registered(tracking_uri, name, record)
    out.mkdir(parents=True, exist_ok=True)
    images, repeats = distinct_files(images)
    for repeat, first in repeats:
        print(f"cellops predict: {repeat_note(repeat, first)}; segmented once", file=sys.stderr)
    stems = {path: name.stem for path, name in input_names(images).items()}
    summary = []
    for path in images:
        stem = stems[path]
        try:
            written = segment_image_to_files(model, path, out, stem, settings)
        except Exception as error:  # noqa: BLE001 - one odd file never costs the others their results
            why = str(error) if isinstance(error, (ImageInputError, OSError)) else f"{type(error).__name__}: {error}"
            summary.append({"file": str(path), "instances": "", "error": why})
            print(f"cellops predict: skipped {why if why.startswith(str(path)) else f'{path}: {why}'}", file=sys.stderr)
            continue
        summary.append({"file": str(path), "instances": written["instances"], "error": "", "outputs": stem})
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "instances", "outputs", "error"])
        writer.writeheader()
        writer.writerows({"outputs": "", **row} for row in summary)
    done = sum(1 for row in summary if not row["error"])
    print(f"{done} images segmented with {name} v{record['model_version']} ({settings.normalization.describe()} "
          f"normalisation, score threshold {settings.score_threshold:g}) -> {out}")
    return _batch_end(len(summary), len(summary) - done)


def main(argv: list[str]) -> int:
    """``cellops models|lineage|predict``; returns the exit code (2 for an unknown model, version or alias, a
    missing store or bad arguments; predict: :func:`cellops.cli.batch_exit_code`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="cellops")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="registered model versions, metrics, data versions, champions",
                                 epilog="exit codes: 0 printed; 2 unknown model (the message lists what exists), or "
                                        "no store")
    models.add_argument("family", nargs="?", help="e.g. unet or cellops-unet (default: all)")
    models.add_argument("--tracking-uri", default=None)
    lin = commands.add_parser(
        "lineage", help="the lineage of one model version, from the registry (no server needed)",
        description="Print one registered version's chain: model name and version, aliases, MLflow run, ZenML run, "
                    "data version (DVC hash of the training data), git commit, the metrics at registration and the "
                    "inference settings they were measured with.",
        epilog="exit codes: 0 printed; 2 unknown model, version or alias (the message lists what exists), or no store")
    lin.add_argument("reference", help="MODEL, MODEL:VERSION or MODEL@ALIAS (e.g. cellops-unet@champion); MODEL alone: "
                     "the champion, else the latest version")
    lin.add_argument("--json", action="store_true", help="the record as JSON (the keys of a service's metadata)")
    lin.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else this checkout's "
                     "mlruns/mlflow.db")
    pred = commands.add_parser("predict", help="classify or segment image files with a registered model",
                               epilog=BATCH_EXIT_CODES)
    pred.add_argument("family", choices=["classifier", "maskrcnn", "unet"])
    pred.add_argument("images", type=Path, nargs="+", help="PNG, TIFF or JPEG files, not folders (grey or RGB, "
                      "8/16-bit); unet: one TIFF stack (Z, Y, X), as large as the disk allows")
    pred.add_argument("--out", type=Path, required=True, help="output folder (classifier: predictions.csv and "
                      "cams/; maskrcnn: label TIFF, instance CSV and overlay PNG per image, summary.csv); unet: the "
                      "mask TIFF to write (uint8, 255 = mitochondria)")
    pred.add_argument("--model", default=None, help="models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest "
                      "(default: models:/cellops-<family>@champion)")
    pred.add_argument("--no-cams", action="store_true", help="classifier: skip the class-activation-map PNGs")
    pred.add_argument("--slab", type=int, default=8, help="unet: slices read, segmented and written at a time (memory "
                      "stays bounded by one slab)")
    pred.add_argument("--tracking-uri", default=None)
    exp = commands.add_parser("export-run", help="the latest run of an experiment as metrics.json, curves.csv and "
                              "run.json (the files dvc.yaml's training stages declare)")
    exp.add_argument("experiment", help="e.g. cellops-unet")
    exp.add_argument("--out", type=Path, required=True, help="folder, e.g. reports/unet")
    exp.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    try:
        if args.command == "predict":
            if args.family != "unet" and args.out.exists() and not args.out.is_dir():
                parser.error(f"--out {args.out}: exists and is not a folder")
            model_uri = args.model or f"models:/cellops-{args.family}@{CHAMPION}"
            if args.family == "unet":
                if len(args.images) != 1 or args.out.suffix.lower() not in (".tif", ".tiff"):
                    parser.error("unet: one TIFF stack in, and --out the mask's .tif file name")
                return predict_unet(uri, model_uri, args.images[0], args.out, slab=args.slab)
            if args.family == "maskrcnn":
                return predict_maskrcnn(uri, model_uri, args.images, args.out)
            return predict_classifier(uri, model_uri, args.images, args.out, cams=not args.no_cams)
        check_store_exists(uri)
        if args.command == "export-run":
            from tracking.export import export_latest_run

            metrics = export_latest_run(uri, args.experiment, args.out)
            print(f"{args.experiment}: {len(metrics)} metrics written to {args.out / 'metrics.json'}, curves to "
                  f"{args.out / 'curves.csv'}")
        elif args.command == "models":
            print(list_models(uri, args.family))
        elif args.json:
            print(json.dumps(lineage(uri, args.reference), indent=2, sort_keys=True))
        else:
            print(format_lineage(lineage(uri, args.reference)))
    except LookupError as error:
        print(f"cellops {args.command}: {error}", file=sys.stderr)
        return EXIT_NOT_RUN
    return 0
