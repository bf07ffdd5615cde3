"""Dataset validation with Great Expectations 1.x, before any training.

Each image/mask volume is summarised as one table row per slice (dtypes, shapes, value ranges, mask
values, foreground fraction); a Great Expectations suite then checks that table. The suite runs in an
ephemeral context, so nothing is written outside the folder given for the HTML Data Docs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# GX logs thousands of DEBUG lines at import; keep them out of pipeline logs.
for _name in ("great_expectations", "great_expectations.expectations.registry"):
    logging.getLogger(_name).setLevel(logging.WARNING)

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

IMAGE_DTYPES = ["uint8", "uint16", "float32"]
MASK_DTYPES = ["uint8", "bool"]


@dataclass(frozen=True)
class SegmentationExpectations:
    """Thresholds of the segmentation dataset suite (all from the YAML config)."""

    min_foreground_fraction: float = 0.005
    max_foreground_fraction: float = 0.5
    min_slice_std: float = 1e-6
    min_slices: int = 1


@dataclass
class ValidationReport:
    """Outcome of a validation run.

    Attributes
    ----------
    success : whether every expectation passed.
    failures : one line per failed expectation, naming it, its column and what was observed.
    results : the full Great Expectations result as a JSON-serialisable dict.
    data_docs : path of the HTML Data Docs index, when they were built.
    """

    success: bool
    failures: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    data_docs: Path | None = None


def _mask_is_binary(mask_slice: np.ndarray) -> bool:
    values = np.unique(mask_slice)
    return bool(set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255})


def summarise_volumes(volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per slice of every (image, mask) volume, with the figures the expectations check.

    Examples
    --------
    >>> img = np.random.default_rng(0).integers(0, 255, (2, 8, 8), dtype=np.uint8)
    >>> msk = np.zeros((2, 8, 8), np.uint8); msk[:, :2] = 255
    >>> summarise_volumes({"training": (img, msk)})[["volume", "slice", "shape_matches"]].values.tolist()
    [['training', 0, True], ['training', 1, True]]
    """
    rows = []
    for name, (image, mask) in volumes.items():
        shape_matches = image.shape == mask.shape
        volume_fg = float((mask > 0).mean()) if mask.size else float("nan")
        n_slices = image.shape[0] if image.ndim == 3 else 1
        image_slices = image if image.ndim == 3 else image[None]
        mask_slices = mask if mask.ndim == 3 else mask[None]
        for z in range(n_slices):
            image_slice = image_slices[z].astype(np.float64)
            finite = bool(np.isfinite(image_slice).all())
            has_mask = shape_matches and z < len(mask_slices)
            rows.append(
                {
                    "volume": name,
                    "slice": z,
                    "ndim": image.ndim,
                    "image_shape": "x".join(map(str, image.shape)),
                    "mask_shape": "x".join(map(str, mask.shape)),
                    "shape_matches": shape_matches,
                    "image_dtype": image.dtype.name,
                    "mask_dtype": mask.dtype.name,
                    "image_finite": finite,
                    "image_std": float(np.nanstd(image_slice)) if image_slice.size else 0.0,
                    "mask_is_binary": _mask_is_binary(mask_slices[z]) if has_mask else False,
                    "slice_foreground_fraction": float((mask_slices[z] > 0).mean()) if has_mask else None,
                    "volume_foreground_fraction": volume_fg,
                }
            )
    return pd.DataFrame(rows)


def _segmentation_suite(expect: SegmentationExpectations) -> list:
    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=expect.min_slices),
        e.ExpectColumnValuesToBeInSet(column="ndim", value_set=[3]),
        e.ExpectColumnValuesToBeInSet(column="shape_matches", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="image_dtype", value_set=IMAGE_DTYPES),
        e.ExpectColumnValuesToBeInSet(column="mask_dtype", value_set=MASK_DTYPES),
        e.ExpectColumnValuesToBeInSet(column="mask_is_binary", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="image_finite", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="image_std", min_value=expect.min_slice_std, strict_min=True),
        e.ExpectColumnValuesToNotBeNull(column="slice_foreground_fraction"),
        e.ExpectColumnValuesToBeBetween(
            column="volume_foreground_fraction",
            min_value=expect.min_foreground_fraction,
            max_value=expect.max_foreground_fraction,
        ),
    ]


