"""The Great Expectations step over the EM volumes (cellops.unet.validation)."""

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
from cellops.unet.validation import SegmentationExpectations, validate_segmentation_dataset
from steps.validation import data_docs_page

logger = get_logger(__name__)


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
