"""The step that records where a run's inputs came from (the first step of every pipeline)."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from cellops.lineage import collect_lineage
from tracking.runs import require_own_store


@step
def record_lineage(dvc_file: str) -> Annotated[dict, "lineage"]:
    """The DVC data version and git commit this run works on (ZenML run metadata; MLflow tags downstream).
    Fails first if this checkout would log into another checkout's MLflow store."""
    require_own_store()
    lineage = collect_lineage(dvc_file).as_dict()
    log_metadata(metadata={"lineage": lineage})
    return lineage
