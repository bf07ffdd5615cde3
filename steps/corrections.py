"""The step that imports a review set's corrections into a family's dataset as a new DVC data version (a thin
adapter over cellops.corrections)."""

from __future__ import annotations

from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cellops import corrections

logger = get_logger(__name__)


@step(enable_cache=False)
def import_corrections(review_dir: str, store: str, dvc_file: str, split: str) -> Annotated[dict, "corrections_import"]:
    """Check every correction of the review set ``review_dir`` with the family's Great Expectations suite, add
    them to the dataset's corrections folder ``store`` and record the new data version in ``dvc_file``; nothing
    changes when any correction is refused, and corrections imported before add nothing."""
    run = get_step_context().pipeline_run.name
    summary = corrections.import_corrections(review_dir, store, split=split, dvc_file=dvc_file,
                                             imported_by=f"zenml run {run}")
    result = {"added": len(summary.added), "unchanged": len(summary.unchanged), "store": str(summary.store),
              "data_version": summary.data_version}
    logger.info("corrections of %s: %d added, %d already in %s; data version %s", review_dir, result["added"],
                result["unchanged"], store, summary.data_version or "unchanged")
    log_metadata(metadata={"corrections_import": result})
    return result
