"""Corrections: people's verdicts on a review set (:mod:`cellops.review`), checked and added to a family's dataset.

A family's corrections live in one folder of its dataset (``data/corrections/<family>/`` by default), tracked by
DVC with the rest of ``data/``::

    corrections.json   one entry per corrected image, with its provenance: the model version that pre-annotated
                       it, who corrected it and when, the review set, objects added / removed / changed and the
                       agreement between prediction and correction
    images/            the images, named by their content hash
    labels/            the corrected label images (segmentation families)

The loading steps add them to the training split only (the test set stays fixed); :func:`import_corrections` adds
a review set's corrections atomically: checked first by the family's Great Expectations suite, then written,
then the dataset's new DVC version recorded; an import that fails leaves the dataset and its DVC version as they
were, and importing the same corrections twice adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cellops.batch import _suffix
from cellops.review import (FAMILIES, SEGMENTATION_FAMILIES, STATUSES, ReviewError, ReviewItem, ReviewSet,
                            _read_labels, _storable_labels, _write_json, check_labels, sha256_of)

STORE_FORMAT = "cellops-corrections"
STORE_FILE = "corrections.json"
#: Objects whose outline moved by more than this (IoU below it) count as changed.
CHANGED_IOU = 0.95
#: The checks every correction passes before anything is written, in the order they are reported.
CHECKS = ("in_review_set", "same_model", "image_unchanged", "readable", "same_shape", "label_ids_known",
          "categories_known", "empty_as_marked")
CHECK_MEANING = {
    "in_review_set": "is a correction of an image of the review set",
    "same_model": "was made on the review set's model version",
    "image_unchanged": "corrects the very image the model saw (same content hash)",
    "readable": "has a status, an annotator and a readable label image or label",
    "same_shape": "has a label image of its image's size",
    "label_ids_known": "has only label ids or classes the family has",
    "categories_known": "names only categories the model has",
    "empty_as_marked": "is empty only when marked empty",
}


class CorrectionsError(ValueError):
    """Corrections that cannot be imported; the message names each file and what is wrong with it."""


@dataclass(frozen=True)
class Correction:
    """One correction of a review set, read and checked.

    Attributes
    ----------
    file : str
        The correction's record, relative to the review set (what messages name).
    item : ReviewItem or None
        The image it corrects (None when it names no image of the set).
    record : dict
        The record as saved (status, annotator, time, model...).
    labels : np.ndarray or None
        Segmentation families: the corrected label image (U-Net 0/1).
    label : str or None
        Classifier: the right class.
    checks : dict
        Each of :data:`CHECKS` -> passed.
    problem : str
        What failed, in words ("" when every check passed).
    """

    file: str
    item: ReviewItem | None
    record: dict
    labels: np.ndarray | None = None
    label: str | None = None
    checks: dict = field(default_factory=dict)
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class Changes:
    """How a correction differs from the prediction it corrects.

    Attributes
    ----------
    added : int
        Objects (or, for the classifier, 0) the annotator added.
    removed : int
        Predicted objects the annotator removed.
    changed : int
        Objects kept but redrawn (IoU below :data:`CHANGED_IOU`); the classifier: 1 when the class changed.
    agreement : float
        Prediction against correction: the object F1 at IoU 0.5 (Mask R-CNN), the foreground IoU (U-Net), 1 or 0
        (classifier).
    """

    added: int
    removed: int
    changed: int
    agreement: float


def compare_to_prediction(family: str, prediction: np.ndarray | str | None, correction: np.ndarray | str) -> Changes:
    """Objects added, removed and changed between a prediction and its correction, and their agreement.

    Parameters
    ----------
    family : str
        ``unet`` (0/1 masks: objects are connected components), ``maskrcnn`` (instance label images) or
        ``classifier`` (class names).
    prediction : np.ndarray or str
        What the model said.
    correction : np.ndarray or str
        What the annotator says.

    Returns
    -------
    Changes
        The counts and the agreement.

    Examples
    --------
    >>> predicted = np.array([[1, 1, 0, 2, 2, 0, 0]])
    >>> corrected = np.array([[1, 1, 0, 0, 0, 0, 3]])
    >>> compare_to_prediction("maskrcnn", predicted, corrected)
    Changes(added=1, removed=1, changed=0, agreement=0.5)
    >>> compare_to_prediction("classifier", "non_ec", "hipsc_ec")
    Changes(added=0, removed=0, changed=1, agreement=0.0)
    """
    if family == "classifier":
        same = prediction == correction
        return Changes(0, 0, 0 if same else 1, 1.0 if same else 0.0)
    from cellops.metrics import binary_segmentation_scores, match_instances

    predicted = np.zeros_like(correction) if prediction is None else np.asarray(prediction)
    corrected = np.asarray(correction)
    if family == "unet":
        from scipy import ndimage

        agreement = binary_segmentation_scores(predicted > 0, corrected > 0).foreground_iou
        predicted, corrected = ndimage.label(predicted > 0)[0], ndimage.label(corrected > 0)[0]
    match = match_instances(corrected, predicted, iou_threshold=0.5)
    if family == "maskrcnn":
        agreement = match.f1
    changed = sum(1 for _, _, iou in match.pairs if iou < CHANGED_IOU)
    return Changes(match.false_negatives, match.false_positives, changed, round(float(agreement), 6))


def read_corrections(review: ReviewSet) -> list[Correction]:
    """Every correction in ``review``'s ``corrections/`` folder, each checked (see :data:`CHECKS`); a label image
    that no record names is reported as a correction of an unknown image.

    Parameters
    ----------
    review : ReviewSet
        The review set.

    Returns
    -------
    list of Correction
        In file-name order; ``problem`` says what failed for each.
    """
    folder = review.path / "corrections"
    records = sorted(folder.glob("*.json")) if folder.is_dir() else []
    named: set[str] = set()
    corrections = []
    for path in records:
        correction = _read_one(review, path)
        if correction.record.get("labels"):
            named.add(str(correction.record["labels"]))
        corrections.append(correction)
    for orphan in sorted(folder.glob("*_labels.ome.tif")) if folder.is_dir() else []:
        if orphan.name not in named:
            item_id = orphan.name[: -len("_labels.ome.tif")]
            if item_id not in review.items:
                corrections.append(_failed(f"corrections/{orphan.name}", None, {}, "in_review_set",
                                           f"no image {item_id!r} in the review set"))
            else:
                corrections.append(_failed(f"corrections/{orphan.name}", review.items[item_id], {}, "readable",
                                           f"no correction record corrections/{item_id}.json says what this "
                                           "label image is"))
    return sorted(corrections, key=lambda c: c.file)


def _failed(file: str, item: ReviewItem | None, record: dict, check: str, problem: str) -> Correction:
    checks = {name: True for name in CHECKS}
    checks[check] = False
    return Correction(file, item, record, checks=checks, problem=problem)


def _read_one(review: ReviewSet, path: Path) -> Correction:
    file = f"corrections/{path.name}"
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        return _failed(file, None, {}, "readable", f"unreadable record ({error})")
    item_id = str(record.get("item") or path.stem)
    item = review.items.get(item_id)
    if item is None or path.stem != item_id:
        return _failed(file, None, record, "in_review_set",
                       f"corrects {item_id!r}, which is not an image of this review set")
    model = record.get("model") or {}
    made_by = f"{model.get('name')}:{model.get('version')}"
    if made_by != review.model_version:
        return _failed(file, item, record, "same_model",
                       f"was made on {made_by}, but this review set holds predictions of {review.model_version}")
    if record.get("image_sha256") not in (None, item.sha256) or sha256_of(review.path / item.image) != item.sha256:
        return _failed(file, item, record, "image_unchanged",
                       f"{item.image} is not the image the model predicted (its content changed)")
    status, annotator = record.get("status"), str(record.get("annotator") or "").strip()
    if status not in STATUSES or not annotator:
        return _failed(file, item, record, "readable",
                       f"status {status!r} (one of {', '.join(STATUSES)}) and an annotator are required")
    if review.family == "classifier":
        label = item.label if status == "accepted" else record.get("label")
        if label not in review.classes:
            return _failed(file, item, record, "label_ids_known",
                           f"class {label!r} is not one of the model's ({', '.join(review.classes)})")
        return Correction(file, item, record, label=label, checks={name: True for name in CHECKS})
    if status == "accepted" and not record.get("labels"):
        labels = review.read_prediction(item.id)
    elif status == "empty" and not record.get("labels"):
        labels = np.zeros(item.shape, np.uint8)
    else:
        try:
            labels = _read_labels(review.path / "corrections" / str(record.get("labels") or f"{item.id}_labels.ome.tif"))
        except ReviewError as error:
            return _failed(file, item, record, "readable", str(error).replace(str(review.path) + "/", ""))
    if tuple(labels.shape) != tuple(item.shape):
        return _failed(file, item, record, "same_shape",
                       f"label image of shape {tuple(labels.shape)}, but {item.image} is {tuple(item.shape)}")
    categories = record.get("categories") or {}
    unknown = sorted(set(map(str, categories.values())) - set(review.categories.values()))
    if unknown:
        return _failed(file, item, record, "categories_known",
                       f"categories {unknown} the model does not have ({', '.join(review.categories.values())})")
    if review.family == "maskrcnn" and len(set(review.categories.values())) > 1:
        ids = set(np.unique(labels[labels > 0]).tolist())
        unnamed = sorted(ids - {int(k) for k in categories})
        if unnamed:
            return _failed(file, item, record, "categories_known",
                           f"instances {unnamed[:10]} have no category (the model has several; name each in "
                           "the record's categories)")
    try:
        labels = check_labels(labels, item, review.family, status, where=file)
    except ReviewError as error:
        check = "empty_as_marked" if "empty" in str(error) or "no object" in str(error) else "label_ids_known"
        return _failed(file, item, record, check, str(error).split(": ", 1)[-1])
    return Correction(file, item, record, labels=labels, checks={name: True for name in CHECKS})


def corrections_table(corrections: Sequence[Correction]) -> pd.DataFrame:
    """One row per correction: its file, each check of :data:`CHECKS` and the problem (what the Great
    Expectations suite validates)."""
    rows = [{"file": c.file, **{check: bool(c.checks.get(check, False)) for check in CHECKS}, "problem": c.problem}
            for c in corrections]
    return pd.DataFrame(rows, columns=["file", *CHECKS, "problem"])


def validate_corrections(corrections: Sequence[Correction], family: str):
    """The family's corrections suite on Great Expectations: every check of every correction must pass.

    Parameters
    ----------
    corrections : sequence of Correction
        From :func:`read_corrections`.
    family : str
        Names the suite (``<family>_corrections``).

    Returns
    -------
    cellops.validation.ValidationReport
        Its ``failures`` name the files that failed each check and why.
    """
    import great_expectations as gx

    from cellops.validation import explained_failures, run_suite, tagged

    table = corrections_table(corrections)
    checks = [("at_least_one", gx.expectations.ExpectTableRowCountToBeBetween(min_value=1))]
    checks += [(check, gx.expectations.ExpectColumnValuesToBeInSet(column=check, value_set=[True])) for check in CHECKS]
    report = run_suite(table, f"{family}_corrections", tagged(checks))

    def explain(check: str) -> str:
        if check == "at_least_one":
            return "no correction in the review set's corrections/ folder"
        bad = table[~table[check]]
        return f"not every correction {CHECK_MEANING[check]}: " + "; ".join(
            f"{row.file}: {row.problem}" for row in bad.itertuples())

    report.failures = explained_failures(report, explain)
    return report


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_corrections` did.

    Attributes
    ----------
    added : list of str
        Entry ids added (or replacing an earlier correction of the same image).
    unchanged : list of str
        Corrections already in the dataset, exactly: nothing added.
    store : Path
        The corrections folder of the dataset.
    data_version : str or None
        The dataset's DVC version after the import (None without a .dvc file).
    """

    added: list[str]
    unchanged: list[str]
    store: Path
    data_version: str | None = None


