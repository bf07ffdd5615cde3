"""Instance annotations: COCO JSON (polygons and RLE) read as is, and VIA, LabelMe and label images converted to it.

Every reader returns one COCO dict (``images``, ``annotations``, ``categories``) whose ``file_name`` entries are
paths relative to an images folder, so the rest of the pipeline (validation, split, training, evaluation with
pycocotools) sees one format whatever tool the lab annotated with:

- COCO: what CVAT, Labelbox and the project's own datasets write.
- VIA (VGG Image Annotator 2.x, project or export JSON): polygons, rectangles, circles and ellipses.
- LabelMe: one JSON per image; polygons, rectangles and circles; shapes sharing a ``group_id`` are one instance.
- Label images (16- or 32-bit, 0 = background, one value per instance): what Fiji, napari, StarDist and
  Cellpose write; here the nuclei and calcium datasets.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellops.coco import labels_to_coco, segmentation_area, segmentation_bbox
from cellops.io import read_image_file

FORMATS = ("coco", "via", "labelme", "label_images")


class AnnotationError(ValueError):
    """An annotation file that cannot be read; the message names the file and the entry."""


def _load_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from None


def read_coco(path: str | Path) -> dict:
    """A COCO instance-annotation file, checked for the keys the pipeline needs.

    Parameters
    ----------
    path : str or Path
        The JSON file.

    Returns
    -------
    dict
        The COCO dataset.

    Raises
    ------
    AnnotationError
        When the file is missing, not JSON, or lacks a list or key the pipeline needs.

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> _ = open(f, "w").write('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "colony"}]}')
    >>> read_coco(f)["categories"]
    [{'id': 1, 'name': 'colony'}]
    """
    coco = _load_json(Path(path))
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations",
                                                                                   "categories")):
        raise AnnotationError(f"{path}: a COCO file needs the lists 'images', 'annotations' and 'categories'")
    for entry in coco["images"]:
        missing = [k for k in ("id", "file_name", "height", "width") if k not in entry]
        if missing:
            raise AnnotationError(f"{path}: image entry {entry.get('id', entry)!r} lacks {missing}")
    for entry in coco["annotations"]:
        missing = [k for k in ("id", "image_id", "category_id", "segmentation") if k not in entry]
        if missing:
            raise AnnotationError(f"{path}: annotation {entry.get('id', '?')!r} lacks {missing}")
    return _complete(coco)


def _complete(coco: dict) -> dict:
    """Category ids made 1..K (exports from Roboflow or CVAT may start at 0 or have gaps; the model's labels must be
    contiguous with 0 the background), and ``bbox``/``area`` filled in from the segmentation where a file omits
    them. When an annotation has an unknown category nothing is renumbered: validation names it."""
    order = sorted(c["id"] for c in coco["categories"])
    remap = {old: new for new, old in enumerate(order, start=1)}
    if any(a["category_id"] not in remap for a in coco["annotations"]):
        remap = {old: old for old in order}  # unknown categories: left for validation to name, nothing renumbered
    categories = [{**c, "id": remap[c["id"]]} for c in sorted(coco["categories"], key=lambda c: c["id"])]
    sizes = {img["id"]: (img["height"], img["width"]) for img in coco["images"]}
    annotations = []
    for ann in coco["annotations"]:
        ann = {**ann, "category_id": remap.get(ann["category_id"], ann["category_id"])}
        if ("bbox" not in ann or "area" not in ann) and ann["image_id"] in sizes:
            try:
                ann.setdefault("bbox", segmentation_bbox(ann["segmentation"], *sizes[ann["image_id"]]))
                ann.setdefault("area", segmentation_area(ann["segmentation"], *sizes[ann["image_id"]]))
            except Exception:  # an invalid segmentation: validation names it
                pass
        annotations.append(ann)
    return {**coco, "categories": categories, "annotations": annotations}


def _polygon_entry(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    return [float(v) for xy in zip(xs, ys) for v in xy]


def _ellipse_polygon(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0, n: int = 48) -> list[float]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    xr, yr = cx + x * np.cos(theta) - y * np.sin(theta), cy + x * np.sin(theta) + y * np.cos(theta)
    return _polygon_entry(xr, yr)


def _rectangle_polygon(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _builder(categories: Sequence[str] | None):
    """Accumulates images, annotations and categories (ids in order of first appearance, or as given)."""
    images: list[dict] = []
    annotations: list[dict] = []
    names: list[str] = list(categories or [])

    def category_id(name: str, where: str) -> int:
        if name not in names:
            if categories:
                raise AnnotationError(f"{where}: label {name!r} is not among the categories {list(categories)}")
            names.append(name)
        return names.index(name) + 1

    def add_image(file_name: str, height: int, width: int) -> int:
        images.append({"id": len(images) + 1, "file_name": file_name, "height": int(height), "width": int(width)})
        return len(images)

    def add_instance(image_id: int, category: int, polygons: list[list[float]]) -> None:
        xs = [v for p in polygons for v in p[0::2]]
        ys = [v for p in polygons for v in p[1::2]]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)] if xs else [0.0, 0.0, 0.0, 0.0]
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                            "segmentation": polygons, "bbox": bbox, "area": float(bbox[2] * bbox[3]), "iscrowd": 0})

    def result() -> dict:
        # Areas from the polygons themselves, not from the boxes.
        size = {img["id"]: (img["height"], img["width"]) for img in images}
        for ann in annotations:
            if all(len(p) >= 6 for p in ann["segmentation"]) and ann["segmentation"]:
                h, w = size[ann["image_id"]]
                ann["area"] = segmentation_area(ann["segmentation"], h, w)
        return {"images": images, "annotations": annotations,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}

    return category_id, add_image, add_instance, result


def _image_size(images_dir: Path, file_name: str, where: str) -> tuple[int, int]:
    path = images_dir / file_name
    if not path.is_file():
        raise AnnotationError(f"{where}: image {file_name!r} not found in {images_dir}")
    image = read_image_file(path)
    return int(image.shape[0]), int(image.shape[1])


def via_to_coco(path: str | Path, images_dir: str | Path, *, label_attribute: str | None = None,
                categories: Sequence[str] | None = None, default_category: str = "object") -> dict:
    """Convert a VIA 2.x project or export JSON (regions with polygon, rect, circle or ellipse shapes).

    The category of a region is its ``label_attribute`` region attribute (by default its only attribute, or
    ``default_category`` when it has none). VIA stores no image sizes: they are read from ``images_dir``.

    Parameters
    ----------
    path : str or Path
        The VIA JSON file.
    images_dir : str or Path
        The folder of the annotated images.
    label_attribute : str or None, optional
        The region attribute holding the category.
    categories : sequence of str or None, optional
        The allowed category names, in id order; by default in order of first appearance.
    default_category : str, optional
        Category of regions without a label attribute.

    Returns
    -------
    dict
        A COCO dataset with polygon segmentations.

    Raises
    ------
    AnnotationError
        Naming the file, image and region of the first problem.
    """
    path, images_dir = Path(path), Path(images_dir)
    data = _load_json(path)
    if isinstance(data, dict) and "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "filename" in v for v in data.values()):
        raise AnnotationError(f"{path}: not a VIA project or export (expected entries with 'filename' and 'regions')")
    category_id, add_image, add_instance, result = _builder(categories)
    for key, entry in data.items():
        where = f"{path}: {entry['filename']}"
        image_id = add_image(entry["filename"], *_image_size(images_dir, entry["filename"], where))
        regions = entry.get("regions") or []
        for i, region in enumerate(regions.values() if isinstance(regions, dict) else regions):
            shape = region.get("shape_attributes") or {}
            attributes = region.get("region_attributes") or {}
            if label_attribute is not None:
                if label_attribute not in attributes:
                    raise AnnotationError(f"{where}, region {i}: no region attribute {label_attribute!r}")
                name = attributes[label_attribute]
            else:
                name = next(iter(attributes.values())) if len(attributes) == 1 else default_category
            if isinstance(name, dict):  # a checkbox attribute: the first ticked option
                name = next((k for k, v in name.items() if v), default_category)
            name = str(name)
            kind = shape.get("name")
            try:
                if kind == "polygon" or kind == "polyline":
                    polygon = _polygon_entry(shape["all_points_x"], shape["all_points_y"])
                elif kind == "rect":
                    polygon = _rectangle_polygon(shape["x"], shape["y"], shape["x"] + shape["width"],
                                                 shape["y"] + shape["height"])
                elif kind == "circle":
                    polygon = _ellipse_polygon(shape["cx"], shape["cy"], shape["r"], shape["r"])
                elif kind == "ellipse":
                    polygon = _ellipse_polygon(shape["cx"], shape["cy"], shape["rx"], shape["ry"],
                                               float(shape.get("theta", 0.0)))
                else:
                    raise AnnotationError(f"{where}, region {i}: shape {kind!r} is not an area (polygon, rect, "
                                          "circle or ellipse)")
            except KeyError as missing:
                raise AnnotationError(f"{where}, region {i}: {kind} lacks {missing}") from None
            add_instance(image_id, category_id(name, f"{where}, region {i}"), [polygon])
    return result()


def labelme_to_coco(paths: Sequence[str | Path], images_dir: str | Path | None = None, *,
                    categories: Sequence[str] | None = None) -> dict:
    """Convert LabelMe JSON files (one per image). Polygons, rectangles and circles are areas; shapes with the same
    label and ``group_id`` form one instance. Image names are ``imagePath`` relative to ``images_dir`` (by default
    the JSON's folder).

    Parameters
    ----------
    paths : sequence of str or Path
        The LabelMe JSON files.
    images_dir : str or Path or None, optional
        The folder of the annotated images; by default each JSON's own folder.
    categories : sequence of str or None, optional
        The allowed category names, in id order; by default in order of first appearance.

    Returns
    -------
    dict
        A COCO dataset with polygon segmentations.

    Raises
    ------
    AnnotationError
        Naming the file and shape of the first problem.
    """
    category_id, add_image, add_instance, result = _builder(categories)
    for path in sorted(Path(p) for p in paths):
        data = _load_json(path)
        if not isinstance(data, dict) or "shapes" not in data or "imagePath" not in data:
            raise AnnotationError(f"{path}: not a LabelMe file (expected 'shapes' and 'imagePath')")
        image_path = str(data["imagePath"]).replace("\\", "/")  # LabelMe on Windows writes backslashes
        file_name = Path(image_path).name if images_dir is not None else image_path
        root = Path(images_dir) if images_dir is not None else path.parent
        if data.get("imageHeight") and data.get("imageWidth"):
            height, width = int(data["imageHeight"]), int(data["imageWidth"])
        else:
            height, width = _image_size(root, file_name, str(path))
        image_id = add_image(file_name, height, width)
        instances: dict[tuple, list[list[float]]] = {}
        for i, shape in enumerate(data["shapes"]):
            points = np.asarray(shape.get("points") or [], dtype=np.float64).reshape(-1, 2)
            kind = shape.get("shape_type") or "polygon"
            if kind == "polygon":
                polygon = _polygon_entry(points[:, 0], points[:, 1])
            elif kind == "rectangle" and len(points) == 2:
                polygon = _rectangle_polygon(points[0, 0], points[0, 1], points[1, 0], points[1, 1])
            elif kind == "circle" and len(points) == 2:
                radius = float(np.hypot(*(points[1] - points[0])))
                polygon = _ellipse_polygon(points[0, 0], points[0, 1], radius, radius)
            else:
                raise AnnotationError(f"{path}, shape {i}: {kind!r} with {len(points)} points is not an area "
                                      "(polygon, rectangle or circle)")
            group = shape.get("group_id")
            key = (shape.get("label", ""), group if group is not None else f"shape{i}")
            instances.setdefault(key, []).append(polygon)
        for (label, _), polygons in instances.items():
            add_instance(image_id, category_id(str(label), str(path)), polygons)
    return result()


def label_images_to_coco(label_files: dict[str, str | Path], category: str = "object") -> dict:
    """Convert instance label images (0 background, one integer per instance; any integer type) keyed by the file
    name of the image they annotate. Masks are stored as RLE, exactly as drawn.

    Parameters
    ----------
    label_files : dict of str to str or Path
        Image file name to its label image file.
    category : str, optional
        Category name of every instance.

    Returns
    -------
    dict
        A COCO dataset with RLE segmentations.

    Raises
    ------
    AnnotationError
        When a label image is not 2-D integers.
    """
    labels = {}
    for name, path in label_files.items():
        image = read_image_file(path)
        if image.ndim != 2 or image.dtype.kind not in "ui":
            raise AnnotationError(f"{path}: a label image must be 2-D integers, got {image.dtype} {image.shape}")
        labels[name] = image
    return labels_to_coco(labels, category=category)


def load_annotations(format: str, path: str | Path, images_dir: str | Path, *,
                     label_suffix: str = "_labels.tif", category: str = "object",
                     categories: Sequence[str] | None = None, label_attribute: str | None = None) -> dict:
    """One entry point for every format (``format`` in :data:`FORMATS`); returns COCO with file names relative to
    ``images_dir``.

    - ``coco``/``via``: ``path`` is the JSON file.
    - ``labelme``: ``path`` is a folder of LabelMe JSON files.
    - ``label_images``: ``images_dir`` holds images and, next to each, ``<stem><label_suffix>`` (searched
      recursively, so group folders work); ``path`` is unused.

    Parameters
    ----------
    format : str
        One of :data:`FORMATS`.
    path : str or Path
        The annotation file or folder (see above).
    images_dir : str or Path
        The folder of the annotated images.
    label_suffix : str, optional
        Ending of label image names (``label_images``).
    category : str, optional
        Category of label images and of VIA regions without a label attribute.
    categories : sequence of str or None, optional
        VIA and LabelMe: the allowed category names, in id order.
    label_attribute : str or None, optional
        VIA: the region attribute holding the category.

    Returns
    -------
    dict
        A COCO dataset, file names relative to ``images_dir``.

    Raises
    ------
    AnnotationError
        For an unknown format, missing files or a malformed annotation.
    """
    images_dir = Path(images_dir)
    if format == "coco":
        return read_coco(path)
    if format == "via":
        return via_to_coco(path, images_dir, label_attribute=label_attribute, categories=categories,
                           default_category=category)
    if format == "labelme":
        files = sorted(Path(path).glob("*.json"))
        if not files:
            raise AnnotationError(f"{path}: no LabelMe .json files")
        return labelme_to_coco(files, images_dir, categories=categories)
    if format == "label_images":
        pairs = {}
        for label_file in sorted(images_dir.rglob(f"*{label_suffix}")):
            stem = label_file.name[: -len(label_suffix)]
            matches = [p for p in label_file.parent.glob(f"{glob.escape(stem)}.*") if p != label_file]
            if len(matches) != 1:
                raise AnnotationError(f"{label_file}: expected one image named {stem}.* next to it, found "
                                      f"{[p.name for p in matches]}")
            pairs[str(matches[0].relative_to(images_dir))] = label_file
        if not pairs:
            raise AnnotationError(f"{images_dir}: no label images ending in {label_suffix!r}")
        return label_images_to_coco(pairs, category=category)
    raise AnnotationError(f"unknown annotation format {format!r}; choose one of {list(FORMATS)}")
