"""The `cellops` command: the application, assembled from the core commands (:mod:`cellops.cli`: data, analyses
of users' own images, reports) and the registry commands here, which read the MLflow model registry as a lab reads
it, without a server or a dashboard.

    cellops generate-data | configs | check-data | analyze | report    (see cellops.cli)
    cellops models [FAMILY]                       (registered versions, metrics, data versions, champion)
    cellops lineage MODEL[:VERSION|@ALIAS] [--json]  (a version's lineage from the registry, no server)
    cellops predict unet|classifier|maskrcnn FILE... --out DIR [--model models:/NAME@ALIAS] [--uncertainty]
                                                  [--ood-policy flag|refuse]
    cellops monitor LOG... --model models:/NAME@ALIAS --out report.html  (drift report of a service's requests)
    cellops card MODEL[:VERSION|@ALIAS] [--out DIR] [--html]  (a version's model card, generated from the registry)
    cellops export bioimageio MODEL[:VERSION|@ALIAS] --out DIR   (a BioImage Model Zoo package; tracking.bioimageio)
    cellops import bioimageio PACKAGE             (a zoo package as a candidate version, through the promotion gate)
    cellops reproduce MODEL:VERSION               (re-run its training at its commit and data version; compare)
    cellops export-run EXPERIMENT --out DIR       (a run's metrics and curves, for the DVC training stages)

ZenML's open-source dashboard has no Models page, so `models` lists every registered model family, its versions,
their metrics, data versions and which one holds `champion` (with ZenML's stage for the same version). `predict`
runs a registered model on the batch engine (:mod:`cellops.batch`, through :mod:`tracking.batch`), with the batch
exit codes of `cellops analyze` (:func:`cellops.batch.batch_exit_code`).

MLflow and ZenML are imported by the registry commands only, when they run: the core commands start without them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cellops import cli as core
from cellops.batch import BATCH_EXIT_CODES, EXIT_NOT_RUN, SUMMARY
from cellops.ood import DEFAULT_POLICY, POLICIES
from cellops.telemetry import disable_telemetry
from tracking import bioimageio, cards, monitor, reproduce, review
from tracking import tags as names

#: Modules adding their own sub-commands: each has ``COMMANDS``, ``add_commands(commands)`` and
#: ``run_command(args, parser, tracking_uri)``.
EXTRA_COMMANDS = (bioimageio, cards, reproduce)

#: The alias ``cellops lineage MODEL`` and ``predict`` look for first.
CHAMPION = "champion"


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else this checkout's own store (what `make setup` configures)."""
    from tracking.runs import project_tracking_uri

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
    """A table of every version of every ``cellops-*`` registered model (or of ``family``: ``unet`` or
    ``cellops-unet``). Raises a ``LookupError`` naming ``family`` and the models this store holds when it is none
    of them."""
    from mlflow import MlflowClient

    from tracking.registry import describe_versions

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
    from mlflow import MlflowClient

    from tracking.registry import champion_version, check_store_exists, resolve_version

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
    runs, the data, the code and the other lineage keys (the registered version it was fine-tuned from, ``parent
    model``, among them), then the metrics at registration and the settings they were measured with.

    >>> print(format_lineage({"registered_model": "cellops-unet", "model_version": "3", "aliases": ["champion"],
    ...                       "mlflow_run_id": "r1", "zenml_run_id": None, "data_version": "ab12.dir",
    ...                       "git_commit": "c0ffee", "parent_model": "cellops-unet:2", "metrics": {"dice": 0.91234567},
    ...                       "promotion_metric": "dice", "inference_settings": {"tile_size": 256}}))
    cellops-unet version 3 (aliases: champion)
      MLflow run      r1
      ZenML run       - (not recorded)
      data version    ab12.dir (DVC hash of the training data)
      git commit      c0ffee
      parent model    cellops-unet:2
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


#: The families ``cellops predict`` runs.
FAMILIES = ("classifier", "maskrcnn", "unet")
#: The registry commands of this module (:func:`add_commands`, :func:`run_command`).
COMMANDS = ("models", "lineage", "predict", "export-run")


