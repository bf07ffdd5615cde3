"""Dataset validation with Great Expectations 1.x, before any training: the one runner every suite uses.

A dataset is summarised as a table (one row per file, slice or image), a suite of expectations checks that
table (:func:`run_suite`), and each failed expectation is explained in plain words naming what is at fault
(:func:`tagged`, :func:`explained_failures`). Each model family keeps its own suite in
``cellops/<family>/validation.py``; the image-file suite of the classical analyses is here
(:func:`validate_image_files`). Suites run in an ephemeral context, so nothing is written outside the folder
given for the HTML Data Docs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
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


@dataclass
class ValidationReport:
    """Outcome of a validation run.

    Attributes
    ----------
    success : bool
        Whether every expectation passed.
    failures : list of str
        One line per failed expectation, naming it, its column and what was observed.
    results : dict
        The full Great Expectations result as a JSON-serialisable dict.
    data_docs : Path or None
        Path of the HTML Data Docs index, when they were built.
    """

    success: bool
    failures: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    data_docs: Path | None = None


def _describe_failure(result: dict) -> str:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id", "column")}
    column = config["kwargs"].get("column")
    observed = result.get("result", {})
    detail = observed.get("partial_unexpected_list") or observed.get("observed_value")
    where = f" on column '{column}'" if column else ""
    return f"{config['type']}{where} {kwargs} failed: unexpected/observed {detail!r}"


def run_suite(table: pd.DataFrame, name: str, expectations: list,
              data_docs_dir: Path | None = None) -> ValidationReport:
    """Validate ``table`` against ``expectations`` in an ephemeral Great Expectations context.

    Parameters
    ----------
    table : pd.DataFrame
        The dataset's summary, one row per file, slice or image.
    name : str
        Name of the suite (and of its page in the Data Docs).
    expectations : list
        Great Expectations expectations, usually named by :func:`tagged`.
    data_docs_dir : Path, optional
        Where to build the HTML Data Docs; none are built when omitted.

    Returns
    -------
    ValidationReport
        ``failures`` holds GX's own description of each failed expectation; a suite replaces them with plain
        words through :func:`explained_failures`.
    """
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


def tagged(checks: Sequence[tuple[str, object]]) -> list:
    """The expectations of ``(check name, expectation)`` pairs, each carrying its check name (see
    :func:`explained_failures`).

    Parameters
    ----------
    checks : sequence of tuple of (str, object)
        Check name and Great Expectations expectation, in suite order.

    Returns
    -------
    list
        The expectations, their ``meta`` naming the check.
    """
    suite = []
    for check, expectation in checks:
        expectation.meta = {"cellops_check": check}
        suite.append(expectation)
    return suite


def explained_failures(report: ValidationReport, explain: Callable[[str], str]) -> list[str]:
    """One line per failed expectation of ``report``: for one tagged by :func:`tagged`, its type, column and
    ``explain(check)`` in plain words; for any other, or one GX could not evaluate, GX's own description.

    Parameters
    ----------
    report : ValidationReport
        From :func:`run_suite`.
    explain : callable
        ``explain(check)``: what was observed, in plain words.

    Returns
    -------
    list of str
        One line per failed expectation.
    """
    failures = []
    for result in report.results["results"]:
        if result["success"]:
            continue
        config = result["expectation_config"]
        check = (config.get("meta") or {}).get("cellops_check")
        if check is None or _raised(result):
            failures.append(_describe_failure(result))
            continue
        column = config["kwargs"].get("column")
        where = f" on column '{column}'" if column else ""
        failures.append(f"{config['type']}{where} failed: {explain(check)}")
    return failures


def failed_checks(report: ValidationReport) -> list[str]:
    """The check names (see :func:`tagged`) of the expectations ``report`` failed, in suite order; GX's expectation
    type for an untagged one.

    Parameters
    ----------
    report : ValidationReport
        From :func:`run_suite`.

    Returns
    -------
    list of str
        The failed checks' names.
    """
    return [(r["expectation_config"].get("meta") or {}).get("cellops_check") or r["expectation_config"]["type"]
            for r in report.results["results"] if not r["success"]]


def _raised(result: dict) -> bool:
    """Whether GX could not evaluate an expectation (its exception info is flat or keyed by metric)."""
    info = result.get("exception_info") or {}
    return bool(info.get("raised_exception")) or any(
        isinstance(value, dict) and value.get("raised_exception") for value in info.values())


def plural(n: int, word: str) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is 1: the counts failure messages quote.

    Parameters
    ----------
    n : int
        The count.
    word : str
        The singular noun.

    Returns
    -------
    str
        ``"<n> <word>"``, with an ``s`` unless ``n`` is 1.

    Examples
    --------
    >>> plural(1, "slice"), plural(3, "image")
    ('1 slice', '3 images')
    """
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class ImageSetExpectations:
    """Thresholds of the image-folder suite used by the classical analyses (all from the YAML config).

    Attributes
    ----------
    allowed_ndim : tuple of int, optional
        Array dimensions accepted (2: single images).
    allowed_dtypes : tuple of str, optional
        Pixel types accepted.
    min_images : int, optional
        Fewest files the folder must hold.
    min_side : int, optional
        Smallest height and width accepted.
    min_std : float, optional
        An image whose standard deviation is not above this is taken as blank.
    require_ground_truth : bool, optional
        Whether every image must have its ground truth.
    """

    allowed_ndim: tuple[int, ...] = (2,)
    allowed_dtypes: tuple[str, ...] = ("uint8", "uint16", "float32")
    min_images: int = 1
    min_side: int = 32
    min_std: float = 1e-6
    require_ground_truth: bool = True


def summarise_image_files(files: list[Path], ground_truth: dict[str, bool] | None = None) -> pd.DataFrame:
    """One row per file: readable, ndim, dtype, smallest side, std, finite, whether ground truth exists.

    Parameters
    ----------
    files : list of Path
        The image files.
    ground_truth : dict of str to bool or None, optional
        Whether each file (by path) has its ground truth; a file not listed counts as having it.

    Returns
    -------
    pd.DataFrame
        Columns ``file``, ``readable``, ``ndim``, ``dtype``, ``min_side``, ``std``, ``finite``,
        ``has_ground_truth``.
    """
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
    """Great Expectations suite over a set of image files (one row per file).

    Parameters
    ----------
    files : list of Path
        The image files.
    expectations : ImageSetExpectations, optional
        Thresholds of the suite.
    ground_truth : dict of str to bool or None, optional
        Whether each file (by path) has its ground truth.
    data_docs_dir : Path or None, optional
        Where to build the HTML Data Docs; none are built when omitted.

    Returns
    -------
    ValidationReport
        The suite's outcome.
    """
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
    return run_suite(summarise_image_files(files, ground_truth), "image_files", suite, data_docs_dir)
