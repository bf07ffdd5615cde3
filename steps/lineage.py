"""The step that records where a run's inputs came from."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

from cellops.lineage import collect_lineage


@step
def record_lineage(dvc_file: str = "data.dvc") -> Annotated[dict, "lineage"]:
    """The DVC data version and git commit this run works on (ZenML run metadata; MLflow tags downstream)."""
    lineage = collect_lineage(dvc_file).as_dict()
    log_metadata(metadata={"lineage": lineage})
    return lineage