def _correction_digest(correction: Correction) -> str:
    digest = hashlib.sha256(correction.item.sha256.encode())
    if correction.labels is not None:
        digest.update(np.ascontiguousarray(correction.labels.astype(np.uint32)).tobytes())
        digest.update(str(correction.labels.shape).encode())
    digest.update(str(correction.label).encode())
    digest.update(json.dumps(correction.record.get("categories") or {}, sort_keys=True).encode())
    return digest.hexdigest()


def read_store(store: str | Path) -> dict:
    """The manifest of a corrections folder (an empty one when it has none yet).

    Raises
    ------
    CorrectionsError
        For a manifest that is not a cellops corrections manifest.
    """
    path = Path(store) / STORE_FILE
    if not path.is_file():
        return {"format": STORE_FORMAT, "format_version": 1, "family": None, "entries": []}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise CorrectionsError(f"{path}: unreadable ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise CorrectionsError(f"{path}: not a cellops corrections manifest")
    return manifest


def import_corrections(review_dir: str | Path, store: str | Path, *, split: str = "train",
                       dvc_file: str | Path | None = None, imported_by: str = "") -> ImportSummary:
    """Check every correction of a review set and add them to a family's corrections folder, as a new DVC data
    version.

    Nothing is written unless every correction passes the family's suite (:func:`validate_corrections`). New
    files are written under content-hash names, the manifest replaced last and atomically, then ``dvc add``
    records the new data version; if any of that fails, the files written are removed and the manifest and the
    ``.dvc`` file put back. A correction already imported (same image, same verdict) adds nothing; a new
    verdict on an image corrected before replaces the earlier one, which stays in the entry's ``replaced``.

    Parameters
    ----------
    review_dir : str or Path
        The review set (:class:`cellops.review.ReviewSet`) with its ``corrections/``.
    store : str or Path
        The family's corrections folder in its dataset (``data/corrections/<family>``).
    split : str
        ``train`` (the default: the test set stays fixed) or ``val``: where the loaders put these images.
    dvc_file : str or Path, optional
        The ``.dvc`` file tracking the dataset (``data.dvc``): ``dvc add`` is run on its output afterwards.
    imported_by : str
        Recorded with each entry (e.g. the ZenML run or the user).

    Returns
    -------
    ImportSummary
        Entries added and unchanged, and the new data version.

    Raises
    ------
    CorrectionsError
        Naming every file that failed and why, or a store of another family; nothing is changed.
    ReviewError
        When ``review_dir`` is not a review set.
    """
    if split not in ("train", "val"):
        raise CorrectionsError(f"split {split!r}: corrections go to train or val, never to the fixed test set")
    review = ReviewSet.open(review_dir)
    store = Path(store)
    corrections = read_corrections(review)
    report = validate_corrections(corrections, review.family)
    if not report.success:
        raise CorrectionsError(f"{review.path}: corrections refused, nothing imported:\n  " + "\n  ".join(report.failures))
    manifest = read_store(store)
    if manifest.get("family") not in (None, review.family):
        raise CorrectionsError(f"{store}: holds {manifest['family']} corrections; these are {review.family} "
                               "corrections (give the family's own folder)")
    entries = {entry["id"]: entry for entry in manifest["entries"]}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    added, unchanged, written = [], [], []
    for correction in corrections:
        entry_id = correction.item.sha256[:16]
        digest = _correction_digest(correction)
        earlier = entries.get(entry_id)
        if earlier is not None and earlier["correction_sha256"] == digest:
            unchanged.append(entry_id)
            continue
        entries[entry_id] = _entry(review, correction, entry_id, digest, split, now, imported_by, earlier)
        added.append(entry_id)
    summary = ImportSummary(added, unchanged, store)
    if not added:
        return summary
    dvc_backup = Path(dvc_file).read_bytes() if dvc_file is not None and Path(dvc_file).is_file() else None
    manifest_path = store / STORE_FILE
    manifest_backup = manifest_path.read_bytes() if manifest_path.is_file() else None
    try:
        for entry_id in added:
            correction = next(c for c in corrections if c.item.sha256[:16] == entry_id)
            written += _write_entry_files(review, correction, entries[entry_id], store)
        manifest = {**manifest, "family": review.family,
                    "entries": sorted(entries.values(), key=lambda e: (e["imported"], e["id"]))}
        _write_json(manifest_path, manifest)
        version = dvc_add(dvc_file) if dvc_file is not None else None
    except BaseException:
        _restore(manifest_path, manifest_backup, written, dvc_file, dvc_backup)
        raise
    return ImportSummary(added, unchanged, store, version)


def _entry(review: ReviewSet, correction: Correction, entry_id: str, digest: str, split: str, now: str,
           imported_by: str, earlier: dict | None) -> dict:
    item, record = correction.item, correction.record
    if review.family == "classifier":
        changes = compare_to_prediction("classifier", item.label, correction.label)
    else:
        changes = compare_to_prediction(review.family, review.read_prediction(item.id), correction.labels)
    entry = {
        "id": entry_id, "image": f"images/{entry_id}{_suffix(Path(item.image))}",
        "labels": f"labels/{entry_id}-{digest[:8]}_labels.ome.tif" if correction.labels is not None else None,
        "label": correction.label, "categories": record.get("categories") or None,
        "split": split, "status": record["status"], "annotator": record["annotator"], "corrected": record.get("time"),
        "model": review.model_version, "review_set": str(review.path.resolve()),
        "review_created": review.manifest.get("created"), "source": item.source, "image_sha256": item.sha256,
        "correction_sha256": digest, "uncertainty": item.uncertainty,
        "added": changes.added, "removed": changes.removed, "changed": changes.changed,
        "agreement": changes.agreement, "imported": now, "imported_by": imported_by,
        "channel": review.manifest.get("channel"), "scene": review.manifest.get("scene"),
    }
    if earlier is not None:
        entry["replaced"] = (earlier.get("replaced") or []) + [
            {key: earlier.get(key) for key in ("labels", "label", "annotator", "corrected", "model", "imported")}]
    return entry


def _write_entry_files(review: ReviewSet, correction: Correction, entry: dict, store: Path) -> list[Path]:
    from cellops.microscopy import write_ome_tiff

    written = []
    image = store / entry["image"]
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        temporary = image.with_name(f".{image.name}.tmp")
        shutil.copyfile(review.path / correction.item.image, temporary)
        os.replace(temporary, image)
        written.append(image)
    if entry["labels"]:
        labels = store / entry["labels"]
        if not labels.exists():
            labels.parent.mkdir(parents=True, exist_ok=True)
            write_ome_tiff(labels, _storable_labels(correction.labels, review.family),
                           axes="YX" if correction.labels.ndim == 2 else "ZYX")
            written.append(labels)
    return written


def _restore(manifest_path: Path, manifest_backup: bytes | None, written: list[Path], dvc_file: str | Path | None,
             dvc_backup: bytes | None) -> None:
    for path in written:
        path.unlink(missing_ok=True)
    if manifest_backup is None:
        manifest_path.unlink(missing_ok=True)
    else:
        manifest_path.write_bytes(manifest_backup)
    if dvc_file is not None:
        if dvc_backup is None:
            Path(dvc_file).unlink(missing_ok=True)
        else:
            Path(dvc_file).write_bytes(dvc_backup)


def dvc_add(dvc_file: str | Path) -> str:
    """Run ``dvc add`` on the output ``dvc_file`` tracks, and return the new data version (its md5).

    Raises
    ------
    CorrectionsError
        When ``dvc add`` fails (its message quoted).
    """
    from cellops.data_version import dvc_file_md5, dvc_file_output

    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        raise CorrectionsError(f"{dvc_file}: no such .dvc file (run `dvc add` on the dataset first)")
    target = dvc_file.parent / dvc_file_output(dvc_file)["path"]
    dvc = Path(sys.executable).parent / "dvc"
    command = [str(dvc) if dvc.exists() else "dvc", "add", "-q", str(target.name)]
    done = subprocess.run(command, cwd=dvc_file.parent, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if done.returncode != 0:
        raise CorrectionsError(f"dvc add {target}: failed ({(done.stderr or done.stdout).strip()[-500:]})")
    return dvc_file_md5(dvc_file)


@dataclass(frozen=True)
class StoredCorrection:
    """One corrected image of a dataset, as the family loaders read it.

    Attributes
    ----------
    id : str
        Its entry id.
    image : Path
        The image file.
    labels : Path or None
        The corrected label image (segmentation families).
    label : str or None
        The class (classifier).
    split : str
        ``train`` or ``val``.
    categories : dict or None
        Mask R-CNN: instance id -> category, when the model has several.
    """

    id: str
    image: Path
    labels: Path | None
    label: str | None
    split: str
    categories: dict | None = None

    def read_labels(self) -> np.ndarray:
        """The corrected label image."""
        return _read_labels(self.labels)


def stored_corrections(store: str | Path, family: str, *, use: str = "train") -> list[StoredCorrection]:
    """The corrections of a dataset for its family's loader.

    Parameters
    ----------
    store : str or Path
        The corrections folder (may not exist yet: no corrections).
    family : str
        The family that trains on them (a store of another family is refused).
    use : str
        ``train``: every entry, in its split; ``none``: none (train on the original data alone).

    Returns
    -------
    list of StoredCorrection
        In import order.

    Raises
    ------
    CorrectionsError
        For a store of another family, an unknown ``use``, or a file its manifest names that is missing.
    """
    if use not in ("train", "none"):
        raise CorrectionsError(f"corrections use {use!r}: train or none")
    store = Path(store)
    manifest = read_store(store)
    if use == "none" or not manifest["entries"]:
        return []
    if family not in FAMILIES or manifest.get("family") != family:
        raise CorrectionsError(f"{store}: holds {manifest.get('family')} corrections, not {family} ones")
    found = []
    for entry in manifest["entries"]:
        image = store / entry["image"]
        labels = store / entry["labels"] if entry.get("labels") else None
        for path in (image, labels):
            if path is not None and not path.is_file():
                raise CorrectionsError(f"{store / STORE_FILE}: names {path}, which is missing (restore it with "
                                       "`dvc checkout`)")
        found.append(StoredCorrection(entry["id"], image, labels, entry.get("label"), entry.get("split", "train"),
                                      entry.get("categories")))
    return found


def corrections_lineage(store: str | Path) -> str:
    """One line saying which corrections a dataset holds, recorded with every model trained on it (``cellops
    lineage`` shows it): how many, from which model versions and annotators, and the manifest's hash.

    Examples
    --------
    >>> corrections_lineage("/nonexistent")
    'none'
    """
    manifest = read_store(store) if Path(store).is_dir() else {"entries": []}
    entries = manifest["entries"]
    if not entries:
        return "none"
    models = sorted({e["model"] for e in entries})
    annotators = sorted({e["annotator"] for e in entries})
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:12]
    return (f"{len(entries)} corrected images ({', '.join(sorted(e['id'][:8] for e in entries)[:20])}) "
            f"pre-annotated by {', '.join(models)}, corrected by {', '.join(annotators)}; manifest {digest}")


def lineage_with_corrections(lineage: Mapping[str, object], store: str | Path, use: str) -> dict:
    """A run's lineage with the corrections its family's loaders add (recorded with the model it trains):
    ``corrections`` (:func:`corrections_lineage`, or ``not used``), ``corrections_store`` and ``corrections_use``.

    Examples
    --------
    >>> lineage_with_corrections({"data_version": "ab.dir"}, "/nonexistent", "train")["corrections"]
    'none'
    """
    if use not in ("train", "none"):
        raise CorrectionsError(f"corrections use {use!r}: train or none")
    folder = _store_folder(store, lineage) if use == "train" else None
    summary = (("none" if folder is None else corrections_lineage(folder)) if use == "train"
               else "not used (corrections use: none)")
    return {**lineage, "corrections": summary, "corrections_store": str(store), "corrections_use": use}


def corrections_in_lineage(lineage: Mapping[str, object], family: str) -> list[StoredCorrection]:
    """The corrections a run's loaders add, as :func:`lineage_with_corrections` recorded them (none when it was
    not run)."""
    store = lineage.get("corrections_store")
    if not store:
        return []
    from cellops.lineage import data_dir_for

    use = str(lineage.get("corrections_use", "train"))
    folder = _store_folder(store, lineage) if use == "train" else Path(store)
    return [] if folder is None else stored_corrections(folder, family, use=use)


def _store_folder(store: str | Path, lineage: Mapping[str, object]) -> Path | None:
    """The corrections folder a run reads: ``store`` itself, or, when the lineage names a ``data_rev``, the folder
    as it is in that data version (None when that version has no corrections yet)."""
    if not lineage.get("data_rev"):
        return Path(store)
    from cellops.data_revision import resolve_data_revision, revision_listing
    from cellops.lineage import data_dir_for

    revision = resolve_data_revision("data.dvc", str(lineage["data_rev_commit"]))
    try:
        prefix = Path(store).relative_to(revision.data_path).as_posix() + "/"
    except ValueError:
        prefix = None  # not under the tracked folder: data_dir_for says so
    if prefix is not None and not any(path.startswith(prefix) for path in revision_listing(revision)):
        return None
    return data_dir_for(store, dict(lineage))
