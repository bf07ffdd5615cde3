import numpy as np
import pytest

from cellops.unet.validation import SegmentationExpectations, validate_segmentation_dataset


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


def test_full_mask_is_above_the_foreground_bound(good):
    # The empty mask (below the bound) is in tests/test_dataset_faults.py, with every other fault.
    image, mask = good
    assert "volume_foreground_fraction" in _failed({"training": (image, np.full_like(mask, 255))})
