"""The Great Expectations suite over instance annotations, before any Mask R-CNN training.

Each image of the (COCO) annotations becomes one table row: whether its file exists, reads and has the size the
annotations say, how many instances it has, and how many of its annotations have an unknown category, an invalid
geometry, coordinates outside the image, a box that disagrees with the mask, or an id used twice. The suite then
checks the table; each failure is explained in plain words, naming the images and annotation ids.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellops.config import FromMapping
from cellops.validation import ValidationReport, explained_failures, gx, run_suite, tagged


@dataclass(frozen=True)
class AnnotationExpectations(FromMapping):
    """Thresholds of the annotation suite (from the YAML config).

    Attributes
    ----------
    min_images : int, optional
        Images the dataset must have.
    min_instances_per_image : int, optional
        Fewest instances an image may have.
    max_instances_per_image : int, optional
        Most instances an image may have.
    min_box_iou : float, optional
        A given ``bbox`` must overlap the box of its mask by at least this IoU.
    outside_tolerance : float, optional
        Polygon coordinates may lie this many pixels outside the image (annotation tools round).
    """

    min_images: int = 3
    min_instances_per_image: int = 0
    max_instances_per_image: int = 1000
    min_box_iou: float = 0.7
    outside_tolerance: float = 1.0


#: check name -> (column, what a passing row holds); the order is the suite's.
CHECKS = ("file_exists", "readable", "size_matches", "duplicate_image_id", "instances", "unknown_category",
          "invalid_geometry", "outside_image", "box_mismatch", "duplicate_annotation_id", "duplicate_across_splits")


def _box_iou(a: list[float], b: list[float]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0.0, min(ax1, bx1) - max(a[0], b[0])), max(0.0, min(ay1, by1) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    return iw * ih / union if union > 0 else 0.0


def _geometry_problem(segmentation, height: int, width: int, tolerance: float) -> tuple[str | None, str | None]:
    """(invalid geometry, outside the image) descriptions of one segmentation, None where fine."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "no polygon", None
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                return f"a polygon needs at least 3 (x, y) points, got {len(polygon) if isinstance(polygon, list) else polygon!r} numbers", None
            xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
            if not np.isfinite(xy).all():
                return "polygon has non-finite coordinates", None
            x, y = xy[:, 0], xy[:, 1]
            if abs(0.5 * np.sum(x * np.roll(y, 1) - np.roll(x, 1) * y)) < 1e-9:
                return "polygon has zero area", None
            if x.min() < -tolerance or y.min() < -tolerance or x.max() > width + tolerance or y.max() > height + tolerance:
                return None, (f"polygon spans x {x.min():.1f}..{x.max():.1f}, y {y.min():.1f}..{y.max():.1f}, outside "
                              f"the {width}x{height} image")
        return None, None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(v) for v in segmentation["size"]] != [height, width]:
            return None, f"RLE size {segmentation['size']} is not the image's [{height}, {width}]"
        return None, None
    return f"segmentation is neither polygons nor RLE: {str(segmentation)[:60]}", None


