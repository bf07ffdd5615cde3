"""Great Expectations validation of a segmentation dataset, and the gate that stops a bad one."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cellops.config import from_mapping
from cellops.unet.data import LUCCHI_FILES
from cellops.validation import SegmentationExpectations, validate_segmentation_dataset

logger = get_logger(__name__)


def data_docs_page(directory: Path) -> HTMLString:
    """The validation page of the Data Docs built in ``directory`` (self-contained; the index only links)."""
    pages = sorted(directory.rglob("*.html"), key=lambda p: (p.name == "index.html", len(str(p))))
    return HTMLString(pages[0].read_text() if pages else "<p>no Data Docs were built</p>")


@step
def validate_segmentation_data(
    train_image: np.ndarray,
    train_mask: np.ndarray,
    test_image: np.ndarray,
    test_mask: np.ndarray,
    expectations: dict,
) -> tuple[Annotated[dict, "validation_result"], Annotated[HTMLString, "data_docs"]]:
    """Run the dataset suite; the result and GX's Data Docs page are kept as artifacts, pass or fail."""
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_segmentation_dataset(
            {"training": (train_image, train_mask), "testing": (test_image, test_mask)},
            from_mapping(SegmentationExpectations, expectations),
            data_docs_dir=Path(tmp),
            sources={"training": ", ".join(LUCCHI_FILES[:2]), "testing": ", ".join(LUCCHI_FILES[2:])},
        )
        html = data_docs_page(Path(tmp))
    log_metadata(metadata={"validation_success": report.success, "failed_expectations": report.failures})
    result = {"success": report.success, "failures": report.failures, "results": report.results}
    return result, html


@step
def require_valid_dataset(validation_result: dict) -> Annotated[bool, "dataset_valid"]:
    """Stop the pipeline when validation failed, naming every failed expectation."""
    if not validation_result["success"]:
        failures = "\n  - ".join(validation_result["failures"])
        raise ValueError(f"dataset validation failed; failed expectations:\n  - {failures}")
    logger.info("dataset validation passed")
    return True
