import numpy as np
import pytest

from cellops.validation import SegmentationExpectations, validate_segmentation_dataset


@pytest.fixture(scope="module")
def good(small_volume):
    return small_volume.image, small_volume.mask


def _failed(volumes, **expectations):
    report = validate_segmentation_dataset(volumes, SegmentationExpectations(**expectations))
    assert not report.success
    return "\n".join(report.failures)


def test_valid_dataset_passes_and_builds_data_docs(good, tmp_path):
    report = validate_segmentation_dataset({"training": good, "testing": good}, data_docs_dir=tmp_path)
    assert report.success, report.failures
    assert report.failures == []
    assert report.data_docs is not None and report.data_docs.is_file()
    assert len(report.results["results"]) == 10


def test_shape_mismatch_fails(good):
    image, mask = good
    assert "shape_matches" in _failed({"training": (image, mask[:, :-1])})


def test_unsupported_image_dtype_fails(good):
    image, mask = good
    assert "image_dtype" in _failed({"training": (image.astype(np.int32), mask)})


def test_non_binary_ground_truth_fails(good):
    image, mask = good
    bad = mask.copy()
    bad[0, 0, :5] = 128
    text = _failed({"training": (image, bad)})
    assert "mask_is_binary" in text and "image_dtype" not in text


def test_foreground_fraction_out_of_range_fails(good):
    image, mask = good
    assert "volume_foreground_fraction" in _failed({"training": (image, np.zeros_like(mask))})
    assert "volume_foreground_fraction" in _failed({"training": (image, np.full_like(mask, 255))})


def test_constant_or_empty_slice_fails(good):
    image, mask = good
    bad = image.copy()
    bad[2] = 0
    assert "image_std" in _failed({"training": (bad, mask)})


def test_nan_fails(good):
    image, mask = good
    bad = image.astype(np.float32) / 255
    bad[1, 3, 3] = np.nan
    assert "image_finite" in _failed({"training": (bad, mask)})


def test_two_dimensional_volume_fails(good):
    image, mask = good
    assert "ndim" in _failed({"training": (image[0], mask[0])})


def test_too_few_slices_fails(good):
    image, mask = good
    assert "row_count" in _failed({"training": (image[:2], mask[:2])}, min_slices=5)
