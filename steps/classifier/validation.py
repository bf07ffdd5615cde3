"""The Great Expectations step over the class folders (cellops.classifier.validation)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cellops.classifier.data import SPLITS
from cellops.classifier.validation import (
    ClassificationExpectations,
    summarise_class_images,
    validate_classification_dataset,
)
from cellops.config import from_mapping
from steps.validation import data_docs_page

logger = get_logger(__name__)


@step
def validate_classification_data(
    dataset_index: dict, expectations: dict,
) -> tuple[Annotated[dict, "validation_result"], Annotated[HTMLString, "data_docs"]]:
    """The Great Expectations suite over the files: readable, consistent sizes and channels, every class in every
    split, balance within bounds, no picture in two splits. Result and Data Docs are kept, pass or fail."""
    table = summarise_class_images([Path(p) for p in dataset_index["files"]],
                                   [dataset_index["classes"][i] for i in dataset_index["labels"]],
                                   dataset_index["splits"], content_hashes=dataset_index["md5"])
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_classification_dataset(table, dataset_index["classes"],
                                                 from_mapping(ClassificationExpectations, expectations),
                                                 data_docs_dir=Path(tmp), splits=SPLITS)
        html = data_docs_page(Path(tmp))
    log_metadata(metadata={"validation_success": report.success, "failed_expectations": report.failures})
    return {"success": report.success, "failures": report.failures, "results": report.results}, html
