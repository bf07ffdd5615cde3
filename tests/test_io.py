import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellops.io import (
    ImageInputError,
    ImageTooLargeError,
    decode_image,
    encode_image,
    read_tiff_stack,
    to_unit_range,
    write_tiff_stack,
)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def test_png_and_tiff_round_trip(rng):
    image = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    stack = rng.integers(0, 65535, (3, 20, 30), dtype=np.uint16)
    png = decode_image(encode_image(image, "png"), max_pixels=10_000)
    tif = decode_image(encode_image(stack, "tiff"), max_pixels=10_000)
    assert png.format == "png" and np.array_equal(png.array, image)
    assert tif.format == "tiff" and np.array_equal(tif.array, stack)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty upload"),
        (b"just some text, not an image", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image, or a damaged one"),
        (b"II*\x00" + b"\x00" * 40, "corrupt or unreadable TIFF"),
    ],
)
def test_unusable_bytes_are_named(data, match):
    with pytest.raises(ImageInputError, match=match):
        decode_image(data, max_pixels=1000)


def test_colour_png_is_refused():
    with pytest.raises(ImageInputError, match="colour mode 'RGB'"):
        decode_image(_png(np.zeros((8, 8, 3), np.uint8)), max_pixels=1000)


def test_wrong_dimensionality_is_refused():
    with pytest.raises(ImageInputError, match="wrong dimensionality: got a 4-D"):
        decode_image(_tiff(np.zeros((2, 2, 8, 8), np.uint8)), max_pixels=10_000)
    with pytest.raises(ImageInputError, match="wrong dimensionality"):
        decode_image(_tiff(np.zeros((3, 8, 8), np.uint8), photometric="minisblack"), max_pixels=10_000,
                     allowed_ndim=(2,))


def test_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="too large: 4096 pixels, the limit is 1000"):
        decode_image(_tiff(np.zeros((64, 64), np.uint8)), max_pixels=1000)
    with pytest.raises(ImageTooLargeError):
        decode_image(_png(np.zeros((64, 64), np.uint8)), max_pixels=1000)


def test_unsupported_dtype_and_non_finite_are_refused():
    with pytest.raises(ImageInputError, match="unsupported dtype int32"):
        decode_image(_tiff(np.zeros((8, 8), np.int32)), max_pixels=1000)
    bad = np.zeros((8, 8), np.float32)
    bad[0, 0] = np.inf
    with pytest.raises(ImageInputError, match="NaN or infinite"):
        decode_image(_tiff(bad), max_pixels=1000)


def test_to_unit_range_by_dtype():
    assert to_unit_range(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert to_unit_range(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    assert to_unit_range(np.array([-0.005, 0.5, 1.005])).tolist() == [0.0, 0.5, 1.0]  # rounding, clipped
    with pytest.raises(ImageInputError, match=r"float values in \[-1, 3\] have no fixed range"):
        to_unit_range(np.array([-1.0, 0.5, 3.0]))  # never clipped to white: refused, naming the way out
    with pytest.raises(ImageInputError, match="int64"):
        to_unit_range(np.array([1, 2]))


def test_tiff_stack_files(tmp_path, rng):
    stack = rng.integers(0, 255, (4, 16, 16), dtype=np.uint8)
    path = write_tiff_stack(tmp_path / "s.tif", stack)
    assert np.array_equal(read_tiff_stack(path), stack)
    with pytest.raises(ImageInputError, match="no such file"):
        read_tiff_stack(tmp_path / "missing.tif")
    (tmp_path / "bad.tif").write_bytes(b"nonsense")
    with pytest.raises(ImageInputError, match="bad.tif: not a readable TIFF"):
        read_tiff_stack(tmp_path / "bad.tif")
