"""The step that records where a run's inputs came from (the first step of every pipeline)."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from cellops.lineage import collect_lineage, require_recorded_data
from tracking.runs import require_own_store


#: What a run does when the data on disk is not the version its .dvc file records.
MODIFIED_DATA = ("stop", "record")


@step
def record_lineage(dvc_file: str, modified_data: str) -> Annotated[dict, "lineage"]:
    """The DVC data version and git commit this run works on (ZenML run metadata; MLflow tags downstream).
    Fails first if this checkout would log into another checkout's MLflow store, and (``modified_data: stop``)
    if any file of the data differs from the recorded version, hashing the files themselves; with ``record``
    the run goes on, its data version marked ``+modified`` (such a model is registered but never promoted)."""
    require_own_store()
    if modified_data not in MODIFIED_DATA:
        raise ValueError(f"modified_data must be one of {MODIFIED_DATA}, got {modified_data!r}")
    if modified_data == "stop":
        require_recorded_data(dvc_file)
    lineage = collect_lineage(dvc_file).as_dict()
    log_metadata(metadata={"lineage": lineage})
    return lineage