def predict(tracking_uri: str, family: str, model_uri: str, files: list[Path], out: Path, *, slab: int = 8,
            cams: bool = True, channel: str | None = None, scene: str | None = None,
            uncertainty: bool = False, policy: str = "flag") -> int:
    """Predict every file with a registered model on the batch engine (:func:`tracking.batch.predict_files`); the
    outputs of each file are named after it in ``out``, with ``batch_summary.csv`` (one row per file: status,
    problem, outputs, results, and the file's out-of-distribution verdict: ``ood_score``, ``ood_threshold``,
    ``in_distribution``, ``ood_reason``) and the manifest that makes a rerun skip what is already done.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    family : str
        ``unet``, ``classifier`` or ``maskrcnn``: the family the model must be of.
    model_uri : str
        ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.
    files : list of Path
        Images (classifier, Mask R-CNN) or volumes (U-Net: TIFF stacks, zarr arrays).
    out : Path
        The output folder.
    slab : int
        U-Net: slices read, segmented and written at a time (memory stays bounded by one slab).
    cams : bool
        Classifier: draw each image's CAM overlay (``<name>_cam.png``).
    channel, scene : str, optional
        The channel and scene (name or index) to read from multi-channel or multi-scene files.
    uncertainty : bool
        Also measure each prediction's uncertainty (``uncertainty`` and ``uncertainty_method`` columns of the
        summary; Mask R-CNN: an ``uncertainty`` column per instance too).
    policy : str
        ``flag`` (default): predict every file, flag those unlike the training images (``in_distribution`` false);
        ``refuse``: such a file fails with the reason (score and threshold), the others are predicted.

    Returns
    -------
    int
        :func:`cellops.batch.batch_exit_code`: 0 every file predicted, 1 some failed, 2 none could be.

    Raises
    ------
    LookupError
        No such store, model, version or alias; a model of another family, or registered without its settings.
    """
    from tracking.batch import describe_settings, predict_files, resolve_batch_model

    record = resolve_batch_model(tracking_uri, model_uri)
    name, version = record["registered_model"], record["model_version"]
    if not record[names.INFERENCE_SETTINGS]:
        raise LookupError(f"{name} v{version} was registered without its inference settings; retrain it")
    if record["family"] != family:
        raise LookupError(f"{name} v{version} is a {record['family']} model, not a {family}")
    files = core.distinct_inputs("cellops predict", files, "predicted")
    core.output_folder(out)
    from cellops.io import FileReading

    result = predict_files(tracking_uri, record, files, out, slab=slab, cams=cams, progress=None,
                           reading=FileReading(channel, scene), uncertainty=uncertainty, policy=policy)
    measured = " with its uncertainty" if uncertainty else ""
    print(f"{family}: {core.done_line(result, 'predicted')}{measured} with {name} v{version} "
          f"({describe_settings(record)}) -> {out} (each file: {out / SUMMARY})")
    print(f"{family}: {ood_line(result.rows)}")
    print(f"{family}: {runtime_line(result.rows)}")
    return core.finish_batch(f"cellops predict {family}", result, "predicted")


def runtime_line(rows: list[dict]) -> str:
    """The runtime(s) the batch's files were predicted on (:func:`tracking.batch.version_on_host`).

    >>> runtime_line([{"status": "done", "runtime": "openvino-int8", "runtime_precision": "int8"},
    ...               {"status": "skipped", "runtime": "torch", "runtime_precision": "fp32"}])
    'runtime: openvino-int8 (int8), chosen on this CPU (CELLOPS_RUNTIME overrides); files kept from before: torch (fp32)'
    """
    def named(status: tuple[str, ...]) -> str:
        return ", ".join(sorted({f"{r['runtime']} ({r.get('runtime_precision')})" for r in rows
                                 if r.get("status") in status and r.get("runtime")}))

    now, before = named(("done",)), named(("skipped",))
    line = f"runtime: {now or 'none (no file predicted)'}, chosen on this CPU (CELLOPS_RUNTIME overrides)"
    return line + (f"; files kept from before: {before}" if before and before != now else "")


