"""Review sets: a model's predictions on new images, laid out for a person to correct, most uncertain first.

``cellops review export`` writes one folder per review; the napari widget (:mod:`cellops_napari`) or any editor
writes the corrections into it; ``cellops corrections import`` (:mod:`cellops.corrections`) turns them into a new
version of the family's dataset. The folder is plain files, so a team can also correct in CVAT, Label Studio or
VIA (COCO in, COCO out) and drop the result into ``corrections/``::

    review.json     the family, the model version that predicted, one entry per image
    queue.csv       id, image, uncertainty, rank: the order to review in (most uncertain first)
    images/         the images, copied byte for byte
    predictions/    <id>_labels.ome.tif (U-Net: 0/1 mask; Mask R-CNN: instance ids), predictions.json
                    (Mask R-CNN, COCO), predictions.csv (classifier: label and probabilities)
    corrections/    <id>.json (status, annotator, time, model, label) and <id>_labels.ome.tif

A correction is ``corrected`` (the label image or label given), ``accepted`` (the prediction is right) or
``empty`` (the image holds no object).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cellops.batch import _suffix

FORMAT = "cellops-review"
FORMAT_VERSION = 1
#: What a correction can say about a prediction.
STATUSES = ("corrected", "accepted", "empty")
#: The families whose predictions are label images (the classifier's are labels).
SEGMENTATION_FAMILIES = ("unet", "maskrcnn")
FAMILIES = ("unet", "maskrcnn", "classifier")
REVIEW_FILE = "review.json"
QUEUE_FILE = "queue.csv"


class ReviewError(ValueError):
    """A review set, or a correction written into one, that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ReviewPrediction:
    """One image's prediction as the exporter hands it to :func:`write_review_set`.

    Attributes
    ----------
    source : Path
        The image file (copied into the set).
    uncertainty : float
        The image's uncertainty (:class:`cellops.uncertainty.Uncertainty.image`), in [0, 1].
    labels : np.ndarray, optional
        Segmentation families: the predicted label image (U-Net 0/1, Mask R-CNN instance ids), 2-D or 3-D.
    label : str, optional
        Classifier: the predicted class.
    probabilities : mapping, optional
        Classifier: the probability of each class.
    categories : mapping, optional
        Mask R-CNN: the category name of each instance id in ``labels``.
    object_uncertainty : sequence of float
        Mask R-CNN: the uncertainty of each instance (ids 1, 2, ... in order).
    pixel_size_um : float, optional
        The image's pixel size, written into the prediction's OME-TIFF.
    method : str
        How the uncertainty was measured (:attr:`cellops.uncertainty.Uncertainty.method`).
    """

    source: Path
    uncertainty: float
    labels: np.ndarray | None = None
    label: str | None = None
    probabilities: Mapping[str, float] | None = None
    categories: Mapping[int, str] | None = None
    object_uncertainty: Sequence[float] = ()
    pixel_size_um: float | None = None
    method: str = ""


@dataclass(frozen=True)
class ReviewItem:
    """One image of a review set, as ``review.json`` lists it.

    Attributes
    ----------
    id : str
        The item's name in the set (the image's stem, made unique).
    image : str
        The image, relative to the set.
    sha256 : str
        The image's content hash (a correction belongs to exactly these bytes).
    shape : tuple of int
        The shape a label image of this item has (the image's, without colour samples).
    uncertainty : float
        The image's uncertainty when predicted.
    prediction : str or None
        Segmentation families: the predicted label image, relative to the set.
    label : str or None
        Classifier: the predicted class.
    probabilities : dict or None
        Classifier: the probability of each class.
    objects : int or None
        Segmentation families: objects predicted (U-Net: connected components).
    categories : dict or None
        Mask R-CNN: the category of each predicted instance id.
    source : str
        The file the image was copied from.
    """

    id: str
    image: str
    sha256: str
    shape: tuple[int, ...]
    uncertainty: float
    prediction: str | None = None
    label: str | None = None
    probabilities: dict | None = None
    objects: int | None = None
    categories: dict | None = None
    object_uncertainty: list[float] = field(default_factory=list)
    source: str = ""

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "ReviewItem":
        """The item of one ``items`` entry of ``review.json``."""
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        known["shape"] = tuple(int(n) for n in known.get("shape", ()))
        return cls(**known)


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_bytes(b"abc")
    >>> sha256_of(p)[:12]
    'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def item_ids(files: Sequence[Path]) -> list[str]:
    """Distinct item ids for the files of one review: the file's stem (without ``.ome``), letters, digits,
    ``-``, ``_`` and ``.`` only; a repeated stem gets ``-2``, ``-3``... in the given order.

    Examples
    --------
    >>> item_ids([Path("a/n0.ome.tif"), Path("b/n0.tif"), Path("x y.png")])
    ['n0', 'n0-2', 'x_y']
    """
    ids, seen = [], set()
    for path in files:
        name = Path(path).name
        stem = name[: len(name) - len(_suffix(Path(name)))] or name
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "image"
        candidate, n = base, 1
        while candidate in seen:
            n += 1
            candidate = f"{base}-{n}"
        seen.add(candidate)
        ids.append(candidate)
    return ids


