"""The catalogue of dataset faults the Great Expectations suites catch (docs/reliability.md lists the same table).

Each case breaks a clean dataset in one way. The suite must fail exactly the one check the fault concerns (no
cascade into unrelated expectations) and its message must name the volume or file at fault, what was expected
and what was found.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellops.maskrcnn.data import ImageSplitSettings, split_images
from cellops.maskrcnn.validation import AnnotationExpectations, summarise_annotations, validate_annotation_dataset
from cellops.classifier.validation import (ClassificationExpectations, summarise_class_images,
                                         validate_classification_dataset)
from cellops.unet.validation import SegmentationExpectations, validate_segmentation_dataset
from cellops.validation import ValidationReport, failed_checks


@dataclass(frozen=True)
class Fault:
    """One kind of dataset fault: how to break the clean dataset, the one check that must fail, and words the
    message must hold."""

    name: str
    suite: str
    breaks: Callable
    check: str
    says: tuple[str, ...]


# --- segmentation (U-Net EM volumes) --------------------------------------------------------------------------

SEGMENTATION_EXPECT = SegmentationExpectations(min_foreground_fraction=0.01, max_foreground_fraction=0.5,
                                               min_slices=4)
SOURCES = {"training": "training.tif, training_groundtruth.tif", "testing": "testing.tif, testing_groundtruth.tif"}


def _clean_volumes() -> dict:
    rng = np.random.default_rng(0)
    volumes = {}
    for name in ("training", "testing"):
        image = rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)
        mask = np.zeros((5, 32, 32), np.uint8)
        mask[:, 4:12, 4:12] = 255
        volumes[name] = (image, mask)
    return volumes


def _seg(change: Callable[[dict], None]) -> ValidationReport:
    volumes = _clean_volumes()
    change(volumes)
    return validate_segmentation_dataset(volumes, SEGMENTATION_EXPECT, sources=SOURCES)


def _set(volume: str, image=None, mask=None):
    def change(volumes):
        old_image, old_mask = volumes[volume]
        volumes[volume] = (old_image if image is None else image(old_image), old_mask if mask is None else mask(old_mask))
    return change


def _both(image=None, mask=None):
    def change(volumes):
        for volume in list(volumes):
            _set(volume, image, mask)(volumes)
    return change


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


def _nan_in_slice_2(volumes):
    _both(image=lambda a: a.astype(np.float32) / 255)(volumes)
    _set("testing", image=lambda a: _with(a, (2, 3, 3), np.nan))(volumes)


SEGMENTATION = [
    Fault("mask a slice short of its image", "segmentation", lambda: _seg(_set("training", mask=lambda m: m[:-1])),
          "shape_matches", ("volume 'training' (training.tif, training_groundtruth.tif)", "image is 5x32x32",
                            "mask is 4x32x32")),
    Fault("a 2-D image instead of a stack", "segmentation",
          lambda: _seg(lambda v: v.update(testing=(v["testing"][0][0], v["testing"][1][0]))),
          "ndim", ("volume 'testing'", "expected a 3-D (Z, Y, X) stack, found 2-D of shape 32x32")),
    Fault("unsupported image dtype", "segmentation", lambda: _seg(_both(image=lambda a: a.astype(np.int32))),
          "image_dtype", ("volume 'training'", "image dtype int32", "expected one of ['uint8', 'uint16', 'float32']")),
    Fault("volumes of different image dtypes", "segmentation",
          lambda: _seg(_set("testing", image=lambda a: a.astype(np.uint16) * 257)),
          "same_image_dtype", ("volume 'training' (training.tif, training_groundtruth.tif) uint8",
                               "volume 'testing' (testing.tif, testing_groundtruth.tif) uint16")),
    Fault("unsupported mask dtype", "segmentation", lambda: _seg(_set("testing", mask=lambda m: m.astype(np.int64))),
          "mask_dtype", ("volume 'testing'", "mask dtype int64", "expected one of ['uint8', 'bool']")),
    Fault("mask values not binary", "segmentation",
          lambda: _seg(_set("training", mask=lambda m: _with(m, np.s_[3, 0, :5], 128))),
          "mask_is_binary", ("volume 'training'", "slice 3", "expected {0, 1} or {0, 255}", "found {0, 128, 255}")),
    Fault("NaN pixels", "segmentation", lambda: _seg(_nan_in_slice_2),
          "image_finite", ("volume 'testing'", "slice 2", "NaN or infinite", "expected finite")),
    Fault("a blank slice", "segmentation", lambda: _seg(_set("training", image=lambda a: _with(a, 4, 7))),
          "image_std", ("volume 'training'", "slice 4", "standard deviation 0", "expected above 1e-06")),
    Fault("an empty mask", "segmentation", lambda: _seg(_set("testing", mask=lambda m: np.zeros_like(m))),
          "foreground", ("volume 'testing'", "mask foreground is 0.00% of the volume", "expected 1.00% to 50.00%")),
    Fault("too few slices", "segmentation",
          lambda: _seg(lambda v: v.update({k: (i[:1], m[:1]) for k, (i, m) in v.items()})),
          "slices", ("2 slices in all volumes", "at least 4 expected")),
]


# --- classification (endothelial-cell images in class folders) ------------------------------------------------

CLASSES = ["ec", "non_ec"]
CLASS_EXPECT = ClassificationExpectations(min_images_per_class=4, max_class_imbalance=2.0, min_side=16,
                                          allowed_channels=(1,))
CLASS_COUNTS = {"train": {"ec": 3, "non_ec": 3}, "test": {"ec": 2, "non_ec": 2}}


def _class_dataset(root: Path, counts=CLASS_COUNTS, size=(16, 16), channels=1) -> tuple[list, list, list]:
    rng = np.random.default_rng(0)
    files, labels, splits = [], [], []
    for split, per_class in counts.items():
        for label, n in per_class.items():
            for i in range(n):
                path = root / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                shape = size if channels == 1 else (*size, channels)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
                files.append(path), labels.append(label), splits.append(split)
    return files, labels, splits


def _cls(root: Path, change: Callable | None = None, **dataset) -> ValidationReport:
    files, labels, splits = _class_dataset(root, **dataset)
    if change is not None:
        change(files, labels, splits)
    return validate_classification_dataset(summarise_class_images(files, labels, splits), CLASSES, CLASS_EXPECT,
                                           splits=["train", "test"])


def _overwrite(index: int, array: np.ndarray):
    def change(files, labels, splits):
        Image.fromarray(array).save(files[index])
    return change


def _copy(source: int, target: int):
    def change(files, labels, splits):
        Path(files[target]).write_bytes(Path(files[source]).read_bytes())
    return change


def _relabel(index: int, label: str):
    def change(files, labels, splits):
        labels[index] = label
    return change


def _corrupt(index: int):
    def change(files, labels, splits):
        Path(files[index]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return change


CLASSIFICATION = [
    Fault("an unreadable image file", "classification", lambda root: _cls(root, _corrupt(1)),
          "readable", ("train/ec/1.png",)),
    Fault("colour images where grey ones are expected", "classification", lambda root: _cls(root, channels=3),
          "channels", ("train/ec/0.png (3 channels)", "outside [1]")),
    Fault("images smaller than the model takes", "classification", lambda root: _cls(root, size=(8, 8)),
          "min_side", ("smaller than 16 pixels", "train/ec/0.png (8x8)")),
    Fault("a blank image", "classification", lambda root: _cls(root, _overwrite(2, np.full((16, 16), 9, np.uint8))),
          "std", ("1 blank image", "train/ec/2.png")),
    Fault("images of another size", "classification",
          lambda root: _cls(root, _overwrite(0, np.arange(24 * 16, dtype=np.uint8).reshape(24, 16))),
          "size", ("16x16 (9 images)", "24x16 (1 image: ", "train/ec/0.png")),
    Fault("a label that is not a class", "classification", lambda root: _cls(root, _relabel(9, "ecc")),
          "classes", ("label 'ecc' is not one of the classes ['ec', 'non_ec'] (1 image)",)),
    Fault("a class missing from a split", "classification",
          lambda root: _cls(root, counts={"train": {"ec": 4, "non_ec": 3}, "test": {"non_ec": 2}}),
          "class_in_every_split", ("class 'ec' has no images in split 'test'",)),
    Fault("too few images of a class", "classification",
          lambda root: _cls(root, counts={"train": {"ec": 3, "non_ec": 2}, "test": {"ec": 2, "non_ec": 1}}),
          "min_images_per_class", ("class 'non_ec' has 3 images, fewer than 4",)),
    Fault("imbalanced classes", "classification",
          lambda root: _cls(root, counts={"train": {"ec": 8, "non_ec": 2}, "test": {"ec": 3, "non_ec": 2}}),
          "imbalance", ("the largest, 'ec', has 11 images", "the smallest, 'non_ec', 4", "ratio of 2.75, more than 2.0")),
    Fault("the same image in training and test", "classification", lambda root: _cls(root, _copy(0, 6)),
          "duplicate_across_splits", ("train/ec/0.png (ec, train) = ", "test/ec/0.png (ec, test)")),
    Fault("the same image under two labels", "classification", lambda root: _cls(root, _copy(0, 3)),
          "duplicate_conflicting_label", ("train/ec/0.png (ec, train) = ", "train/non_ec/0.png (non_ec, train)")),
]


# --- instance annotations (Mask R-CNN, COCO JSON) --------------------------------------------------------------

ANNOTATION_EXPECT = AnnotationExpectations(min_images=3, max_instances_per_image=2)
SQUARE = [[5, 5, 20, 5, 20, 15, 5, 15]]


def _coco_dataset(root: Path, n: int = 6) -> tuple[Path, dict]:
    images = root / "images"
    images.mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "colony"}]}
    for i in range(n):
        array = np.full((40, 60), i * 20, np.uint8)
        array[0, 0] = 255 - i  # each picture different
        Image.fromarray(array).save(images / f"i{i}.png")
        coco["images"].append({"id": i + 1, "file_name": f"i{i}.png", "height": 40, "width": 60})
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": SQUARE,
                                    "bbox": [5, 5, 15, 10]})
    return images, coco


def _ann(root: Path, change: Callable[[Path, dict], None] | None = None, n: int = 6,
         separate: tuple[str, str] | None = None) -> ValidationReport:
    images, coco = _coco_dataset(root, n)
    if change is not None:
        change(images, coco)
    index = split_images(coco, images, ImageSplitSettings(val_fraction=0.2, test_fraction=0.2, seed=0))
    if separate:  # a hand-made split that puts two files apart
        files = [image["file_name"] for image in coco["images"]]
        first, second = files.index(separate[0]), files.index(separate[1])
        index = copy.deepcopy(index)
        index["splits"][second] = next(s for s in ("train", "val", "test") if s != index["splits"][first])
    return validate_annotation_dataset(summarise_annotations(coco, images, index, ANNOTATION_EXPECT), ANNOTATION_EXPECT)


def _annotation(i: int, **values):
    def change(images, coco):
        coco["annotations"][i].update(values)
    return change


def _image_entry(i: int, **values):
    def change(images, coco):
        coco["images"][i].update(values)
    return change


def _add_annotations(n: int):
    def change(images, coco):
        for k in range(n):
            coco["annotations"].append({**coco["annotations"][0], "id": 100 + k})
    return change


def _same_image_id(images, coco):
    coco["images"][4]["id"] = 4  # i3.png's id; i4.png's annotation goes with it
    coco["annotations"][4]["image_id"] = 4


def _duplicate_picture(images, coco):
    (images / "copy.png").write_bytes((images / "i0.png").read_bytes())
    coco["images"].append({"id": 7, "file_name": "copy.png", "height": 40, "width": 60})
    coco["annotations"].append({**coco["annotations"][0], "id": 70, "image_id": 7})


ANNOTATIONS = [
    Fault("an image file missing", "annotations", lambda root: _ann(root, lambda images, coco: (images / "i2.png").unlink()),
          "file_exists", ("i2.png is not in",)),
    Fault("an unreadable image file", "annotations",
          lambda root: _ann(root, lambda images, coco: (images / "i3.png").write_bytes(b"not a png")),
          "readable", ("i3.png",)),
    Fault("an image of another size than annotated", "annotations", lambda root: _ann(root, _image_entry(1, width=61)),
          "size_matches", ("i1.png is 60x40, the annotations say 61x40",)),
    Fault("two images with one id", "annotations", lambda root: _ann(root, _same_image_id),
          "duplicate_image_id", ("i3.png", "i4.png", "id 4")),
    Fault("too many instances in an image", "annotations", lambda root: _ann(root, _add_annotations(2)),
          "instances", ("i0.png has 3 instances, outside [0, 2]",)),
    Fault("an unknown category", "annotations", lambda root: _ann(root, _annotation(0, category_id=5)),
          "unknown_category", ("i0.png annotation 1 has category 5, not among [1]",)),
    Fault("a polygon of two points", "annotations", lambda root: _ann(root, _annotation(1, segmentation=[[1, 1, 2, 2]])),
          "invalid_geometry", ("i1.png annotation 2: a polygon needs at least 3 (x, y) points, got 4 numbers",)),
    Fault("a polygon outside the image", "annotations",
          lambda root: _ann(root, _annotation(2, segmentation=[[50, 30, 70, 30, 70, 45, 50, 45]], bbox=[50, 30, 20, 15])),
          "outside_image", ("i2.png annotation 3: polygon spans x 50.0..70.0, y 30.0..45.0, outside the 60x40 image",)),
    Fault("a box that disagrees with its mask", "annotations", lambda root: _ann(root, _annotation(3, bbox=[40, 30, 5, 5])),
          "box_mismatch", ("i3.png annotation 4 has bbox [40, 30, 5, 5] but its mask spans",)),
    Fault("two annotations with one id", "annotations", lambda root: _ann(root, _annotation(4, id=4)),
          "duplicate_annotation_id", ("annotation 4: id used by 2 annotations",)),
    Fault("the same picture in two splits", "annotations",
          lambda root: _ann(root, _duplicate_picture, separate=("i0.png", "copy.png")),
          "duplicate_across_splits", ("copy.png", "i0.png")),
    Fault("too few images", "annotations", lambda root: _ann(root, n=2),
          "min_images", ("2 images, at least 3 needed",)),
]

FAULTS = SEGMENTATION + CLASSIFICATION + ANNOTATIONS


def _run(fault: Fault, root: Path) -> ValidationReport:
    return fault.breaks() if fault.suite == "segmentation" else fault.breaks(root)


@pytest.mark.parametrize("suite", ["segmentation", "classification", "annotations"])
def test_each_clean_dataset_passes(suite, tmp_path):
    report = {"segmentation": lambda: _seg(lambda v: None), "classification": lambda: _cls(tmp_path),
              "annotations": lambda: _ann(tmp_path)}[suite]()
    assert report.success, report.failures


@pytest.mark.parametrize("fault", FAULTS, ids=[f"{f.suite}: {f.name}" for f in FAULTS])
def test_a_fault_fails_its_one_check_and_names_what_was_expected_and_found(fault, tmp_path):
    report = _run(fault, tmp_path)
    assert not report.success
    assert failed_checks(report) == [fault.check], report.failures  # no cascade into unrelated expectations
    assert len(report.failures) == 1
    for words in fault.says:
        assert words in report.failures[0], (words, report.failures[0])


def test_the_catalogue_covers_at_least_twelve_kinds_each_once():
    assert len(FAULTS) >= 12
    assert len({(f.suite, f.check) for f in FAULTS}) == len(FAULTS)


def test_the_documentation_lists_every_fault():
    root = Path(__file__).parents[1]
    pages = "\n".join(path.read_text() for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))])
    missing = [f.name for f in FAULTS if f"| {f.name} |" not in pages]
    assert not missing, f"the documentation's dataset-fault table lacks {missing}"