def ood_line(rows: list[dict]) -> str:
    """The out-of-distribution verdicts of a batch's files in one line (:func:`tracking.batch.ood_counts`).

    >>> ood_line([{"status": "done", "in_distribution": True}, {"status": "done", "in_distribution": False},
    ...           {"status": "failed", "problem": "x: the image is out of distribution: ..."}])
    'out of distribution: 1 flagged, 1 refused, 1 in distribution, 0 not scored'
    >>> ood_line([{"status": "done", "in_distribution": None, "ood_reason": "this model version has no reference"}])
    'out of distribution: not scored (this model version has no reference)'
    """
    from tracking.batch import ood_counts

    counts = ood_counts(rows)
    kept = [r for r in rows if r.get("status") in ("done", "skipped")]
    if kept and counts["not_scored"] == len(kept) and not counts["refused"]:
        return f"out of distribution: not scored ({kept[0].get('ood_reason') or 'no verdict'})"
    return (f"out of distribution: {counts['out_of_distribution']} flagged, {counts['refused']} refused, "
            f"{counts['in_distribution']} in distribution, {counts['not_scored']} not scored")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the registry commands (:data:`COMMANDS`) to the ``cellops`` parser's sub-commands.

    Parameters
    ----------
    commands : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.
    """
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
    pred.add_argument("family", choices=FAMILIES)
    pred.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, TIFF, OME-TIFF, ImageJ, OME-Zarr, "
                      "ND2, CZI, LIF; grey or RGB, 8/16-bit); unet: TIFF stacks (Z, Y, X) or zarr arrays, as large as "
                      "the disk allows")
    pred.add_argument("--out", type=Path, required=True, help="output folder, with each file's outputs named after "
                      "it (classifier: class probabilities in the summary, <name>_cam.png; maskrcnn: "
                      "<name>_labels.tif, <name>_instances.csv, <name>_overlay.png; unet: <name>_mask.tif (uint8, "
                      "255 = mitochondria), "
                      f"<name>_slices.csv) and {SUMMARY}, one row per file; a file predicted there before by the same "
                      "model version from the same content is kept")
    pred.add_argument("--model", default=None, help="models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest "
                      "(default: models:/cellops-<family>@champion)")
    pred.add_argument("--channel", metavar="NAME|INDEX",
                      help="the channel to read from multi-channel files (a name from the file's metadata, or an index)")
    pred.add_argument("--scene", metavar="NAME|INDEX", help="the scene (series) to read from multi-scene files")
    pred.add_argument("--no-cams", action="store_true", help="classifier: skip the class-activation-map PNGs")
    pred.add_argument("--slab", type=int, default=8, help="unet: slices read, segmented and written at a time (memory "
                      "stays bounded by one slab)")
    pred.add_argument("--uncertainty", action="store_true", help="also measure how sure the model is of each "
                      "prediction (columns uncertainty, uncertainty_method of the summary, 0 sure to 1 unsure; "
                      "maskrcnn: per instance too): test-time flips and rotations for unet and maskrcnn (8 to 10 "
                      "times the time), predictive entropy for the classifier (no extra cost)")
    pred.add_argument("--ood-policy", choices=POLICIES, default=DEFAULT_POLICY, help="what to do with a file unlike "
                      "the model's training images (columns ood_score, ood_threshold, in_distribution, ood_reason of "
                      "the summary): flag predicts it and sets in_distribution false (default); refuse records it as "
                      "failed naming its score and the threshold, and goes on with the others")
    pred.add_argument("--tracking-uri", default=None)
    exp = commands.add_parser("export-run", help="the latest run of an experiment as metrics.json, curves.csv and "
                              "run.json (the files dvc.yaml's training stages declare)")
    exp.add_argument("experiment", help="e.g. cellops-unet")
    exp.add_argument("--out", type=Path, required=True, help="folder, e.g. reports/unet")
    exp.add_argument("--tracking-uri", default=None)


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the registry command of ``args``, one of :data:`COMMANDS`.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.
    parser : argparse.ArgumentParser
        Their parser (``parser.error`` for bad arguments: exit code 2).

    Returns
    -------
    int
        The exit code: 2 for an unknown model, version or alias, a missing store or bad arguments; predict:
        :func:`cellops.batch.batch_exit_code`.
    """
    from tracking.registry import check_store_exists

    uri = args.tracking_uri or default_tracking_uri()
    try:
        if args.command == "predict":
            if args.out.exists() and not args.out.is_dir():
                parser.error(f"--out {args.out}: exists and is not a folder")
            if args.family == "unet" and args.out.suffix.lower() in (".tif", ".tiff"):
                parser.error(f"unet: --out {args.out} is the output folder (each volume's mask is written there as "
                             "<name>_mask.tif), not a .tif file")
            if args.slab < 1:
                parser.error(f"--slab must be at least 1 slice, got {args.slab}")
            model_uri = args.model or f"models:/cellops-{args.family}@{CHAMPION}"
            return predict(uri, args.family, model_uri, args.images, args.out, slab=args.slab, cams=not args.no_cams,
                           channel=args.channel, scene=args.scene, uncertainty=args.uncertainty,
                           policy=args.ood_policy)
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
    except ValueError as error:  # predict: an unusable output folder or a damaged manifest in it
        print(f"cellops {args.command}: {error}", file=sys.stderr)
        return EXIT_NOT_RUN
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``cellops`` parser: the core commands (:func:`cellops.cli.add_commands`) and the registry commands
    (:func:`add_commands`).

    Returns
    -------
    argparse.ArgumentParser
        The whole application's parser.
    """
    parser = argparse.ArgumentParser(prog="cellops", description="cellops: MLOps for cell imaging")
    commands = parser.add_subparsers(dest="command", required=True)
    core.add_commands(commands)
    add_commands(commands)
    review.add_commands(commands)
    monitor.add_monitor_parser(commands)
    for module in EXTRA_COMMANDS:
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``cellops`` console script.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: the command line's).

    Returns
    -------
    int
        The command's exit code.
    """
    disable_telemetry()
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command in core.COMMANDS:
        return core.run_command(args, parser)
    if args.command in review.COMMANDS:
        return review.run_command(args, parser, args.tracking_uri if getattr(args, "tracking_uri", None)
                                  else default_tracking_uri())
    if args.command in monitor.COMMANDS:
        return monitor.run_command(args, parser, args.tracking_uri or default_tracking_uri())
    for module in EXTRA_COMMANDS:
        if args.command in module.COMMANDS:
            return module.run_command(args, parser, getattr(args, "tracking_uri", None) or default_tracking_uri())
    return run_command(args, parser)


if __name__ == "__main__":
    sys.exit(main())
