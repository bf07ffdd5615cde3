"""Review sets and corrections without a model: the review set's layout and queue, every refusal of a correction,
atomic imports that a failure leaves as they were, duplicates that add nothing, and the family loaders adding
corrected images to training only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellops.corrections import (CorrectionsError, compare_to_prediction, corrections_in_lineage, import_corrections,
                                 lineage_with_corrections, read_corrections, stored_corrections)
from cellops.review import ReviewError, ReviewPrediction, ReviewSet, write_review_set

pytestmark = pytest.mark.minutes(1)
MODEL = {"name": "cellops-maskrcnn", "version": "3"}


def _images(folder: Path, n: int = 3, shape=(24, 32)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.tif"
        tifffile.imwrite(path, (np.random.default_rng(i).random(shape) * 255).astype(np.uint8))
        paths.append(path)
    return paths


def _disc_labels(shape=(24, 32), centres=((8, 8), (16, 22))) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = i
    return labels


@pytest.fixture
def maskrcnn_review(tmp_path) -> ReviewSet:
    paths = _images(tmp_path / "incoming")
    predictions = [ReviewPrediction(p, uncertainty=u, labels=_disc_labels(), categories={1: "colony", 2: "colony"},
                                    object_uncertainty=(0.1, 0.2), method="flip-tta")
                   for p, u in zip(paths, (0.2, 0.9, 0.5))]
    return write_review_set(tmp_path / "review", family="maskrcnn", model=MODEL, uncertainty_method="flip-tta",
                            predictions=predictions, categories={1: "colony"})


def test_a_review_set_holds_images_predictions_and_a_queue_most_uncertain_first(maskrcnn_review):
    review = maskrcnn_review
    assert review.queue == ["img1", "img2", "img0"] and review.next_item() == "img1"
    assert review.progress() == (0, 3) and review.model_version == "cellops-maskrcnn:3"
    queue = (review.path / "queue.csv").read_text().splitlines()
    assert queue[0] == "id,image,uncertainty,rank" and queue[1].startswith("img1,images/img1.tif,0.9,1")
    coco = json.loads((review.path / "predictions/predictions.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 6 and coco["categories"][0]["name"] == "colony"
    assert (review.path / "images/img0.tif").read_bytes() == (review.path.parent / "incoming/img0.tif").read_bytes()
    assert np.array_equal(review.read_prediction("img0"), _disc_labels())
    with pytest.raises(ReviewError, match="not an empty folder"):
        write_review_set(review.path, family="maskrcnn", model=MODEL, uncertainty_method="x",
                         predictions=[ReviewPrediction(review.path / "images/img0.tif", 0.1, labels=_disc_labels())])


def test_saving_checks_the_correction_and_moves_the_queue_on(maskrcnn_review):
    review = maskrcnn_review
    edited = review.read_prediction("img1").copy()
    edited[edited == 2] = 0
    edited[18:22, 2:6] = 7
    path = review.save_correction("img1", status="corrected", annotator="ana", labels=edited)
    record = json.loads(path.read_text())
    assert record["annotator"] == "ana" and record["status"] == "corrected" and record["time"]
    assert np.array_equal(review.read_correction_labels("img1"), edited)
    assert review.next_item() == "img2" and review.progress() == (1, 3)
    for kwargs, message in [
        ({"status": "corrected", "labels": np.zeros((24, 31), np.uint16)}, "shape"),
        ({"status": "corrected", "labels": np.zeros((24, 32), np.uint16)}, "mark the image empty"),
        ({"status": "empty", "labels": edited}, "marked empty"),
        ({"status": "corrected", "labels": edited.astype(float)}, "integers"),
        ({"status": "maybe"}, "status"),
        ({"status": "corrected", "labels": edited, "categories": {1: "nucleus"}}, "unknown categories"),
    ]:
        with pytest.raises(ReviewError, match=message):
            review.save_correction("img2", annotator="ana", **kwargs)
    with pytest.raises(ReviewError, match="not an image of the review set"):
        review.save_correction("img9", status="accepted", annotator="ana")
    with pytest.raises(ReviewError, match="who"):
        review.save_correction("img2", status="accepted", annotator=" ")


def test_changes_count_what_the_annotator_added_removed_and_redrew():
    predicted = np.zeros((10, 20), np.uint8)
    predicted[1:5, 1:5] = 1
    predicted[1:5, 10:14] = 1
    corrected = np.zeros_like(predicted)
    corrected[1:5, 1:5] = 1
    corrected[6:9, 15:19] = 1
    changes = compare_to_prediction("unet", predicted, corrected)
    assert (changes.added, changes.removed, changes.changed) == (1, 1, 0)
    assert changes.agreement == pytest.approx(16 / (32 + 12))
    assert compare_to_prediction("maskrcnn", _disc_labels(), _disc_labels()).agreement == 1.0


def test_import_adds_a_version_once_and_refusals_change_nothing(maskrcnn_review, tmp_path):
    review = maskrcnn_review
    store = tmp_path / "data/corrections/cellops-maskrcnn"
    review.save_correction("img1", status="accepted", annotator="ana")
    review.save_correction("img0", status="empty", annotator="bo")
    summary = import_corrections(review.path, store)
    assert len(summary.added) == 2 and summary.unchanged == [] and summary.data_version is None
    manifest_bytes = (store / "corrections.json").read_bytes()
    entries = json.loads(manifest_bytes)["entries"]
    assert {e["status"] for e in entries} == {"accepted", "empty"}
    empty = next(e for e in entries if e["status"] == "empty")
    assert (empty["removed"], empty["added"], empty["model"], empty["annotator"]) == (2, 0, "cellops-maskrcnn:3", "bo")
    again = import_corrections(review.path, store)
    assert again.added == [] and len(again.unchanged) == 2
    assert (store / "corrections.json").read_bytes() == manifest_bytes

    files_before = sorted(p.relative_to(store) for p in store.rglob("*"))
    bad = [
        ("zzz_labels.ome.tif", b"not a tiff", "no image 'zzz'"),
        ("img2.json", json.dumps({"item": "img2", "status": "accepted", "annotator": "x",
                                  "model": {"name": "cellops-maskrcnn", "version": "2"}}), "was made on cellops-maskrcnn:2"),
        ("img2.json", json.dumps({"item": "img2", "status": "corrected", "annotator": "x", "labels": "missing.tif",
                                  "model": MODEL}), "missing label image"),
    ]
    for name, content, message in bad:
        target = review.path / "corrections" / name
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(CorrectionsError, match=message) as refused:
            import_corrections(review.path, store)
        assert f"corrections/{name}" in str(refused.value)
        target.unlink()
        assert sorted(p.relative_to(store) for p in store.rglob("*")) == files_before
        assert (store / "corrections.json").read_bytes() == manifest_bytes
    with pytest.raises(CorrectionsError, match="never to the fixed test set"):
        import_corrections(review.path, store, split="test")


def test_an_image_changed_after_export_is_refused(maskrcnn_review, tmp_path):
    review = maskrcnn_review
    review.save_correction("img1", status="accepted", annotator="ana")
    tifffile.imwrite(review.path / "images/img1.tif", np.zeros((24, 32), np.uint8))
    corrections = read_corrections(review)
    assert corrections[0].problem.startswith("images/img1.tif is not the image the model predicted")
    with pytest.raises(CorrectionsError, match="same content hash"):
        import_corrections(review.path, tmp_path / "store")


def test_a_failing_dvc_add_puts_the_dataset_and_its_dvc_file_back(maskrcnn_review, tmp_path):
    review = maskrcnn_review
    review.save_correction("img1", status="accepted", annotator="ana")
    store = tmp_path / "data/corrections/cellops-maskrcnn"
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: 0123.dir\n  path: data\n")  # not a DVC repository: `dvc add` fails
    with pytest.raises(CorrectionsError, match="dvc add"):
        import_corrections(review.path, store, dvc_file=dvc_file)
    assert not (store / "corrections.json").exists() and not list(store.rglob("*.tif"))
    assert dvc_file.read_text() == "outs:\n- md5: 0123.dir\n  path: data\n"


def test_import_records_a_new_dvc_data_version(maskrcnn_review, tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data/a.txt").write_text("a")
    dvc = str(Path(sys.executable).parent / "dvc")
    for command in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "add", "-q", "data"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    before = (repo / "data.dvc").read_text()
    maskrcnn_review.save_correction("img1", status="accepted", annotator="ana")
    summary = import_corrections(maskrcnn_review.path, repo / "data/corrections/cellops-maskrcnn",
                                 dvc_file=repo / "data.dvc")
    assert summary.data_version and summary.data_version in (repo / "data.dvc").read_text()
    assert (repo / "data.dvc").read_text() != before
    status = subprocess.run([dvc, "status", "data.dvc"], cwd=repo, capture_output=True, text=True)
    assert "up to date" in status.stdout.lower() or "changed" not in status.stdout


def test_family_loaders_add_corrections_to_training_only(maskrcnn_review, tmp_path):
    from cellops.classifier.data import add_corrections as add_class_corrections
    from cellops.maskrcnn.data import add_corrections

    review = maskrcnn_review
    review.save_correction("img1", status="accepted", annotator="ana")
    store = tmp_path / "store"
    import_corrections(review.path, store)
    lineage = lineage_with_corrections({"data_version": "x"}, store, "train")
    assert lineage["corrections"].startswith("1 corrected images") and "cellops-maskrcnn:3" in lineage["corrections"]
    found = corrections_in_lineage(lineage, "maskrcnn")
    assert len(found) == 1 and found[0].split == "train"
    assert corrections_in_lineage(lineage_with_corrections({}, store, "none"), "maskrcnn") == []
    with pytest.raises(CorrectionsError, match="holds maskrcnn corrections"):
        stored_corrections(store, "unet")
    images_dir = tmp_path / "colonies/images"
    images_dir.mkdir(parents=True)
    coco = {"images": [{"id": 4, "file_name": "a.tif", "height": 24, "width": 32}], "annotations": [],
            "categories": [{"id": 1, "name": "colony"}]}
    index = {"images_dir": str(images_dir), "files": [str(images_dir / "a.tif")], "md5": ["m"], "splits": ["test"],
             "image_ids": [4]}
    coco2, index2 = add_corrections(coco, index, found)
    assert index2["splits"] == ["test", "train"] and index2["image_ids"] == [4, 5] and index["splits"] == ["test"]
    assert (images_dir / coco2["images"][-1]["file_name"]).resolve() == found[0].image.resolve()
    assert len(coco2["annotations"]) == 2 and {a["category_id"] for a in coco2["annotations"]} == {1}
    labelled = type(found[0])(found[0].id, found[0].image, None, "hipsc_ec", "train")
    index3 = add_class_corrections({"root": "d", "classes": ["hipsc_ec", "non_ec"], "files": [], "labels": [],
                                    "md5": [], "splits": []}, [labelled])
    assert index3["labels"] == [0] and index3["splits"] == ["train"]
    with pytest.raises(ValueError, match="not one of the dataset's"):
        add_class_corrections({"root": "d", "classes": ["a"], "files": [], "labels": [], "md5": [], "splits": []},
                              [labelled])


def test_a_classifier_review_set_takes_a_class_and_refuses_others(tmp_path):
    paths = _images(tmp_path / "in", n=2)
    review = write_review_set(
        tmp_path / "r", family="classifier", model={"name": "cellops-classifier", "version": "1"},
        uncertainty_method="entropy", classes=["hipsc_ec", "non_ec"],
        predictions=[ReviewPrediction(p, 0.3 + i / 10, label="non_ec", probabilities={"hipsc_ec": 0.4, "non_ec": 0.6})
                     for i, p in enumerate(paths)])
    assert (tmp_path / "r/predictions/predictions.csv").read_text().splitlines()[0] == \
        "id,image,label,uncertainty,p_hipsc_ec,p_non_ec"
    review.save_correction("img1", status="corrected", annotator="ana", label="hipsc_ec")
    with pytest.raises(ReviewError, match="not one of the model's classes"):
        review.save_correction("img0", status="corrected", annotator="ana", label="neuron")
    summary = import_corrections(review.path, tmp_path / "store")
    entry = json.loads((tmp_path / "store/corrections.json").read_text())["entries"][0]
    assert summary.added and entry["label"] == "hipsc_ec" and entry["changed"] == 1 and entry["agreement"] == 0.0
    shutil.rmtree(tmp_path / "r" / "images")
    with pytest.raises(ValueError, match="img0.tif: no such file"):
        ReviewSet.open(tmp_path / "r").read_image("img0")


def test_unknown_label_ids_and_categories_are_refused_at_import(tmp_path):
    from cellops.microscopy import write_ome_tiff

    paths = _images(tmp_path / "in", n=1)
    mask = np.zeros((24, 32), np.uint8)
    mask[4:9, 4:9] = 1
    review = write_review_set(tmp_path / "r", family="unet", model={"name": "cellops-unet", "version": "2"},
                              uncertainty_method="flip-tta", predictions=[ReviewPrediction(paths[0], 0.4, labels=mask)])
    with pytest.raises(ReviewError, match=r"label ids \[2\]"):
        review.save_correction("img0", status="corrected", annotator="ana", labels=mask * 2)
    review.save_correction("img0", status="corrected", annotator="ana", labels=mask)
    write_ome_tiff(tmp_path / "r/corrections/img0_labels.ome.tif", mask * 3, axes="YX", overwrite=True)
    with pytest.raises(CorrectionsError, match=r"corrections/img0.json: .*label ids \[3\]"):
        import_corrections(review.path, tmp_path / "store")
    assert not (tmp_path / "store").exists()

    colonies = write_review_set(
        tmp_path / "m", family="maskrcnn", model=MODEL, uncertainty_method="flip-tta", categories={1: "colony"},
        predictions=[ReviewPrediction(paths[0], 0.4, labels=_disc_labels(), categories={1: "colony", 2: "colony"})])
    colonies.save_correction("img0", status="accepted", annotator="ana")
    record = json.loads((tmp_path / "m/corrections/img0.json").read_text())
    (tmp_path / "m/corrections/img0.json").write_text(json.dumps({**record, "categories": {"1": "nucleus"}}))
    with pytest.raises(CorrectionsError, match=r"corrections/img0.json: categories \['nucleus'\]"):
        import_corrections(colonies.path, tmp_path / "store")


def test_an_export_of_another_annotation_tool_becomes_corrections(maskrcnn_review, tmp_path):
    from cellops.review import save_annotations

    review = maskrcnn_review
    coco = json.loads((review.path / "predictions/predictions.json").read_text())
    # The annotator deletes every object of img1 but the first, and leaves img2 without any.
    img1 = next(i["id"] for i in coco["images"] if i["file_name"] == "img1.tif")
    img2 = next(i["id"] for i in coco["images"] if i["file_name"] == "img2.tif")
    first = next(a for a in coco["annotations"] if a["image_id"] == img1)
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in (img1, img2)] + [first]
    (tmp_path / "cvat.json").write_text(json.dumps(coco))
    done = save_annotations(review, "coco", tmp_path / "cvat.json", annotator="cvat-team")
    assert sorted(done["saved"]) == ["img0", "img1"] and done["unannotated"] == ["img2"]
    assert review.correction("img1")["annotator"] == "cvat-team"
    assert review.read_correction_labels("img1").max() == 1
    coco["images"].append({"id": 99, "file_name": "other.tif", "height": 24, "width": 32})
    (tmp_path / "cvat.json").write_text(json.dumps(coco))
    with pytest.raises(ReviewError, match=r"\['other.tif'\] are not images of the review set"):
        save_annotations(review, "coco", tmp_path / "cvat.json", annotator="cvat-team")


def test_a_data_version_from_before_any_correction_has_none(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data/a.txt").write_text("a")
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    import os

    for command in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "add", "-q", "data"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "v1"], ["git", "tag", "v1"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True, env={**os.environ, **env})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    lineage = lineage_with_corrections({"data_rev": "v1", "data_rev_commit": commit}, "data/corrections/cellops-unet",
                                       "train")
    assert lineage["corrections"] == "none"
    assert corrections_in_lineage(lineage, "unet") == []
