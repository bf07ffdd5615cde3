"""Dataset validation with Great Expectations 1.x, before any training.

Each image/mask volume is summarised as one table row per slice (dtypes, shapes, value ranges, mask
values, foreground fraction); a Great Expectations suite then checks that table. The suite runs in an
ephemeral context, so nothing is written outside the folder given for the HTML Data Docs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
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


def _mask_values(mask_slice: np.ndarray) -> list:
    """The distinct values of a mask slice (at most 6 of them, enough to name a non-binary mask)."""
    values = np.unique(mask_slice)
    return values[:6].tolist()


def _mask_is_binary(mask_slice: np.ndarray) -> bool:
    values = set(np.unique(mask_slice).tolist())
    return bool(values <= {0, 1} or values <= {0, 255})


def summarise_volumes(volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per slice of every (image, mask) volume, with the figures the expectations check.

    Each column describes one property, so that one fault shows in one column only: a mask one slice short
    fails ``shape_matches`` and nothing else (the slices both volumes have are still checked for binary values
    and foreground).

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
        image_slices = image if image.ndim >= 3 else image[None]
        mask_slices = mask if mask.ndim >= 3 else mask[None]
        for z in range(len(image_slices)):
            image_slice = image_slices[z].astype(np.float64)
            has_mask = z < len(mask_slices)
            rows.append(
                {
                    "volume": name,
                    "slice": z,
                    "ndim": image.ndim,
                    "image_shape": "x".join(map(str, image.shape)),
                    "mask_shape": "x".join(map(str, mask.shape)),
                    "shape_matches": shape_matches,
                    "image_dtype": image.dtype.name,
                    # Only supported dtypes take part in the same-dtype check: an unsupported one is its own fault.
                    "supported_image_dtype": image.dtype.name if image.dtype.name in IMAGE_DTYPES else None,
                    "mask_dtype": mask.dtype.name,
                    "image_finite": bool(np.isfinite(image_slice).all()),
                    "image_std": float(np.nanstd(image_slice)) if image_slice.size else 0.0,
                    # None where the mask has no such slice: GX skips nulls, shape_matches names the fault.
                    "mask_is_binary": _mask_is_binary(mask_slices[z]) if has_mask else None,
                    "mask_values": ",".join(map(str, _mask_values(mask_slices[z]))) if has_mask else None,
                    "slice_foreground_fraction": float((mask_slices[z] > 0).mean()) if has_mask else None,
                    "volume_foreground_fraction": volume_fg,
                }
            )
    return pd.DataFrame(rows)


def _segmentation_suite(expect: SegmentationExpectations) -> list:
    e = gx.expectations
    return tagged([
        ("slices", e.ExpectTableRowCountToBeBetween(min_value=expect.min_slices)),
        ("ndim", e.ExpectColumnValuesToBeInSet(column="ndim", value_set=[3])),
        ("shape_matches", e.ExpectColumnValuesToBeInSet(column="shape_matches", value_set=[True])),
        ("image_dtype", e.ExpectColumnValuesToBeInSet(column="image_dtype", value_set=IMAGE_DTYPES)),
        ("same_image_dtype", e.ExpectColumnUniqueValueCountToBeBetween(column="supported_image_dtype", max_value=1)),
        ("mask_dtype", e.ExpectColumnValuesToBeInSet(column="mask_dtype", value_set=MASK_DTYPES)),
        ("mask_is_binary", e.ExpectColumnValuesToBeInSet(column="mask_is_binary", value_set=[True])),
        ("image_finite", e.ExpectColumnValuesToBeInSet(column="image_finite", value_set=[True])),
        ("image_std", e.ExpectColumnValuesToBeBetween(column="image_std", min_value=expect.min_slice_std,
                                                      strict_min=True)),
        ("foreground", e.ExpectColumnValuesToBeBetween(
            column="volume_foreground_fraction",
            min_value=expect.min_foreground_fraction,
            max_value=expect.max_foreground_fraction,
        )),
    ])


def _explain_segmentation(check: str, table: pd.DataFrame, expect: SegmentationExpectations,
                          sources: dict[str, str]) -> str:
    """Plain words for a failed check of the segmentation suite: the volume (and its files) and the slices at
    fault, what was expected and what was found."""

    def _source(volume: str) -> str:
        return f"volume {volume!r}" + (f" ({sources[volume]})" if volume in sources else "")

    def _per_volume(rows: pd.DataFrame, describe) -> str:
        return "; ".join(f"{_source(v)}: {describe(g.iloc[0])}" for v, g in rows.groupby("volume", sort=False))

    def _slices(rows: pd.DataFrame, limit: int = 8) -> str:
        parts = []
        for volume, group in rows.groupby("volume", sort=False):
            zs = group["slice"].tolist()
            shown = ", ".join(map(str, zs[:limit])) + (f" and {len(zs) - limit} more" if len(zs) > limit else "")
            parts.append(f"{_source(volume)} slice{'s' if len(zs) > 1 else ''} {shown}")
        return "; ".join(parts)

    if check == "slices":
        return f"{_plural(len(table), 'slice')} in all volumes, at least {expect.min_slices} expected"
    if check == "ndim":
        bad = table[table["ndim"] != 3]
        return _per_volume(bad, lambda r: f"expected a 3-D (Z, Y, X) stack, found {r['ndim']}-D of shape "
                                          f"{r['image_shape']}")
    if check == "shape_matches":
        bad = table[~table["shape_matches"]]
        return _per_volume(bad, lambda r: f"image is {r['image_shape']} but its mask is {r['mask_shape']}; "
                                          "expected the same shape")
    if check == "image_dtype":
        bad = table[~table["image_dtype"].isin(IMAGE_DTYPES)]
        return _per_volume(bad, lambda r: f"image dtype {r['image_dtype']}, expected one of {IMAGE_DTYPES}")
    if check == "same_image_dtype":
        return ("volumes differ in image dtype, so their grey levels would be scaled differently: "
                + ", ".join(f"{_source(v)} {d}" for v, d in
                             table.groupby("volume", sort=False)["image_dtype"].first().items()))
    if check == "mask_dtype":
        bad = table[~table["mask_dtype"].isin(MASK_DTYPES)]
        return _per_volume(bad, lambda r: f"mask dtype {r['mask_dtype']}, expected one of {MASK_DTYPES}")
    if check == "mask_is_binary":
        bad = table[table["mask_is_binary"].eq(False)]
        first = bad.iloc[0]
        return (f"mask values are not binary in {_slices(bad)}: expected {{0, 1}} or {{0, 255}}, found "
                f"{{{first['mask_values'].replace(',', ', ')}}} in slice {first['slice']}")
    if check == "image_finite":
        return f"NaN or infinite pixels in {_slices(table[~table['image_finite']])}; expected finite values"
    if check == "image_std":
        bad = table[~(table["image_std"] > expect.min_slice_std)]
        return (f"blank (constant) image in {_slices(bad)}: standard deviation {bad['image_std'].iloc[0]:.3g}, "
                f"expected above {expect.min_slice_std}")
    if check == "foreground":
        fraction = table["volume_foreground_fraction"]
        bad = table[~fraction.between(expect.min_foreground_fraction, expect.max_foreground_fraction)]
        return _per_volume(bad, lambda r: f"mask foreground is {r['volume_foreground_fraction']:.2%} of the volume, "
                                          f"expected {expect.min_foreground_fraction:.2%} to "
                                          f"{expect.max_foreground_fraction:.2%}")
    raise KeyError(check)


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
    sources: dict[str, str] | None = None,
) -> ValidationReport:
    """Run the segmentation dataset suite on named (image, mask) volumes.

    The suite expects: at least ``min_slices`` slices; 3-D stacks; each mask the shape of its image; image
    dtypes in :data:`IMAGE_DTYPES`, the same in every volume; mask dtypes in :data:`MASK_DTYPES`; binary mask
    values ({0, 1} or {0, 255}); finite pixels; no constant slice; each volume's foreground fraction within
    bounds.

    Parameters
    ----------
    volumes : e.g. ``{"training": (image, mask), "testing": (image, mask)}``, (Z, Y, X) arrays.
    expectations : thresholds of the suite.
    data_docs_dir : where to build Great Expectations' HTML Data Docs; none are built when omitted.
    sources : the files each volume came from, quoted in the failures (e.g. ``{"training": "training.tif"}``).

    Returns
    -------
    ValidationReport; each line of ``failures`` names the failed expectation, the volume (and slices), what was
    expected and what was found.
    """
    table = summarise_volumes(volumes)
    report = _run_suite(table, "segmentation_dataset", _segmentation_suite(expectations), data_docs_dir)
    report.failures = explained_failures(
        report, lambda check: _explain_segmentation(check, table, expectations, sources or {}))
    return report


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


@dataclass(frozen=True)
class ClassificationExpectations:
    """Thresholds of the classification dataset suite (every field settable from the YAML config).

    Attributes
    ----------
    min_images_per_class : fewest images a class may have (all splits together).
    max_class_imbalance : largest allowed ratio of the largest class count to the smallest one (>= 1).
    min_side : smallest allowed image side in pixels.
    allowed_channels : channel counts accepted (1 grey, 3 RGB, 4 RGBA; ``to_model_input`` takes no others).
    require_consistent_size : whether every image must have the same height, width and channel count.
    min_std : an image whose standard deviation (in its own grey levels) is not above this is taken as blank.
    """

    min_images_per_class: int
    max_class_imbalance: float
    min_side: int
    allowed_channels: tuple[int, ...] = (1, 3, 4)
    require_consistent_size: bool = True
    min_std: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_channels", tuple(int(c) for c in self.allowed_channels))  # YAML gives lists
        problems = []
        if self.min_images_per_class < 1:
            problems.append(f"min_images_per_class must be at least 1, got {self.min_images_per_class}")
        if self.max_class_imbalance < 1:
            problems.append("max_class_imbalance (largest / smallest class) must be at least 1, "
                            f"got {self.max_class_imbalance}")
        if self.min_side < 1:
            problems.append(f"min_side must be at least 1 pixel, got {self.min_side}")
        if not self.allowed_channels:
            problems.append("allowed_channels is empty")
        if problems:
            raise ValueError(f"ClassificationExpectations: {'; '.join(problems)}")


#: Columns of :func:`summarise_class_images`, in order.
CLASS_IMAGE_COLUMNS = ["file", "label", "split", "readable", "problem", "height", "width", "channels", "dtype", "std",
                       "content_md5", "duplicate_across_splits", "duplicate_conflicting_label"]


def summarise_class_images(files: Sequence[Path], labels: Sequence[str], splits: Sequence[str],
                           content_hashes: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per image file of a classification dataset, with the figures the classification suite checks.

    Parameters
    ----------
    files : the image files.
    labels : the class name of each file.
    splits : the split of each file (e.g. ``"train"``, ``"val"``, ``"test"``).
    content_hashes : the md5 of each file when the caller has them already (the split needs them too);
        computed here otherwise.

    Returns
    -------
    DataFrame with :data:`CLASS_IMAGE_COLUMNS`: ``readable`` (the file can be read as one finite image of a dtype
    that :func:`cellops.io.to_model_input` takes, see :func:`cellops.io.image_geometry`; otherwise ``problem``
    says why and the image columns are empty),
    ``height``, ``width``, ``channels`` (1 for a 2-D image), ``dtype``, ``std`` (in the file's grey levels),
    ``content_md5`` of the bytes, ``duplicate_across_splits`` (another readable file with the same bytes is in a
    different split) and ``duplicate_conflicting_label`` (another readable file with the same bytes has a
    different label).

    Examples
    --------
    >>> import tempfile
    >>> from cellops.io import write_tiff_stack
    >>> folder = Path(tempfile.mkdtemp())
    >>> a = write_tiff_stack(folder / "a.tif", np.arange(64, dtype=np.uint8).reshape(8, 8))
    >>> b = write_tiff_stack(folder / "b.tif", np.arange(64, dtype=np.uint8).reshape(8, 8))
    >>> table = summarise_class_images([a, b], ["ec", "ec"], ["train", "test"])
    >>> table[["height", "channels", "duplicate_across_splits", "duplicate_conflicting_label"]].values.tolist()
    [[8, 1, True, False], [8, 1, True, False]]
    """
    from cellops.data_version import file_md5
    from cellops.io import ImageInputError, image_geometry, read_image_file

    if not len(files) == len(labels) == len(splits):
        raise ValueError(f"got {len(files)} files, {len(labels)} labels and {len(splits)} splits: one of each per file")
    if content_hashes is None:
        content_hashes = [file_md5(p) if Path(p).is_file() else None for p in files]
    rows = []
    for path, label, split, digest in zip(map(Path, files), labels, splits, content_hashes):
        row = {"file": str(path), "label": str(label), "split": str(split), "readable": False, "problem": "",
               "height": None, "width": None, "channels": None, "dtype": None, "std": np.nan,
               "content_md5": digest}
        try:
            image = read_image_file(path)
            height, width, channels = image_geometry(image, source=str(path))
            if not (image.dtype.kind == "f" or (image.dtype.kind == "u" and image.dtype.itemsize <= 2)):
                raise ImageInputError(f"{path}: unsupported dtype {image.dtype.name}; expected uint8, uint16 or float")
            values = image.astype(np.float64)
            if not np.isfinite(values).all():
                raise ImageInputError(f"{path}: image contains NaN or infinite values")
        except ImageInputError as error:
            row["problem"] = str(error)
        else:
            row.update(readable=True, height=height, width=width, channels=channels, dtype=image.dtype.name,
                       std=float(values.std()))
        rows.append(row)
    table = pd.DataFrame(rows, columns=CLASS_IMAGE_COLUMNS)
    for column in ("height", "width", "channels"):
        table[column] = table[column].astype("Int64")
    table["std"] = table["std"].astype(float)
    readable = table[table["readable"] & table["content_md5"].notna()]
    groups = readable.groupby("content_md5")
    across = groups["split"].transform("nunique") > 1
    conflicting = groups["label"].transform("nunique") > 1
    table["duplicate_across_splits"] = across.reindex(table.index, fill_value=False).astype(bool)
    table["duplicate_conflicting_label"] = conflicting.reindex(table.index, fill_value=False).astype(bool)
    return table


