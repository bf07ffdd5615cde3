"""Great Expectations validation of a segmentation dataset, and the gate that stops a bad one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import step
from zenml.logger import get_logger
from zenml.types import HTMLString


logger = get_logger(__name__)


def data_docs_page(directory: Path) -> HTMLString:
    """The validation page of the Data Docs built in ``directory`` (self-contained; the index only links)."""
    pages = sorted(directory.rglob("*.html"), key=lambda p: (p.name == "index.html", len(str(p))))
    return HTMLString(pages[0].read_text() if pages else "<p>no Data Docs were built</p>")


@step
def require_valid_dataset(validation_result: dict) -> Annotated[bool, "dataset_valid"]:
    """Stop the pipeline when validation failed, naming every failed expectation."""
    if not validation_result["success"]:
        failures = "\n  - ".join(validation_result["failures"])
        raise ValueError(f"dataset validation failed; failed expectations:\n  - {failures}")
    logger.info("dataset validation passed")
    return True
