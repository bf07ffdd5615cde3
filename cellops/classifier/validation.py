"""The Great Expectations suite over a classifier's class-folder dataset, before any training.

Each image file is summarised as one table row (readable, size, channels, contrast, content hash, label and
split); the suite checks that table on the shared runner (:func:`cellops.validation.run_suite`) and each failure
names the files, classes or splits at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellops.validation import ValidationReport, explained_failures, gx, plural, run_suite, tagged


@dataclass(frozen=True)
class ClassificationExpectations:
    """Thresholds of the classification dataset suite (every field settable from the YAML config).

    Attributes
    ----------
    min_images_per_class : int
        Fewest images a class may have (all splits together).
    max_class_imbalance : float
        Largest allowed ratio of the largest class count to the smallest one (>= 1).
    min_side : int
        Smallest allowed image side in pixels.
    allowed_channels : tuple of int, optional
        Channel counts accepted (1 grey, 3 RGB, 4 RGBA; ``to_model_input`` takes no others).
    require_consistent_size : bool, optional
        Whether every image must have the same height, width and channel count.
    min_std : float, optional
        An image whose standard deviation (in its own grey levels) is not above this is taken as blank.
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
    files : sequence of Path
        The image files.
    labels : sequence of str
        The class name of each file.
    splits : sequence of str
        The split of each file (e.g. ``"train"``, ``"val"``, ``"test"``).
    content_hashes : sequence of str or None, optional
        The md5 of each file when the caller has them already (the split needs them too);
        computed here otherwise.

    Returns
    -------
    pd.DataFrame
        The columns :data:`CLASS_IMAGE_COLUMNS`: ``readable`` (the file can be read as one finite image of a
        dtype that :func:`cellops.classifier.data.to_model_input` takes, see :func:`cellops.io.image_geometry`;
        otherwise ``problem`` says why and the image columns are empty),
        ``height``, ``width``, ``channels`` (1 for a 2-D image), ``dtype``, ``std`` (in the file's grey levels),
        ``content_md5`` of the bytes, ``duplicate_across_splits`` (another readable file with the same bytes is
        in a different split) and ``duplicate_conflicting_label`` (another readable file with the same bytes has
        a different label).

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
        return f"{plural(len(bad), 'file')} cannot be used: " + "; ".join(bad["problem"].tolist()[:10])
    if check == "channels":
        bad = readable[~readable["channels"].isin(expect.allowed_channels)]
        return (f"{plural(len(bad), 'image')} with a channel count outside {list(expect.allowed_channels)}: "
                + ", ".join(f"{f} ({c} channels)" for f, c in bad[["file", "channels"]].values[:10]))
    if check == "min_side":
        bad = readable[(readable["height"] < expect.min_side) | (readable["width"] < expect.min_side)]
        return (f"{plural(len(bad), 'image')} smaller than {expect.min_side} pixels on a side: "
                + ", ".join(f"{f} ({h}x{w})" for f, h, w in bad[["file", "height", "width"]].values[:10]))
    if check == "std":
        bad = readable[~(readable["std"] > expect.min_std)]
        return f"{plural(len(bad), 'blank image')} (standard deviation <= {expect.min_std}): {_files(bad)}"
    if check in ("size", "channel_count"):
        column, what = ("size", "size (height x width)") if check == "size" else ("channels", "channel count")
        parts = []
        for value, rows in sorted(readable.groupby(column), key=lambda item: -len(item[1])):
            parts.append(f"{value} ({plural(len(rows), 'image')}{': ' + _files(rows, 3) if len(rows) <= 3 else ''})")
        return f"images differ in {what}: " + ", ".join(parts)
    if check == "classes":
        missing = [c for c in classes if c not in counts.index]
        extra = [c for c in counts.index if c not in classes]
        words = [f"class {c!r} has no images" for c in missing]
        words += [f"label {c!r} is not one of the classes {list(classes)} ({plural(int(counts[c]), 'image')})"
                  for c in extra]
        return "; ".join(words)
    if check == "class_in_every_split":
        present = set(table["label_split"])
        missing = [(c, s) for c in classes for s in splits if f"{c}|{s}" not in present]
        return "; ".join(f"class {c!r} has no images in split {s!r}" for c, s in missing)
    if check == "min_images_per_class":
        few = known[known < expect.min_images_per_class]
        return "; ".join(f"class {c!r} has {plural(int(n), 'image')}, fewer than {expect.min_images_per_class}"
                         for c, n in few.items())
    if check == "imbalance":
        if known.empty:
            return "no images at all, so no class balance"
        largest, smallest = known.idxmax(), known.idxmin()
        return (f"classes are imbalanced: the largest, {largest!r}, has {plural(int(known[largest]), 'image')}, the "
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
    table : pd.DataFrame
        From :func:`summarise_class_images`.
    classes : sequence of str
        The class names the dataset must hold (e.g. the class folders).
    expectations : ClassificationExpectations
        Thresholds of the suite.
    data_docs_dir : Path or None, optional
        Where to build Great Expectations' HTML Data Docs; none are built when omitted.
    splits : sequence of str or None, optional
        The splits every class must appear in; by default those the table holds.

    Returns
    -------
    ValidationReport
        Each line of its ``failures`` names the failed expectation, its column and, in plain words, what was
        observed (e.g. ``class 'non_ec' has 40 images, fewer than 50``, or the files found in two splits).
    """
    missing = [c for c in CLASS_IMAGE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks the columns {missing}: build it with summarise_class_images")
    if not classes:
        raise ValueError("no classes given: pass the class names the dataset must hold")
    derived = _with_class_columns(table, classes)
    splits = list(splits) if splits else sorted(table["split"].unique())
    report = run_suite(derived, "classification_dataset",
                        _classification_suite(derived, classes, expectations, splits), data_docs_dir)
    report.failures = explained_failures(
        report, lambda check: _explain_classification(check, derived, classes, expectations, splits))
    return report