def _with_class_columns(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """``table`` plus the derived columns the suite checks: size, smallest side, class count, imbalance, label|split."""
    derived = table.copy()
    derived["size"] = [f"{h}x{w}" if r else None for h, w, r in zip(table["height"], table["width"], table["readable"])]
    derived["min_side"] = table[["height", "width"]].min(axis=1, skipna=False)
    # Counts of the known classes only: a label that is no class is the `classes` fault, not a tiny class.
    counts = table["label"][table["label"].isin(classes)].value_counts()
    derived["class_count"] = table["label"].map(counts).astype("Int64")
    derived["imbalance_ratio"] = float(counts.max() / counts.min()) if len(counts) else 1.0
    derived["label_split"] = table["label"].astype(str) + "|" + table["split"].astype(str)
    return derived


def _files(rows: pd.DataFrame, limit: int = 10) -> str:
    names = rows["file"].tolist()
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _duplicate_groups(table: pd.DataFrame, flag: str) -> str:
    groups = []
    for digest, rows in table[table[flag]].groupby("content_md5", sort=False):
        members = " = ".join(f"{f} ({label}, {split})" for f, label, split in rows[["file", "label", "split"]].values)
        groups.append(f"{members} [md5 {digest[:8]}]")
    return "; ".join(groups[:10]) + (f" and {len(groups) - 10} more groups" if len(groups) > 10 else "")


def _explain_classification(check: str, table: pd.DataFrame, classes: Sequence[str],
                            expect: ClassificationExpectations, splits: Sequence[str]) -> str:
    """Plain words for a failed check of the classification suite, naming the files, classes or splits at fault."""
    readable = table[table["readable"]]
    counts = table["label"].value_counts()
    known = counts[counts.index.isin(classes)]
    if check == "readable":
        bad = table[~table["readable"]]
        return f"{_plural(len(bad), 'file')} cannot be used: " + "; ".join(bad["problem"].tolist()[:10])
    if check == "channels":
        bad = readable[~readable["channels"].isin(expect.allowed_channels)]
        return (f"{_plural(len(bad), 'image')} with a channel count outside {list(expect.allowed_channels)}: "
                + ", ".join(f"{f} ({c} channels)" for f, c in bad[["file", "channels"]].values[:10]))
    if check == "min_side":
        bad = readable[(readable["height"] < expect.min_side) | (readable["width"] < expect.min_side)]
        return (f"{_plural(len(bad), 'image')} smaller than {expect.min_side} pixels on a side: "
                + ", ".join(f"{f} ({h}x{w})" for f, h, w in bad[["file", "height", "width"]].values[:10]))
    if check == "std":
        bad = readable[~(readable["std"] > expect.min_std)]
        return f"{_plural(len(bad), 'blank image')} (standard deviation <= {expect.min_std}): {_files(bad)}"
    if check in ("size", "channel_count"):
        column, what = ("size", "size (height x width)") if check == "size" else ("channels", "channel count")
        parts = []
        for value, rows in sorted(readable.groupby(column), key=lambda item: -len(item[1])):
            parts.append(f"{value} ({_plural(len(rows), 'image')}{': ' + _files(rows, 3) if len(rows) <= 3 else ''})")
        return f"images differ in {what}: " + ", ".join(parts)
    if check == "classes":
        missing = [c for c in classes if c not in counts.index]
        extra = [c for c in counts.index if c not in classes]
        words = [f"class {c!r} has no images" for c in missing]
        words += [f"label {c!r} is not one of the classes {list(classes)} ({_plural(int(counts[c]), 'image')})"
                  for c in extra]
        return "; ".join(words)
    if check == "class_in_every_split":
        present = set(table["label_split"])
        missing = [(c, s) for c in classes for s in splits if f"{c}|{s}" not in present]
        return "; ".join(f"class {c!r} has no images in split {s!r}" for c, s in missing)
    if check == "min_images_per_class":
        few = known[known < expect.min_images_per_class]
        return "; ".join(f"class {c!r} has {_plural(int(n), 'image')}, fewer than {expect.min_images_per_class}"
                         for c, n in few.items())
    if check == "imbalance":
        if known.empty:
            return "no images at all, so no class balance"
        largest, smallest = known.idxmax(), known.idxmin()
        return (f"classes are imbalanced: the largest, {largest!r}, has {_plural(int(known[largest]), 'image')}, the "
                f"smallest, {smallest!r}, {int(known[smallest])}: a ratio of "
                f"{known[largest] / known[smallest]:.2f}, more than {expect.max_class_imbalance}")
    if check == "duplicate_across_splits":
        return ("the same image content is in more than one split: "
                + _duplicate_groups(table, "duplicate_across_splits"))
    if check == "duplicate_conflicting_label":
        return ("the same image content has different labels: "
                + _duplicate_groups(table, "duplicate_conflicting_label"))
    raise KeyError(check)


def _classification_suite(table: pd.DataFrame, classes: Sequence[str], expect: ClassificationExpectations,
                          splits: Sequence[str]) -> list:
    e = gx.expectations
    checks = [
        ("readable", e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True])),
        ("channels", e.ExpectColumnValuesToBeInSet(column="channels", value_set=list(expect.allowed_channels))),
        ("min_side", e.ExpectColumnValuesToBeBetween(column="min_side", min_value=expect.min_side)),
        ("std", e.ExpectColumnValuesToBeBetween(column="std", min_value=expect.min_std, strict_min=True)),
        ("classes", e.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=list(classes))),
        ("class_in_every_split", e.ExpectColumnDistinctValuesToContainSet(
            column="label_split", value_set=[f"{c}|{s}" for c in classes for s in splits])),
        ("min_images_per_class", e.ExpectColumnValuesToBeBetween(column="class_count",
                                                                 min_value=expect.min_images_per_class)),
        ("imbalance", e.ExpectColumnMaxToBeBetween(column="imbalance_ratio", max_value=expect.max_class_imbalance)),
        ("duplicate_across_splits", e.ExpectColumnValuesToBeInSet(column="duplicate_across_splits", value_set=[False])),
        ("duplicate_conflicting_label", e.ExpectColumnValuesToBeInSet(column="duplicate_conflicting_label",
                                                                      value_set=[False])),
    ]
    if expect.require_consistent_size:
        checks += [
            ("size", e.ExpectColumnUniqueValueCountToBeBetween(column="size", max_value=1)),
            ("channel_count", e.ExpectColumnUniqueValueCountToBeBetween(column="channels", max_value=1)),
        ]
    return tagged(checks)