def summarise_annotations(coco: dict, images_dir: str | Path, index: dict,
                          expectations: AnnotationExpectations) -> pd.DataFrame:
    """One row per image of ``coco`` (plus one per unknown image id that annotations refer to), with the columns
    the suite checks and a ``problems`` column (JSON list of ``check: detail``) the failure messages quote.
    ``index`` is :func:`cellops.maskrcnn.data.split_images`'s (paths, content hashes and splits).

    Parameters
    ----------
    coco : dict
        The COCO dataset.
    images_dir : str or Path
        The folder its file names are relative to.
    index : dict
        The dataset index (image ids, content hashes, splits).
    expectations : AnnotationExpectations
        Thresholds the per-image columns are computed against.

    Returns
    -------
    pd.DataFrame
        One row per image: ``file``, ``image_id``, ``split``, one column per check of :data:`CHECKS` and
        ``problems``.
    """
    from cellops.io import ImageInputError, read_image_file, to_unit_range
    from cellops.coco import segmentation_mask
    from cellops.maskrcnn.predict import as_picture

    images_dir = Path(images_dir)
    categories = {c["id"] for c in coco["categories"]}
    image_ids = Counter(img["id"] for img in coco["images"])
    annotation_ids = Counter(a.get("id") for a in coco["annotations"])
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    split_of = dict(zip(index["image_ids"], index["splits"]))
    md5_of = dict(zip(index["image_ids"], index["md5"]))
    splits_of_hash: dict[str, set] = {}
    for image_id, digest in md5_of.items():
        splits_of_hash.setdefault(digest, set()).add(split_of[image_id])
    rows = []
    for img in coco["images"]:
        path = images_dir / img["file_name"]
        problems: list[str] = []
        row = {"file": str(img["file_name"]), "image_id": img["id"], "split": split_of.get(img["id"], ""),
               "file_exists": path.is_file(), "readable": None, "size_matches": None,
               "duplicate_image_id": image_ids[img["id"]] > 1}
        # A check that cannot be made (no file, an unreadable one) stays None: GX skips it, so one fault is one failure.
        if not row["file_exists"]:
            problems.append(f"file_exists: {img['file_name']} is not in {images_dir}")
        else:
            try:
                image = as_picture(read_image_file(path), source=str(img["file_name"]))
                to_unit_range(image)  # a pixel type the model can take
                shape = image.shape
                row["readable"] = True
                row["size_matches"] = tuple(shape[:2]) == (img["height"], img["width"])
                if not row["size_matches"]:
                    problems.append(f"size_matches: {img['file_name']} is {shape[1]}x{shape[0]}, the annotations say "
                                    f"{img['width']}x{img['height']}")
            except ImageInputError as error:
                row["readable"] = False
                problems.append(f"readable: {error}")
        if row["duplicate_image_id"]:
            others = [i["file_name"] for i in coco["images"] if i["id"] == img["id"] and i is not img]
            problems.append(f"duplicate_image_id: {img['file_name']} has image id {img['id']}, also used by {others}")
        counts = Counter()
        annotations = by_image.get(img["id"], [])
        for ann in annotations:
            where = f"{img['file_name']} annotation {ann.get('id')}"
            if ann["category_id"] not in categories:
                counts["unknown_category"] += 1
                problems.append(f"unknown_category: {where} has category {ann['category_id']}, not among "
                                f"{sorted(categories)}")
            invalid, outside = _geometry_problem(ann["segmentation"], img["height"], img["width"],
                                                 expectations.outside_tolerance)
            if invalid is None and outside is None:
                mask = segmentation_mask(ann["segmentation"], img["height"], img["width"])
                if not mask.any():
                    invalid = "mask is empty"
                elif ann.get("bbox") is not None:
                    ys, xs = np.nonzero(mask)
                    mask_box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                float(ys.max() - ys.min() + 1)]
                    iou = _box_iou([float(v) for v in ann["bbox"]], mask_box)
                    if iou < expectations.min_box_iou:
                        counts["box_mismatch"] += 1
                        problems.append(f"box_mismatch: {where} has bbox {ann['bbox']} but its mask spans "
                                        f"{mask_box} (IoU {iou:.2f})")
            if invalid is not None:
                counts["invalid_geometry"] += 1
                problems.append(f"invalid_geometry: {where}: {invalid}")
            if outside is not None:
                counts["outside_image"] += 1
                problems.append(f"outside_image: {where}: {outside}")
            if annotation_ids[ann.get("id")] > 1:
                counts["duplicate_annotation_id"] += 1
                problems.append(f"duplicate_annotation_id: {where}: id used by {annotation_ids[ann.get('id')]} "
                                "annotations")
        n = sum(1 for a in annotations if not a.get("iscrowd", 0))
        if not expectations.min_instances_per_image <= n <= expectations.max_instances_per_image:
            problems.append(f"instances: {img['file_name']} has {n} instances, outside "
                            f"[{expectations.min_instances_per_image}, {expectations.max_instances_per_image}]")
        digest = md5_of.get(img["id"], "")
        across = len(splits_of_hash.get(digest, set())) > 1
        if across:
            twins = [i["file_name"] for i in coco["images"] if md5_of.get(i["id"]) == digest]
            problems.append(f"duplicate_across_splits: {img['file_name']} is the same picture as {twins} in "
                            f"splits {sorted(splits_of_hash[digest])}")
        rows.append({**row, "instances": n, **{c: counts[c] for c in ("unknown_category", "invalid_geometry",
                                                                      "outside_image", "box_mismatch",
                                                                      "duplicate_annotation_id")},
                     "duplicate_across_splits": across, "problems": json.dumps(problems)})
    for image_id in sorted(set(by_image) - set(image_ids)):
        ids = [a.get("id") for a in by_image[image_id]]
        rows.append({"file": "", "image_id": image_id, "split": "", "file_exists": False, "readable": None,
                     "size_matches": None, "duplicate_image_id": False, "instances": len(ids),
                     "unknown_category": 0, "invalid_geometry": 0, "outside_image": 0, "box_mismatch": 0,
                     "duplicate_annotation_id": 0, "duplicate_across_splits": False,
                     "problems": json.dumps([f"file_exists: annotations {ids[:10]} refer to image id {image_id}, "
                                             "which is not in 'images'"])})
    return pd.DataFrame(rows)


