"""Steps of the monitoring pipeline: read the services' request logs, build the drift report against a registered
model version's out-of-distribution reference (thin adapters over :mod:`cellops.drift` and :mod:`tracking.monitor`).
The report is an HTML artifact (the dashboard shows it) and its numbers are run metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cellops.drift import read_request_logs
from cellops.ood import monitor_dir
from tracking.monitor import build_report, summary_line
from tracking.runs import stack_tracking_uri

logger = get_logger(__name__)


@step(enable_cache=False)
def load_request_logs(log_dir: str | None) -> Annotated[pd.DataFrame, "request_log"]:
    """Every request logged under ``log_dir`` (a folder of ``<service>/requests.jsonl``, or one log file; None: the
    services' folder, :func:`cellops.ood.monitor_dir`) as one table, oldest first; fails naming the folder when it
    holds no request."""
    folder = Path(log_dir).expanduser() if log_dir else monitor_dir()
    table = read_request_logs([folder])
    logger.info(f"{len(table)} logged requests in {folder}")
    for line in table.attrs.get("skipped", [])[:5]:
        logger.warning(f"skipped: {line}")
    return table


@step(enable_cache=False)
def report_drift(request_log: pd.DataFrame, model_uri: str, window: int,
                 report_path: str | None) -> Annotated[HTMLString, "drift_report"]:
    """The drift report of the logged requests served by ``model_uri``'s model against its version's reference
    (:func:`tracking.monitor.build_report`): an HTML artifact, also written to ``report_path`` when given; its
    numbers (requests, OOD rate, drifted features, the windows' rates) are the step's and the run's metadata."""
    _, report = build_report(stack_tracking_uri(), request_log, model_uri, window=window)
    logger.info(summary_line(report))
    if report_path:
        logger.info(f"report written to {report.write(report_path)}")
    metadata = {"drift": {**report.metrics(), "model": report.model, "model_uri": model_uri,
                          "drifted": report.features.loc[report.features["drifted"], "feature"].tolist()}}
    log_metadata(metadata=metadata)
    log_metadata(metadata=metadata, run_id_name_or_prefix=get_step_context().pipeline_run.id)
    return HTMLString(report.html)