def tagged(checks: Sequence[tuple[str, object]]) -> list:
    """The expectations of ``(check name, expectation)`` pairs, each carrying its check name (see
    :func:`explained_failures`)."""
    suite = []
    for check, expectation in checks:
        expectation.meta = {"cellops_check": check}
        suite.append(expectation)
    return suite


def explained_failures(report: ValidationReport, explain) -> list[str]:
    """One line per failed expectation of ``report``: for one tagged by :func:`tagged`, its type, column and
    ``explain(check)`` in plain words; for any other, or one GX could not evaluate, GX's own description."""
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
    type for an untagged one."""
    return [(r["expectation_config"].get("meta") or {}).get("cellops_check") or r["expectation_config"]["type"]
            for r in report.results["results"] if not r["success"]]


def _raised(result: dict) -> bool:
    """Whether GX could not evaluate an expectation (its exception info is flat or keyed by metric)."""
    info = result.get("exception_info") or {}
    return bool(info.get("raised_exception")) or any(
        isinstance(value, dict) and value.get("raised_exception") for value in info.values())


def validate_classification_dataset(
    table: pd.DataFrame,
    classes: Sequence[str],
    expectations: ClassificationExpectations,
    data_docs_dir: Path | None = None,
    splits: Sequence[str] | None = None,
) -> ValidationReport:
    """Run the classification dataset suite on a :func:`summarise_class_images` table.

    ``splits`` names the splits every class must appear in (e.g. train, val, test: an empty split fails);
    by default, those the table holds.

    The suite expects: every file readable; channel counts in ``allowed_channels``; both sides at least
    ``min_side``; no blank image (std above ``min_std``); with ``require_consistent_size`` one image size and
    one channel count across the dataset; the labels exactly ``classes``, every class in every split present
    in the table; at least ``min_images_per_class`` files per class (all splits together); largest / smallest
    class count at most ``max_class_imbalance``; no image content in two splits (leakage between training and
    test) and none under two labels. The image size, smallest side, class counts, imbalance ratio and
    ``label|split`` pairs are columns added to the table before the suite runs (they appear in the Data Docs).

    Parameters
    ----------
    table : from :func:`summarise_class_images`.
    classes : the class names the dataset must hold (e.g. the class folders).
    expectations : thresholds of the suite.
    data_docs_dir : where to build Great Expectations' HTML Data Docs; none are built when omitted.

    Returns
    -------
    ValidationReport; each line of ``failures`` names the failed expectation, its column and, in plain words,
    what was observed (e.g. ``class 'non_ec' has 40 images, fewer than 50``, or the files found in two splits).
    """
    missing = [c for c in CLASS_IMAGE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks the columns {missing}: build it with summarise_class_images")
    if not classes:
        raise ValueError("no classes given: pass the class names the dataset must hold")
    derived = _with_class_columns(table, classes)
    splits = list(splits) if splits else sorted(table["split"].unique())
    report = _run_suite(derived, "classification_dataset",
                        _classification_suite(derived, classes, expectations, splits), data_docs_dir)
    report.failures = explained_failures(
        report, lambda check: _explain_classification(check, derived, classes, expectations, splits))
    return report
