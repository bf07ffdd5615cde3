"""The Great Expectations step over the instance annotations (cellops.maskrcnn.validation)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cellops.maskrcnn.validation import AnnotationExpectations, summarise_annotations, validate_annotation_dataset
from steps.validation import data_docs_page

logger = get_logger(__name__)


@step
def validate_instance_annotations(
    annotations: dict, dataset_index: dict, expectations: dict,
) -> tuple[Annotated[dict, "validation_result"], Annotated[HTMLString, "data_docs"]]:
    """The Great Expectations suite over the annotations: files exist and read at the annotated size, known
    categories, valid polygons inside the image, boxes matching masks, unique ids, instance counts within bounds,
    no picture in two splits. Result and Data Docs are kept, pass or fail."""
    expect = AnnotationExpectations.from_dict(expectations)
    table = summarise_annotations(annotations, dataset_index["images_dir"], dataset_index, expect)
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_annotation_dataset(table, expect, data_docs_dir=Path(tmp))
        html = data_docs_page(Path(tmp))
    log_metadata(metadata={"validation_success": report.success, "failed_expectations": report.failures})
    return {"success": report.success, "failures": report.failures, "results": report.results}, html
