"""``cellops monitor``: the drift report of a service's request logs against the out-of-distribution reference of a
registered model version (the registry side of :mod:`cellops.drift`). What the monitoring pipeline's steps call too.

    cellops monitor LOG... --model models:/NAME@ALIAS|models:/NAME/VERSION --out report.html [--window N]

The logs are the JSON lines the services append per scored image (``$CELLOPS_MONITOR_DIR/<service>/requests.jsonl``;
files or folders). Only the requests served by the model named are compared (any of its versions: their features
are recomputed into scores with the version's reference).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cellops.drift import DEFAULT_WINDOW, DriftReport

#: The commands of this module.
COMMANDS = ("monitor",)


def monitor_model_uri(model: str) -> str:
    """The ``models:/`` URI of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``NAME/VERSION``, ``NAME@ALIAS``,
    ``NAME:VERSION`` or ``NAME`` (its champion).

    Examples
    --------
    >>> monitor_model_uri("cellops-unet/3"), monitor_model_uri("cellops-unet"), monitor_model_uri("models:/m@a")
    ('models:/cellops-unet/3', 'models:/cellops-unet@champion', 'models:/m@a')
    """
    from tracking.review import model_uri

    if not model.startswith("models:/") and "/" in model:
        return f"models:/{model}"
    return model_uri(model)


def resolve_reference(tracking_uri: str, model: str):
    """The registered version ``model`` names and its OOD reference.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    model : str
        See :func:`monitor_model_uri`.

    Returns
    -------
    record : dict
        The version's record (:func:`tracking.batch.resolve_batch_model`).
    reference : cellops.ood.OODReference
        Its reference.

    Raises
    ------
    LookupError
        No such store, model, version or alias; or a version registered without a reference.
    """
    from tracking.batch import resolve_batch_model
    from tracking.registry import load_ood_reference

    record = resolve_batch_model(tracking_uri, monitor_model_uri(model))
    name, version = record["registered_model"], record["model_version"]
    reference = load_ood_reference(tracking_uri, name, version)
    if reference is None:
        raise LookupError(f"{name} v{version} has no out-of-distribution reference to compare requests with: register "
                          "it again with its training pipeline, or give a version registered with one")
    return record, reference


def build_report(tracking_uri: str, logs: Sequence[str | Path] | pd.DataFrame, model: str, *,
                 window: int = DEFAULT_WINDOW) -> tuple[dict, DriftReport]:
    """The drift report of the requests in ``logs`` served by the model ``model`` names, against its reference.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    logs : sequence of str or Path, or pandas.DataFrame
        Request logs or folders of them, or the table :func:`cellops.drift.read_request_logs` made of them.
    model : str
        The model version (:func:`monitor_model_uri`).
    window : int
        Requests per window.

    Returns
    -------
    record : dict
        The model version's record.
    report : DriftReport
        The report (:func:`cellops.drift.drift_report`).

    Raises
    ------
    LookupError
        For the model (:func:`resolve_reference`).
    ValueError
        For missing or empty logs, or logs with no request of that model.
    """
    from cellops.drift import drift_report, read_request_logs, select_requests

    logged = logs if isinstance(logs, pd.DataFrame) else read_request_logs(logs)
    record, reference = resolve_reference(tracking_uri, model)
    name, version = record["registered_model"], record["model_version"]
    mine = select_requests(logged, name)
    served = sorted({str(v) for v in mine["model_version"]}, key=lambda v: (len(v), v))
    notes = [f"{len(mine)} of {len(logged)} logged requests were served by {name} (versions {', '.join(served)}); "
             f"their scores are recomputed with the reference of v{version}"]
    report = drift_report(reference, mine, window=window, model=f"{name} v{version}", notes=notes)
    return record, report


def add_monitor_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``cellops monitor`` to the ``cellops`` parser's sub-commands.

    Parameters
    ----------
    commands : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.
    """
    monitor = commands.add_parser(
        "monitor", help="drift report of a service's request logs against a model version's reference",
        description="Read the request logs a service writes (one JSON line per scored image: time, model, verdict, "
                    "features; $CELLOPS_MONITOR_DIR/<service>/requests.jsonl) and compare the requests served by "
                    "the model with the images it was trained on: OOD score over time with the threshold, OOD "
                    "rate per window of requests, per-feature drift tests (Kolmogorov-Smirnov, Benjamini-Hochberg) "
                    "and the distributions of the most drifted features. Writes one self-contained HTML page.",
        epilog="exit codes: 0 report written (drift or not: read its summary); 2 nothing written: no such log, no "
               "request in the logs, no such model, or a model version without an out-of-distribution reference")
    monitor.add_argument("logs", type=Path, nargs="+", help="request logs (*.jsonl) or folders of them (e.g. "
                         "~/bentoml/monitoring or ~/bentoml/monitoring/cellops-unet)")
    monitor.add_argument("--model", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION (also NAME/VERSION, "
                         "NAME@ALIAS): the version whose reference the requests are compared with")
    monitor.add_argument("--out", type=Path, required=True, help="the HTML report to write, e.g. report.html")
    monitor.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="scored requests per window (default: "
                         f"{DEFAULT_WINDOW}, as the services' sliding window)")
    monitor.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else this checkout's "
                         "mlruns/mlflow.db")


def summary_line(report: DriftReport) -> str:
    """The report's verdict in one line."""
    drifted = report.features[report.features["drifted"]]["feature"].tolist()
    return (f"{report.model}: {report.requests} requests ({report.scored} scored), OOD rate {report.ood_rate:.1%} "
            f"(expected {report.false_alarm_rate:.0%}), {len(drifted)} of {len(report.features)} features drifted"
            f"{' (' + ', '.join(drifted[:5]) + ('...' if len(drifted) > 5 else '') + ')' if drifted else ''}: "
            f"{'DRIFT' if report.drift else 'no drift'}")


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser, tracking_uri: str) -> int:
    """Run ``cellops monitor``.

    Returns
    -------
    int
        0 the report written; 2 nothing written (the reason on stderr).
    """
    if args.window < 1:
        parser.error(f"--window must be at least 1 request, got {args.window}")
    if args.out.is_dir():
        parser.error(f"--out {args.out}: is a folder; give the HTML file to write, e.g. {args.out / 'report.html'}")
    try:
        _, report = build_report(tracking_uri, args.logs, args.model, window=args.window)
        path = report.write(args.out)
    except (LookupError, ValueError, OSError) as error:
        print(f"cellops monitor: {error}", file=sys.stderr)
        return 2
    print(summary_line(report))
    print(f"report: {path}")
    return 0
