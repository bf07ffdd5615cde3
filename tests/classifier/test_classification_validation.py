"""The classification dataset suite (Great Expectations): a clean set passes, each problem is named in plain words."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from cellops.config import from_mapping
from cellops.classifier.validation import (
    CLASS_IMAGE_COLUMNS,
    ClassificationExpectations,
    summarise_class_images,
    validate_classification_dataset,
)

CLASSES = ["ec", "non_ec"]
EXPECT = ClassificationExpectations(min_images_per_class=3, max_class_imbalance=2.0, min_side=16)


def _dataset(root: Path, per_split: dict[str, dict[str, int]], size=(16, 16)) -> tuple[list, list, list]:
    """``root/<split>/<class>/<i>.png``, distinct random grey pictures; returns files, labels, splits."""
    rng = np.random.default_rng(0)
    files, labels, splits = [], [], []
    for split, counts in per_split.items():
        for label, n in counts.items():
            for i in range(n):
                path = root / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
                files.append(path), labels.append(label), splits.append(split)
    return files, labels, splits


CLEAN = {"train": {"ec": 3, "non_ec": 3}, "test": {"ec": 2, "non_ec": 2}}


@pytest.fixture
def clean(tmp_path):
    return _dataset(tmp_path, CLEAN)


def _failures(files, labels, splits, expectations=EXPECT) -> list[str]:
    report = validate_classification_dataset(summarise_class_images(files, labels, splits), CLASSES, expectations)
    assert not report.success
    assert len(report.failures) == len([r for r in report.results["results"] if not r["success"]])
    return report.failures


def test_expectations_come_from_yaml_and_are_checked():
    text = ("min_images_per_class: 50\nmax_class_imbalance: 3.0\nmin_side: 64\nallowed_channels: [1, 3]\n"
            "require_consistent_size: false\nmin_std: 0.01\n")
    expect = from_mapping(ClassificationExpectations, yaml.safe_load(text))
    assert expect == ClassificationExpectations(50, 3.0, 64, (1, 3), False, 0.01)
    assert hash(expect)  # lists from YAML become tuples: the frozen dataclass stays hashable
    with pytest.raises(ValueError, match=r"missing keys \['max_class_imbalance', 'min_side'\]"):
        from_mapping(ClassificationExpectations, {"min_images_per_class": 50})
    with pytest.raises(ValueError, match="max_class_imbalance .* at least 1, got 0.5"):
        ClassificationExpectations(min_images_per_class=1, max_class_imbalance=0.5, min_side=8)


def test_summary_flags_duplicates_and_unreadable_files(tmp_path, clean):
    files, labels, splits = clean
    leaked = tmp_path / "test" / "ec" / "leaked.png"
    shutil.copy(files[0], leaked)  # train/ec/0.png again in test, same label
    relabelled = tmp_path / "train" / "non_ec" / "relabelled.png"
    shutil.copy(files[1], relabelled)  # train/ec/1.png again in train, other label
    broken = tmp_path / "train" / "ec" / "broken.png"
    broken.write_bytes(b"")
    int32 = tmp_path / "train" / "ec" / "int32.tif"
    tifffile.imwrite(int32, np.arange(256, dtype=np.int32).reshape(16, 16))  # readable, but no model takes it
    other_broken = tmp_path / "test" / "ec" / "broken.png"
    other_broken.write_bytes(b"")  # same (empty) bytes in another split: unreadable, so not a "duplicate"
    table = summarise_class_images(files + [leaked, relabelled, broken, int32, other_broken],
                                   labels + ["ec", "non_ec", "ec", "ec", "ec"],
                                   splits + ["test", "train", "train", "train", "test"])
    assert list(table.columns) == CLASS_IMAGE_COLUMNS and len(table) == 15
    by_file = table.set_index("file")
    def flagged(column):
        return sorted(Path(f).relative_to(tmp_path).as_posix() for f in table.file[table[column]])

    across, conflicting = flagged("duplicate_across_splits"), flagged("duplicate_conflicting_label")
    assert across == ["test/ec/leaked.png", "train/ec/0.png"]
    assert conflicting == ["train/ec/1.png", "train/non_ec/relabelled.png"]
    assert not by_file.loc[str(broken), "readable"] and "empty file" in by_file.loc[str(broken), "problem"]
    assert not by_file.loc[str(int32), "readable"] and "unsupported dtype int32" in by_file.loc[str(int32), "problem"]
    assert by_file.loc[str(files[0]), ["height", "width", "channels", "dtype"]].tolist() == [16, 16, 1, "uint8"]
    assert by_file.loc[str(files[0]), "content_md5"] == by_file.loc[str(leaked), "content_md5"]
    assert by_file.loc[str(files[0]), "std"] > 10


def test_clean_dataset_passes_and_builds_data_docs(clean, tmp_path):
    files, labels, splits = clean
    report = validate_classification_dataset(summarise_class_images(files, labels, splits), CLASSES, EXPECT,
                                             data_docs_dir=tmp_path / "docs")
    assert report.success, report.failures
    assert report.failures == [] and len(report.results["results"]) == 12
    assert report.data_docs is not None and report.data_docs.is_file()


def test_duplicates_across_splits_and_labels_are_named(clean, tmp_path):
    files, labels, splits = clean
    leaked = tmp_path / "test" / "ec" / "leaked.png"
    shutil.copy(files[0], leaked)
    relabelled = tmp_path / "train" / "non_ec" / "relabelled.png"
    shutil.copy(files[1], relabelled)
    failures = _failures(files + [leaked, relabelled], labels + ["ec", "non_ec"], splits + ["test", "train"])
    assert len(failures) == 2, failures
    across, conflicting = sorted(failures)
    assert "duplicate_across_splits" in across and "more than one split" in across
    assert f"{files[0]} (ec, train) = {leaked} (ec, test)" in across
    assert "duplicate_conflicting_label" in conflicting and "different labels" in conflicting
    assert f"{files[1]} (ec, train) = {relabelled} (non_ec, train)" in conflicting


def test_a_class_missing_from_a_split_is_named(tmp_path):
    files, labels, splits = _dataset(tmp_path, {"train": {"ec": 3, "non_ec": 3}, "test": {"ec": 2}})
    failures = _failures(files, labels, splits)
    assert len(failures) == 1, failures
    assert "label_split" in failures[0] and "class 'non_ec' has no images in split 'test'" in failures[0]


def test_too_few_images_and_imbalance_are_named(tmp_path):
    files, labels, splits = _dataset(tmp_path, {"train": {"ec": 6, "non_ec": 2}, "test": {"ec": 1, "non_ec": 1}})
    failures = _failures(files, labels, splits, ClassificationExpectations(4, 2.0, 16))
    assert len(failures) == 2, failures
    counts, imbalance = sorted(failures, key=lambda line: "imbalance" in line)
    assert "class_count" in counts and "class 'non_ec' has 3 images, fewer than 4" in counts
    assert "imbalance_ratio" in imbalance
    assert "the largest, 'ec', has 7 images, the smallest, 'non_ec', 3: a ratio of 2.33, more than 2.0" in imbalance


def test_inconsistent_sizes_are_named(clean, tmp_path):
    files, labels, splits = clean
    odd = tmp_path / "train" / "ec" / "odd.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 16), dtype=np.uint8)).save(odd)
    failures = _failures(files + [odd], labels + ["ec"], splits + ["train"])
    assert len(failures) == 1, failures
    assert "size" in failures[0] and "images differ in size (height x width): 16x16 (10 images), 20x16 (1 image: " \
        f"{odd})" in failures[0]


def test_an_unreadable_file_is_named(clean, tmp_path):
    files, labels, splits = clean
    broken = tmp_path / "train" / "non_ec" / "broken.png"
    broken.write_text("not a picture")
    failures = _failures(files + [broken], labels + ["non_ec"], splits + ["train"])
    assert len(failures) == 1, failures
    assert "'readable'" in failures[0] and f"1 file cannot be used: {broken}: not a readable image" in failures[0]


def test_an_empty_required_split_is_named(clean):
    files, labels, splits = clean  # train and test only: no validation images at all
    report = validate_classification_dataset(summarise_class_images(files, labels, splits), CLASSES, EXPECT,
                                             splits=["train", "val", "test"])
    assert not report.success
    assert any("class 'ec' has no images in split 'val'" in f for f in report.failures), report.failures