def _write_json(path: Path, values: object) -> None:
    """Write JSON beside ``path`` and rename it into place: a reader never sees half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump(values, stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.replace(temporary, path)


def _label_axes(labels: np.ndarray) -> str:
    return "YX" if labels.ndim == 2 else "ZYX"


def _storable_labels(labels: np.ndarray, family: str) -> np.ndarray:
    return labels.astype(np.uint8) if family == "unet" else labels.astype(np.uint16 if labels.max(initial=0) < 65536
                                                                           else np.uint32)


def write_review_set(out_dir: str | Path, *, family: str, model: Mapping[str, object], uncertainty_method: str,
                     predictions: Sequence[ReviewPrediction], classes: Sequence[str] | None = None,
                     categories: Mapping[int, str] | None = None, channel: str | int | None = None,
                     scene: str | int | None = None) -> "ReviewSet":
    """Write a review set of ``predictions`` into the new folder ``out_dir``.

    The images are copied byte for byte, the predictions written as editable annotations (OME-TIFF label images,
    COCO for Mask R-CNN, a CSV for the classifier) and the queue ordered by uncertainty, most uncertain first.
    The folder is built beside its destination and renamed into place.

    Parameters
    ----------
    out_dir : str or Path
        The review set's folder; must not exist yet, or be empty.
    family : str
        ``unet``, ``maskrcnn`` or ``classifier``.
    model : mapping
        The model version that predicted: ``name``, ``version`` and optionally ``uri``, ``run_id``.
    uncertainty_method : str
        How the uncertainty was measured (:attr:`cellops.uncertainty.Uncertainty.method`).
    predictions : sequence of ReviewPrediction
        One per image.
    classes : sequence of str, optional
        Classifier: its classes.
    categories : mapping, optional
        Mask R-CNN: category id -> name.
    channel, scene : str or int, optional
        What was read from multi-channel or multi-scene files (the widget reads the same).

    Returns
    -------
    ReviewSet
        The set written.

    Raises
    ------
    ReviewError
        For an existing non-empty folder, an unknown family, no predictions, or a prediction that does not fit it.
    """
    out_dir = Path(out_dir)
    if family not in FAMILIES:
        raise ReviewError(f"unknown model family {family!r}; review sets are made for {', '.join(FAMILIES)}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ReviewError(f"{out_dir}: exists and is not an empty folder; a review set is written into a new folder "
                          "(its corrections are never overwritten)")
    if not predictions:
        raise ReviewError("no images to review")
    if not model.get("name") or not model.get("version"):
        raise ReviewError(f"the model version that predicted must be named (name and version), got {dict(model)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".building"))
    try:
        entries = _write_items(building, family, predictions)
        _write_family_files(building, family, entries, predictions, classes, categories)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "family": family,
            "model": {key: (str(value) if value is not None else None) for key, value in model.items()},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "uncertainty": uncertainty_method, "channel": channel, "scene": scene,
            "items": [asdict(entry) | {"shape": list(entry.shape)} for entry in entries],
        }
        if classes is not None:
            manifest["classes"] = list(classes)
        if categories is not None:
            manifest["categories"] = {str(key): str(name) for key, name in categories.items()}
        (building / "corrections").mkdir()
        _write_json(building / REVIEW_FILE, manifest)
        _write_queue(building, entries)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return ReviewSet.open(out_dir)


def _write_items(folder: Path, family: str, predictions: Sequence[ReviewPrediction]) -> list[ReviewItem]:
    from cellops.microscopy import open_image, write_ome_tiff

    (folder / "images").mkdir()
    (folder / "predictions").mkdir()
    entries = []
    for item_id, prediction in zip(item_ids([p.source for p in predictions]), predictions):
        source = Path(prediction.source)
        image = f"images/{item_id}{_suffix(source)}"
        shutil.copyfile(source, folder / image)
        labels_path, objects, label_categories = None, None, None
        if family in SEGMENTATION_FAMILIES:
            if prediction.labels is None:
                raise ReviewError(f"{source}: a {family} prediction needs its label image")
            labels = np.asarray(prediction.labels)
            shape = tuple(labels.shape)
            labels_path = f"predictions/{item_id}_labels.ome.tif"
            write_ome_tiff(folder / labels_path, _storable_labels(labels, family), axes=_label_axes(labels),
                           pixel_size_um=prediction.pixel_size_um)
            objects = int(_count_objects(labels, family))
            if family == "maskrcnn":
                label_categories = {str(key): str(name) for key, name in (prediction.categories or {}).items()}
        else:
            if prediction.label is None:
                raise ReviewError(f"{source}: a classifier prediction needs its label")
            shape = tuple(open_image(source).data.shape[:2])
        entries.append(ReviewItem(
            id=item_id, image=image, sha256=sha256_of(source), shape=shape,
            uncertainty=round(float(prediction.uncertainty), 6), prediction=labels_path, label=prediction.label,
            probabilities=({k: round(float(v), 6) for k, v in prediction.probabilities.items()}
                           if prediction.probabilities is not None else None),
            objects=objects, categories=label_categories,
            object_uncertainty=[round(float(u), 6) for u in prediction.object_uncertainty], source=str(source)))
    return entries


def _count_objects(labels: np.ndarray, family: str) -> int:
    if family == "unet":
        from scipy import ndimage

        return int(ndimage.label(labels > 0)[1])
    return int(len(np.unique(labels[labels > 0])))


def _write_family_files(folder: Path, family: str, entries: list[ReviewItem], predictions: Sequence[ReviewPrediction],
                        classes: Sequence[str] | None, categories: Mapping[int, str] | None) -> None:
    if family == "maskrcnn":
        from cellops.coco import label_annotations

        names = {int(k): str(v) for k, v in (categories or {1: "object"}).items()}
        ids = {name: key for key, name in names.items()}
        coco = {"images": [], "annotations": [],
                "categories": [{"id": key, "name": name} for key, name in sorted(names.items())]}
        for image_id, (entry, prediction) in enumerate(zip(entries, predictions), start=1):
            labels = np.asarray(prediction.labels)
            coco["images"].append({"id": image_id, "file_name": Path(entry.image).name, "height": int(labels.shape[0]),
                                   "width": int(labels.shape[1])})
            category_of = {int(instance): ids.get(name, min(names))
                           for instance, name in (prediction.categories or {}).items()}
            found = label_annotations(labels, image_id, first_id=len(coco["annotations"]) + 1,
                                      category_of=category_of, default_category=min(names))
            for annotation, instance in zip(found, np.unique(labels[labels > 0])):
                annotation["instance_id"] = int(instance)  # the id in the label image
            coco["annotations"] += found
        _write_json(folder / "predictions" / "predictions.json", coco)
    if family == "classifier":
        classes = list(classes or [])
        with open(folder / "predictions" / "predictions.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["id", "image", "label", "uncertainty"] + [f"p_{name}" for name in classes])
            for entry in entries:
                writer.writerow([entry.id, entry.image, entry.label, entry.uncertainty]
                                + [(entry.probabilities or {}).get(name, "") for name in classes])


def review_order(entries: Sequence[ReviewItem]) -> list[ReviewItem]:
    """The items in review order: most uncertain first, ties by id.

    Examples
    --------
    >>> items = [ReviewItem("a", "images/a.tif", "", (2, 2), 0.1), ReviewItem("b", "images/b.tif", "", (2, 2), 0.7)]
    >>> [item.id for item in review_order(items)]
    ['b', 'a']
    """
    return sorted(entries, key=lambda item: (-item.uncertainty, item.id))


def _write_queue(folder: Path, entries: Sequence[ReviewItem]) -> None:
    with open(folder / QUEUE_FILE, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "image", "uncertainty", "rank"])
        for rank, entry in enumerate(review_order(entries), start=1):
            writer.writerow([entry.id, entry.image, entry.uncertainty, rank])


class ReviewSet:
    """A review set on disk (see the module's docstring): its items, queue and corrections.

    Examples
    --------
    ``ReviewSet.open("review/")``, then ``next_item()``, ``read_image(id)``, ``read_prediction(id)`` and
    ``save_correction(id, status="corrected", annotator="ana", labels=edited)``.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.family: str = manifest["family"]
        self.model: dict = dict(manifest["model"])
        self.classes: list[str] = list(manifest.get("classes") or [])
        self.categories: dict[int, str] = {int(k): v for k, v in (manifest.get("categories") or {}).items()}
        self.items: dict[str, ReviewItem] = {}
        for values in manifest["items"]:
            item = ReviewItem.from_dict(values)
            self.items[item.id] = item
        self.queue: list[str] = [item.id for item in review_order(list(self.items.values()))]

    @classmethod
    def open(cls, path: str | Path) -> "ReviewSet":
        """Open the review set in folder ``path``.

        Raises
        ------
        ReviewError
            When ``path`` holds no review set, or one of another format or version.
        """
        path = Path(path)
        manifest_path = path / REVIEW_FILE
        if not manifest_path.is_file():
            raise ReviewError(f"{path}: not a review set (no {REVIEW_FILE}; make one with `cellops review export`)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise ReviewError(f"{manifest_path}: unreadable ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ReviewError(f"{manifest_path}: not a cellops review set (format {manifest.get('format')!r})"
                              if isinstance(manifest, dict) else f"{manifest_path}: not a cellops review set")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ReviewError(f"{manifest_path}: review-set format version {manifest.get('format_version')!r}; this "
                              f"cellops reads version {FORMAT_VERSION}")
        if manifest.get("family") not in FAMILIES or not isinstance(manifest.get("items"), list):
            raise ReviewError(f"{manifest_path}: no family or items")
        return cls(path, manifest)

    @property
    def model_version(self) -> str:
        """``NAME:VERSION`` of the model that made the predictions."""
        return f"{self.model.get('name')}:{self.model.get('version')}"

    def _item(self, item_id: str) -> ReviewItem:
        if item_id not in self.items:
            raise ReviewError(f"{item_id!r} is not an image of the review set {self.path} "
                              f"({len(self.items)} images: {', '.join(list(self.items)[:5])}"
                              f"{'...' if len(self.items) > 5 else ''})")
        return self.items[item_id]

    def read_image(self, item_id: str) -> np.ndarray:
        """The item's image as the model read it (the review's channel and scene): 2-D, 3-D, or YX + colour."""
        from cellops.microscopy import open_image

        image = open_image(self.path / self._item(item_id).image, channel=self.manifest.get("channel"),
                           scene=self.manifest.get("scene"))
        return image.data

    def read_prediction(self, item_id: str) -> np.ndarray | None:
        """The predicted label image of a segmentation item (None for the classifier)."""
        item = self._item(item_id)
        return None if item.prediction is None else _read_labels(self.path / item.prediction)

    def correction_path(self, item_id: str) -> Path:
        """Where the correction record of ``item_id`` is written."""
        return self.path / "corrections" / f"{self._item(item_id).id}.json"

    def correction(self, item_id: str) -> dict | None:
        """The saved correction record of ``item_id``, or None."""
        path = self.correction_path(item_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as error:
            raise ReviewError(f"{path}: unreadable correction ({error})") from None

    def read_correction_labels(self, item_id: str) -> np.ndarray | None:
        """The corrected label image of ``item_id`` (None when its correction has none)."""
        record = self.correction(item_id)
        if not record or not record.get("labels"):
            return None
        return _read_labels(self.path / "corrections" / record["labels"])

    def next_item(self, after: str | None = None) -> str | None:
        """The first item of the queue (after ``after``, when given, wrapping round) without a correction."""
        order = self.queue
        if after is not None and after in order:
            start = order.index(after) + 1
            order = order[start:] + order[:start]
        return next((item_id for item_id in order if self.correction(item_id) is None), None)

    def progress(self) -> tuple[int, int]:
        """(items with a correction, items)."""
        return sum(self.correction(item_id) is not None for item_id in self.items), len(self.items)

    def save_correction(self, item_id: str, *, status: str, annotator: str, labels: np.ndarray | None = None,
                        label: str | None = None, categories: Mapping[int, str] | None = None) -> Path:
        """Check and save a person's verdict on one item's prediction (again: replaces the earlier one).

        Parameters
        ----------
        item_id : str
            The item.
        status : str
            ``corrected`` (give ``labels`` or ``label``), ``accepted`` (the prediction is right) or ``empty``
            (segmentation: the image holds no object).
        annotator : str
            Who decided.
        labels : np.ndarray, optional
            Segmentation: the corrected label image, the item's shape (U-Net 0/1; Mask R-CNN instance ids).
        label : str, optional
            Classifier: the right class.
        categories : mapping, optional
            Mask R-CNN with several categories: the category of each instance id.

        Returns
        -------
        Path
            The correction record written.

        Raises
        ------
        ReviewError
            Naming the item and what is wrong: unknown item or status, no annotator, a label image of another
            shape or with ids the family does not have, an empty one not marked empty, an unknown class.
        """
        item = self._item(item_id)
        if status not in STATUSES:
            raise ReviewError(f"{item_id}: status {status!r}; a correction is one of {', '.join(STATUSES)}")
        if not str(annotator or "").strip():
            raise ReviewError(f"{item_id}: say who corrected it (annotator)")
        record: dict = {"item": item.id, "status": status, "annotator": str(annotator).strip(),
                        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "model": {"name": self.model.get("name"), "version": self.model.get("version")},
                        "image_sha256": item.sha256, "labels": None, "label": None}
        labels_file = None
        if self.family == "classifier":
            if status == "empty":
                raise ReviewError(f"{item_id}: a classifier image is never empty; choose its class")
            chosen = item.label if status == "accepted" else label
            if chosen not in self.classes:
                raise ReviewError(f"{item_id}: class {chosen!r} is not one of the model's classes "
                                  f"({', '.join(self.classes)})")
            record["label"] = chosen
        else:
            if status == "accepted":
                labels = self.read_prediction(item_id)
            elif status == "empty":
                labels = np.zeros(item.shape, np.uint8) if labels is None else labels
            if labels is None:
                raise ReviewError(f"{item_id}: a corrected {self.family} prediction needs its label image")
            labels = check_labels(np.asarray(labels), item, self.family, status, where=item_id)
            if categories is not None:
                unknown = sorted(set(categories.values()) - set(self.categories.values()))
                if unknown:
                    raise ReviewError(f"{item_id}: unknown categories {unknown}; the model's are "
                                      f"{sorted(self.categories.values())}")
                record["categories"] = {str(int(k)): str(v) for k, v in categories.items()}
            labels_file = f"{item.id}_labels.ome.tif"
            record["labels"] = labels_file
        from cellops.microscopy import write_ome_tiff

        folder = self.path / "corrections"
        folder.mkdir(exist_ok=True)
        if labels_file is not None:
            write_ome_tiff(folder / labels_file, _storable_labels(labels, self.family), axes=_label_axes(labels),
                           overwrite=True)
        path = self.correction_path(item_id)
        _write_json(path, record)
        return path


def check_labels(labels: np.ndarray, item: ReviewItem, family: str, status: str, *, where: str) -> np.ndarray:
    """A corrected label image as the family stores it, or the reason it cannot be one.

    Parameters
    ----------
    labels : np.ndarray
        The label image.
    item : ReviewItem
        The item it corrects (its shape).
    family : str
        ``unet`` (ids 0 and 1; 255 is read as 1, as masks are often saved) or ``maskrcnn`` (instance ids).
    status : str
        ``empty`` requires no object; any other status at least one.
    where : str
        Names the correction in messages (file or item).

    Returns
    -------
    np.ndarray
        The labels (U-Net: 0/1 uint8).

    Raises
    ------
    ReviewError
        Another shape, a non-integer or negative image, ids the family does not have, objects in an image marked
        empty, or no object in one not marked empty.

    Examples
    --------
    >>> item = ReviewItem("a", "images/a.tif", "", (2, 3), 0.5)
    >>> check_labels(np.array([[0, 255, 0], [0, 0, 0]]), item, "unet", "corrected", where="a").tolist()
    [[0, 1, 0], [0, 0, 0]]
    """
    if tuple(labels.shape) != tuple(item.shape):
        raise ReviewError(f"{where}: label image of shape {tuple(labels.shape)}, but its image "
                          f"{item.image} is {tuple(item.shape)}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ReviewError(f"{where}: label image of {labels.dtype} values; label ids are integers")
    if labels.size and labels.min() < 0:
        raise ReviewError(f"{where}: negative label id {int(labels.min())}")
    if family == "unet":
        ids = set(np.unique(labels).tolist())
        if not ids <= {0, 1} and not ids <= {0, 255}:
            raise ReviewError(f"{where}: label ids {sorted(ids - {0, 1})} in a mitochondria mask; it has 0 "
                              "(background) and 1 (mitochondria) only")
        labels = (labels > 0).astype(np.uint8)
    has_objects = bool(labels.any())
    if status == "empty" and has_objects:
        raise ReviewError(f"{where}: marked empty but its label image has objects")
    if status != "empty" and not has_objects:
        raise ReviewError(f"{where}: the label image has no object; mark the image empty if it truly holds none")
    return labels


def _read_labels(path: Path) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise ReviewError(f"{path}: missing label image")
    try:
        return tifffile.imread(path)
    except Exception as error:  # tifffile raises many kinds on damaged files
        raise ReviewError(f"{path}: unreadable label image ({error})") from None


def save_annotations(review: ReviewSet, format: str, path: str | Path, *, annotator: str,
                     categories: Sequence[str] | None = None, label_attribute: str | None = None) -> dict[str, list[str]]:
    """Save corrections made in another annotation tool (CVAT, Label Studio, VIA, LabelMe): each annotated image's
    objects become its corrected label image (U-Net: their union as the mask), checked like any correction.

    Start the tool from ``predictions/predictions.json`` (COCO) and the ``images/`` folder, export COCO, VIA or
    LabelMe, and give the export here. Images the export names by file name (``<id>.tif``) must be images of the
    set; images it holds without any object are left unreviewed (mark truly empty ones in napari or by a record).

    Parameters
    ----------
    review : ReviewSet
        A review set of a segmentation family.
    format : str
        ``coco``, ``via`` or ``labelme`` (:func:`cellops.maskrcnn.annotations.load_annotations`).
    path : str or Path
        The export (a JSON file; LabelMe: a folder of them).
    annotator : str
        Who corrected them.
    categories, label_attribute
        VIA and LabelMe: the category names in id order, and VIA's region attribute holding the category.

    Returns
    -------
    dict
        ``saved``: item ids given a correction; ``unannotated``: item ids the export holds without objects.

    Raises
    ------
    ReviewError
        For a classifier review set, an export naming an image that is not in the set, or a correction the set
        refuses (another size, unknown categories...); corrections saved before the failure stay saved.
    """
    from cellops.coco import coco_to_labels
    from cellops.maskrcnn.annotations import AnnotationError, load_annotations

    if review.family not in SEGMENTATION_FAMILIES:
        raise ReviewError(f"{review.path}: a {review.family} review set takes labels, not annotation files")
    try:
        coco = load_annotations(format, path, review.path / "images", categories=categories,
                                label_attribute=label_attribute)
    except AnnotationError as error:
        raise ReviewError(str(error)) from None
    by_file = {Path(item.image).name: item for item in review.items.values()}
    unknown = sorted(Path(img["file_name"]).name for img in coco["images"] if Path(img["file_name"]).name not in by_file)
    if unknown:
        raise ReviewError(f"{path}: images {unknown[:5]} are not images of the review set {review.path}")
    names = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
    saved, unannotated = [], []
    for image in coco["images"]:
        item = by_file[Path(image["file_name"]).name]
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        if not annotations:
            unannotated.append(item.id)
            continue
        labels = coco_to_labels(coco, image["file_name"])
        instance_categories = {i: names.get(int(a["category_id"]), "") for i, a in enumerate(annotations, start=1)}
        several = len(set(review.categories.values())) > 1
        review.save_correction(item.id, status="corrected", annotator=annotator,
                               labels=(labels > 0).astype(np.uint8) if review.family == "unet" else labels,
                               categories=instance_categories if review.family == "maskrcnn" and several else None)
        saved.append(item.id)
    return {"saved": saved, "unannotated": unannotated}
