"""Class-folder datasets of the endothelial-cell classifier: reading every format labs export into model input."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellops.data_version import file_md5
from cellops.intensity import Normalization
from cellops.classifier.data import list_class_folders, load_class_images, to_model_input
from cellops.io import ImageInputError

#: Fixed scaling by the dtype's range: what these tests of the readers check (percentile scaling: tests/test_intensity.py).
FIXED = Normalization(mode="dtype")


def _picture(height: int = 24, width: int = 24) -> np.ndarray:
    """A smooth 16-bit picture (a gradient and a bright blob) whose 8-bit version differs by rounding only."""
    y, x = np.mgrid[0:height, 0:width]
    blob = np.exp(-((y - height / 2) ** 2 + (x - width / 3) ** 2) / 30.0)
    return np.round((0.2 + 0.5 * x / width + 0.3 * blob) * 65535).astype(np.uint16)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _tif(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Grey pages: three uint8 planes would otherwise be stored (and read back) as planar RGB.
    tifffile.imwrite(path, array, photometric="minisblack")
    return path


@pytest.fixture
def odd_files(tmp_path):
    """One file of every kind a lab folder may hold, and the model input each usable one must give (grey, 8x8)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((16, 16, 1), 7, np.uint8)], axis=2)
    files = {
        "grey8": _png(tmp_path / "grey8.png", np.full((16, 16), 51, np.uint8)),
        "grey16_tif": _tif(tmp_path / "grey16.tif", np.full((16, 16), 13107, np.uint16)),
        "rgb": _png(tmp_path / "rgb.png", rgb),
        "rgba": _png(tmp_path / "rgba.png", rgba),
        "float_unit": _tif(tmp_path / "float_unit.tif", np.full((16, 16), 0.25, np.float32)),
        "float_wide": _tif(tmp_path / "float_wide.tif", np.linspace(-100, 300, 256, dtype=np.float32).reshape(16, 16)),
        "empty": tmp_path / "empty.png",
        "text": tmp_path / "notes_renamed.png",
        "stack": _tif(tmp_path / "stack.tif", rng.integers(0, 255, (3, 16, 16), dtype=np.uint8)),
        "nan": _tif(tmp_path / "nan.tif", np.full((16, 16), np.nan, np.float32)),
        "grey_alpha": _png(tmp_path / "grey_alpha.png", np.stack([np.full((16, 16), 102, np.uint8),
                                                                  np.full((16, 16), 9, np.uint8)], axis=-1)),
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("these are my notes, not a picture")
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    return files, luma


def test_every_usable_format_becomes_float_model_input_and_the_rest_is_named(odd_files):
    files, luma = odd_files
    images, errors = load_class_images(list(files.values()), channels=1, size=16, normalization=FIXED)
    assert images.dtype == np.float32 and images.shape == (6, 1, 16, 16)
    grey8, grey16, rgb, rgba, float_unit, grey_alpha = images[:, 0]
    np.testing.assert_allclose(grey_alpha, 0.4, atol=1e-6)  # grey + alpha: the grey, alpha dropped
    np.testing.assert_allclose(grey8, 0.2, atol=1e-6)  # 51 / 255
    np.testing.assert_allclose(grey16, 0.2, atol=1e-6)  # 13107 / 65535: the same grey level at 16 bit
    np.testing.assert_allclose(rgb, luma, atol=1e-6)  # ITU-R 601 luma
    np.testing.assert_allclose(rgba, luma, atol=1e-6)  # alpha dropped
    np.testing.assert_allclose(float_unit, 0.25)  # already in [0, 1]: kept
    failed = {path.name: message for path, message in errors}
    assert list(failed) == ["float_wide.tif", "empty.png", "notes_renamed.png", "stack.tif", "nan.tif"]
    # Fixed scaling has no range for floats outside [0, 1]: refused, never clipped (percentile mode takes them).
    assert "float values in [-100, 300] have no fixed range" in failed["float_wide.tif"]
    for name, message in failed.items():
        assert name in message  # every message names its file
    assert "empty file" in failed["empty.png"]
    assert "not a readable image" in failed["notes_renamed.png"] or "cannot identify" in failed["notes_renamed.png"]
    assert "stack of 3 planes" in failed["stack.tif"]
    assert "NaN or infinite" in failed["nan.tif"]


def test_grey_is_repeated_and_colour_kept_for_three_channels(odd_files):
    files, _ = odd_files
    images, errors = load_class_images([files["grey8"], files["rgb"]], channels=3, size=16, normalization=FIXED)
    assert errors == [] and images.shape == (2, 3, 16, 16)
    assert np.array_equal(images[0, 0], images[0, 2]) and np.allclose(images[0], 0.2)
    rgb = np.asarray(Image.open(files["rgb"])).astype(np.float32) / 255
    np.testing.assert_allclose(images[1], rgb.transpose(2, 0, 1), atol=1e-6)


def test_jpeg_is_read(tmp_path):
    path = tmp_path / "cells.jpg"
    Image.fromarray(np.full((20, 20, 3), (200, 100, 50), np.uint8)).save(path, quality=95)
    images, errors = load_class_images([path], channels=1, size=10, normalization=FIXED)
    assert errors == [] and images.shape == (1, 1, 10, 10)
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(images[0, 0], expected, atol=3 / 255)  # lossy, but close


def test_non_square_images_are_centre_cropped_not_stretched():
    image = np.zeros((10, 30), np.uint8)
    image[:, 10:20] = 255  # the centred square is all white, the sides black
    wide = to_model_input(image, channels=1, size=10, normalization=FIXED, source="wide.png")
    assert np.array_equal(wide, np.ones((1, 10, 10), np.float32))
    tall = to_model_input(np.ascontiguousarray(image.T), channels=1, size=5, normalization=FIXED)
    assert tall.shape == (1, 5, 5) and np.all(tall == 1.0)


def test_eight_and_sixteen_bit_versions_of_a_picture_give_the_same_input(tmp_path):
    picture16 = _picture(24, 36)
    picture8 = np.round(picture16 / 257).astype(np.uint8)
    files = [_tif(tmp_path / "p16.tif", picture16), _png(tmp_path / "p16.png", picture16),
             _png(tmp_path / "p8.png", picture8), _tif(tmp_path / "p8.tif", picture8)]
    for size in (24, 12):  # as is, and shrunk
        images, errors = load_class_images(files, channels=1, size=size, normalization=FIXED)
        assert errors == [] and images.shape == (4, 1, size, size)
        assert np.abs(images - images[0]).max() <= 1 / 255
        assert images[0].std() > 0.05  # a real picture, not a blank that would pass trivially


@pytest.mark.parametrize("shape", [(2, 2, 8, 8), (0, 8), (2, 8, 8)])
def test_stacks_and_empty_arrays_are_refused_naming_the_source(shape):
    with pytest.raises(ImageInputError, match="upload.tif"):
        to_model_input(np.zeros(shape, np.uint8), channels=1, size=8, normalization=FIXED, source="upload.tif")


def test_big_endian_sixteen_bit_is_scaled_like_native():
    native = _picture()
    np.testing.assert_array_equal(to_model_input(native.astype(">u2"), channels=1, size=12, normalization=FIXED),
                                  to_model_input(native, channels=1, size=12, normalization=FIXED))


def test_caller_mistakes_are_value_errors():
    with pytest.raises(ValueError, match="channels must be 1"):
        to_model_input(np.zeros((8, 8), np.uint8), channels=4, size=8, normalization=FIXED)
    with pytest.raises(ImageInputError, match="unsupported dtype int32"):
        to_model_input(np.zeros((8, 8), np.int32), channels=1, size=8, normalization=FIXED)


def test_file_md5_finds_the_same_picture_under_another_name(tmp_path):
    a = _png(tmp_path / "a.png", _picture().astype(np.uint16))
    b = tmp_path / "copy" / "b.png"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    c = _png(tmp_path / "c.png", _picture()[::-1].copy())
    assert file_md5(a) == file_md5(b) != file_md5(c)


def test_class_folders_ignore_hidden_folders_and_notes(tmp_path):
    for name in ("ec/a.png", "ec/b.tif", "non_ec/c.jpg", ".ipynb_checkpoints/d.png", ".trash/e.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "ec" / "notes.txt").write_text("imaged on Tuesday")
    (tmp_path / "README.md").write_text("a file at the root is not a class")
    data = list_class_folders(tmp_path)
    assert data.classes == ["ec", "non_ec"]
    assert data.counts() == {"ec": 2, "non_ec": 1}
    assert [f.name for f in data.files] == ["a.png", "b.tif", "c.jpg"]


def test_a_single_class_folder_is_an_error(tmp_path):
    (tmp_path / "ec").mkdir()
    (tmp_path / "ec" / "a.png").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(FileNotFoundError, match=r"1 class folder\(s\) \['ec'\]; a classifier needs at least two"):
        list_class_folders(tmp_path)


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "ec").mkdir()
    (tmp_path / "ec" / "a.png").write_bytes(b"x")
    (tmp_path / "non_ec").mkdir()
    (tmp_path / "non_ec" / "notes.txt").write_text("no images yet")
    with pytest.raises(FileNotFoundError, match="non_ec: no images .* in class 'non_ec'"):
        list_class_folders(tmp_path)
