"""Steps of the batch inference pipeline: resolve a registered model, predict a folder with it on the batch engine
(resumable), log the lineage of both the model and the inputs to MLflow (thin adapters over cellops.batch and
tracking.batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import mlflow
import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.batch import DEFAULT_PATTERNS, EXIT_NOT_RUN, SUMMARY, batch_exit_code, list_inputs
from cellops.data_version import dvc_file_md5
from cellops.io import FileReading
from cellops.lineage import check_data_matches, git_commit, tracking_dvc_file
from tracking.batch import batch_key, ood_counts, predict_files, resolve_batch_model
from tracking.runs import log_run_config, stack_tracking_uri

logger = get_logger(__name__)


@step
def resolve_model(model_uri: str) -> Annotated[dict, "model_record"]:
    """The registered version ``model_uri`` names (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``), with its
    lineage, metrics, inference settings and family; fails naming what exists when there is no such version."""
    record = resolve_batch_model(stack_tracking_uri(), model_uri)
    logger.info(f"{model_uri}: {record['registered_model']} v{record['model_version']} ({record['family']}), "
                f"MLflow run {record['mlflow_run_id']}")
    return record


def input_lineage(input_dir: str | Path) -> dict[str, str]:
    """Where the inputs come from: the folder, the git commit, and the DVC version of the tracked folder holding it
    (with whether the files on disk still match it), when there is one."""
    lineage = {"input.dir": str(input_dir), "input.git_commit": git_commit()}
    dvc_file = tracking_dvc_file(input_dir)
    if dvc_file is not None:
        difference = check_data_matches(dvc_file)  # None: no listing recorded to compare with
        lineage.update({"input.dvc_file": str(dvc_file), "input.dvc_md5": dvc_file_md5(dvc_file),
                        "input.dvc_matches": "unknown" if difference is None else str(not difference).lower()})
    return lineage


@step
def predict_folder(model_record: dict, input_dir: str, output_dir: str, patterns: list[str] | None, slab: int,
                   cams: bool, channel: str | int | None, scene: str | int | None,
                   uncertainty: bool, ood_policy: str) -> Annotated[pd.DataFrame, "batch_results"]:
    """Predict every input of ``input_dir`` with the model into ``output_dir`` on the batch engine
    (:func:`tracking.batch.predict_files`): the family's outputs per input, named after it, and ``batch_summary.csv``
    (one row per input: status, problem, outputs, results). Inputs already predicted by the same version from the
    same content are skipped (``batch_manifest.json``), so an interrupted run resumes. ``patterns`` None: images,
    TIFF stacks and zarr arrays. ``channel`` and ``scene``: what to read from multi-channel or multi-scene files.
    ``uncertainty``: also measure each prediction's uncertainty (``uncertainty`` column of the summary, see
    :mod:`cellops.uncertainty`). Every row carries the input's out-of-distribution verdict (``ood_score``,
    ``ood_threshold``, ``in_distribution``, ``ood_reason``); ``ood_policy`` ``refuse`` fails the inputs out of
    distribution, naming their score and the threshold. Logs the model's and the inputs' lineage, the counts (the
    OOD verdicts among them) and the summary to MLflow. Fails when no input could be predicted."""
    reading = FileReading(channel, scene)
    inputs = list_inputs(input_dir, patterns or DEFAULT_PATTERNS)
    model_key = batch_key(model_record, cams=cams, reading=reading, uncertainty=uncertainty, policy=ood_policy)
    logger.info(f"{len(inputs)} inputs in {input_dir} -> {output_dir} with {model_key}")
    result = predict_files(stack_tracking_uri(), model_record, inputs, output_dir, slab=slab, cams=cams,
                           reading=reading, uncertainty=uncertainty, policy=ood_policy)
    table = result.table

    counts = {status: result.count(status) for status in ("done", "skipped", "failed")}
    verdicts = ood_counts(result.rows)
    log_run_config()
    mlflow.set_tags({
        "model.name": model_record["registered_model"], "model.version": model_record["model_version"],
        "model.family": model_record["family"], "model.mlflow_run_id": model_record["mlflow_run_id"],
        "model.data_version": model_record.get("data_version") or "", "model.uri": model_record["model_uri"],
        "input.version": result.input_version, **input_lineage(input_dir),
        # the runtime(s) this host chose for the files predicted now (cellops.host_runtime)
        "model.runtime": ",".join(sorted({str(r["runtime"]) for r in result.rows
                                          if r.get("status") == "done" and r.get("runtime")})) or "none"})
    mlflow.log_metrics({f"inputs_{status}": float(count) for status, count in {**counts, **verdicts}.items()})
    mlflow.log_artifact(str(Path(output_dir) / SUMMARY))
    log_metadata({"inputs": counts, "ood": verdicts, "input_version": result.input_version, "model": model_key})
    for problem in result.failures.values():
        logger.warning(f"not predicted: {problem}")
    logger.info(f"{counts['done']} predicted, {counts['skipped']} already done (skipped), {counts['failed']} failed")
    if batch_exit_code(len(result.rows), counts["failed"]) == EXIT_NOT_RUN:
        raise RuntimeError(f"no input of {input_dir} could be predicted: " + "; ".join(result.failures.values()))
    return table