def _describe_failure(result: dict) -> str:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id", "column")}
    column = config["kwargs"].get("column")
    observed = result.get("result", {})
    detail = observed.get("partial_unexpected_list") or observed.get("observed_value")
    where = f" on column '{column}'" if column else ""
    return f"{config['type']}{where} {kwargs} failed: unexpected/observed {detail!r}"


def validate_segmentation_dataset(
    volumes: dict[str, tuple[np.ndarray, np.ndarray]],
    expectations: SegmentationExpectations = SegmentationExpectations(),
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the segmentation dataset suite on named (image, mask) volumes.

    Parameters
    ----------
    volumes : e.g. ``{"training": (image, mask), "testing": (image, mask)}``, (Z, Y, X) arrays.
    expectations : thresholds of the suite.
    data_docs_dir : where to build Great Expectations' HTML Data Docs; none are built when omitted.

    Returns
    -------
    ValidationReport; ``failures`` names every failed expectation.
    """
    return _run_suite(summarise_volumes(volumes), "segmentation_dataset", _segmentation_suite(expectations),
                      data_docs_dir)


def _run_suite(table: pd.DataFrame, name: str, expectations: list, data_docs_dir: Path | None) -> ValidationReport:
    """Validate ``table`` against ``expectations`` in an ephemeral GX context; optionally build Data Docs."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (
        context.data_sources.add_pandas("cellops").add_dataframe_asset("table").add_batch_definition_whole_dataframe("all")
    )
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
    actions = []
    if data_docs_dir is not None:
        site = "cellops_site"
        context.add_data_docs_site(
            site_name=site,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(data_docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[site]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(name=f"{name}_checkpoint", validation_definitions=[validation], actions=actions)
    )
    run = checkpoint.run(batch_parameters={"dataframe": table})
    result = next(iter(run.run_results.values())).to_json_dict()
    failures = [_describe_failure(r) for r in result["results"] if not r["success"]]
    index = data_docs_dir / "index.html" if data_docs_dir is not None else None
    return ValidationReport(
        success=bool(run.success),
        failures=failures,
        results=result,
        data_docs=index if index is not None and index.exists() else None,
    )


@dataclass(frozen=True)
class ImageSetExpectations:
    """Thresholds of the image-folder suite used by the classical analyses (all from the YAML config)."""

    allowed_ndim: tuple[int, ...] = (2,)
    allowed_dtypes: tuple[str, ...] = ("uint8", "uint16", "float32")
    min_images: int = 1
    min_side: int = 32
    min_std: float = 1e-6
    require_ground_truth: bool = True


def summarise_image_files(files: list[Path], ground_truth: dict[str, bool] | None = None) -> pd.DataFrame:
    """One row per file: readable, ndim, dtype, smallest side, std, finite, whether ground truth exists."""
    from cellops.io import ImageInputError, read_image_file

    rows = []
    for path in files:
        row = {"file": str(path), "readable": True, "ndim": 0, "dtype": "", "min_side": 0, "std": 0.0,
               "finite": False, "has_ground_truth": bool((ground_truth or {}).get(str(path), True))}
        try:
            image = read_image_file(path)
        except ImageInputError:
            row["readable"] = False
        else:
            values = image.astype(np.float64)
            row.update(ndim=image.ndim, dtype=image.dtype.name, min_side=int(min(image.shape[-2:])),
                       std=float(np.nanstd(values)), finite=bool(np.isfinite(values).all()))
        rows.append(row)
    return pd.DataFrame(rows)


def validate_image_files(
    files: list[Path],
    expectations: ImageSetExpectations = ImageSetExpectations(),
    ground_truth: dict[str, bool] | None = None,
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Great Expectations suite over a set of image files (one row per file)."""
    e = gx.expectations
    suite = [
        e.ExpectTableRowCountToBeBetween(min_value=expectations.min_images),
        e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="ndim", value_set=list(expectations.allowed_ndim)),
        e.ExpectColumnValuesToBeInSet(column="dtype", value_set=list(expectations.allowed_dtypes)),
        e.ExpectColumnValuesToBeBetween(column="min_side", min_value=expectations.min_side),
        e.ExpectColumnValuesToBeBetween(column="std", min_value=expectations.min_std, strict_min=True),
        e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
    ]
    if expectations.require_ground_truth:
        suite.append(e.ExpectColumnValuesToBeInSet(column="has_ground_truth", value_set=[True]))
    return _run_suite(summarise_image_files(files, ground_truth), "image_files", suite, data_docs_dir)
