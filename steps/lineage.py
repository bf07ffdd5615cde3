"""The step that records where a run's inputs came from (the first step of every pipeline)."""

from __future__ import annotations

from typing import Annotated, Optional

from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.corrections import lineage_with_corrections
from cellops.lineage import collect_lineage, require_recorded_data
from tracking.runs import require_own_store

logger = get_logger(__name__)


#: What a run does when the data on disk is not the version its .dvc file records.
MODIFIED_DATA = ("stop", "record")


@step
def record_lineage(dvc_file: str, modified_data: str, data_rev: Optional[str]) -> Annotated[dict, "lineage"]:
    """The DVC data version and git commit this run works on (ZenML run metadata; MLflow tags downstream).
    Fails first if this checkout would log into another checkout's MLflow store, and (``modified_data: stop``)
    if any file of the data differs from the recorded version, hashing the files themselves; with ``record``
    the run goes on, its data version marked ``+modified`` (such a model is registered but never promoted).

    ``data_rev`` (a git tag, branch or commit) trains on the data version ``dvc_file`` recorded at that revision
    instead of the working tree's: the loading steps bring it back through dvc.api (``data_dir_for``), and the
    revision and its commit are recorded with the lineage."""
    require_own_store()
    if modified_data not in MODIFIED_DATA:
        raise ValueError(f"modified_data must be one of {MODIFIED_DATA}, got {modified_data!r}")
    if data_rev:
        logger.info("data revision %s: the working tree's data/ is not read", data_rev)
    elif modified_data == "stop":
        require_recorded_data(dvc_file)
    lineage = collect_lineage(dvc_file, data_rev=data_rev).as_dict()
    log_metadata(metadata={"lineage": lineage})
    return lineage


@step
def record_corrections(lineage: dict, store: str, use: str) -> Annotated[dict, "lineage"]:
    """The lineage with the corrections the loading steps add to training (``use: train``) or leave out
    (``none``): which images, pre-annotated by which model versions, corrected by whom (`cellops lineage` shows
    it for every model trained on them)."""
    lineage = lineage_with_corrections(lineage, store, use)
    logger.info("corrections: %s", lineage["corrections"])
    log_metadata(metadata={"corrections": lineage["corrections"]})
    return lineage