def _suite(expect: AnnotationExpectations) -> list:
    e = gx.expectations
    zero = dict(min_value=0, max_value=0)
    checks = [
        ("file_exists", e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True])),
        ("readable", e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True])),
        ("size_matches", e.ExpectColumnValuesToBeInSet(column="size_matches", value_set=[True])),
        ("duplicate_image_id", e.ExpectColumnValuesToBeInSet(column="duplicate_image_id", value_set=[False])),
        ("instances", e.ExpectColumnValuesToBeBetween(column="instances", min_value=expect.min_instances_per_image,
                                                      max_value=expect.max_instances_per_image)),
        *[(c, e.ExpectColumnValuesToBeBetween(column=c, **zero)) for c in
          ("unknown_category", "invalid_geometry", "outside_image", "box_mismatch", "duplicate_annotation_id")],
        ("duplicate_across_splits", e.ExpectColumnValuesToBeInSet(column="duplicate_across_splits",
                                                                  value_set=[False])),
    ]
    return tagged([("min_images", e.ExpectTableRowCountToBeBetween(min_value=expect.min_images)), *checks])


def validate_annotation_dataset(table: pd.DataFrame, expectations: AnnotationExpectations,
                                data_docs_dir: Path | None = None) -> ValidationReport:
    """Run the annotation suite on a :func:`summarise_annotations` table. Each line of ``failures`` names the
    expectation, its column and the first offending images and annotations in plain words.

    Parameters
    ----------
    table : pd.DataFrame
        From :func:`summarise_annotations`.
    expectations : AnnotationExpectations
        Thresholds of the suite.
    data_docs_dir : Path or None, optional
        Where to build Great Expectations' HTML Data Docs; none are built when omitted.

    Returns
    -------
    ValidationReport
        The suite's results with explained ``failures``.
    """
    report = run_suite(table.drop(columns=["problems"]), "instance_annotations", _suite(expectations), data_docs_dir)
    problems = [p for cell in table["problems"] for p in json.loads(cell)]

    def explain(check: str) -> str:
        if check == "min_images":
            return f"{len(table)} images, at least {expectations.min_images} needed"
        found = [p.split(": ", 1)[1] for p in problems if p.startswith(f"{check}: ")]
        more = f" (and {len(found) - 10} more)" if len(found) > 10 else ""
        return "; ".join(found[:10]) + more

    report.failures = explained_failures(report, explain)
    return report
