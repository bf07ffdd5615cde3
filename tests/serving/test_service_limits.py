"""Uploads and request limits of every service: one reader (:func:`bento.common.read_upload`) decodes every upload
and answers 413 for too many pixels, 400 for anything else unusable; the environment can tighten the limits a
service was built with, never loosen them; an empty value is ignored and a value that is not a positive whole
number stops the service as it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bentoml.exceptions import InvalidArgument

from bento.common import (MAX_BYTES_ENV, MAX_PIXELS_ENV, PayloadTooLarge, env_limit, max_pixels, max_request_bytes,
                          read_upload, upload_errors)
from cellops.errors import ImageInputError
from cellops.intensity import Normalization
from cellops.io import encode_image, to_grey
from hostile_corpus import _png, _tiff

ROOT = Path(__file__).resolve().parents[2]


def test_the_environment_only_tightens_the_stored_limits(monkeypatch):
    limits = {"max_pixels": 1000, "max_request_bytes": 5000}
    monkeypatch.setenv(MAX_PIXELS_ENV, "10000000")
    monkeypatch.setenv(MAX_BYTES_ENV, "10000000")
    assert (max_pixels(limits), max_request_bytes(limits)) == (1000, 5000)  # above the stored limit: no effect
    monkeypatch.setenv(MAX_PIXELS_ENV, "10")
    monkeypatch.setenv(MAX_BYTES_ENV, " 20 ")
    assert (max_pixels(limits), max_request_bytes(limits)) == (10, 20)
    monkeypatch.setenv(MAX_PIXELS_ENV, "")
    monkeypatch.setenv(MAX_BYTES_ENV, "")
    assert (max_pixels(limits), max_request_bytes(limits)) == (1000, 5000)  # empty: ignored
    monkeypatch.delenv(MAX_BYTES_ENV)
    assert max_request_bytes({}) == 64 * 2**20  # the default when the bento stored none


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "1e6"])
def test_a_limit_that_is_not_a_positive_whole_number_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("CELLOPS_SOME_LIMIT", value)
    with pytest.raises(ValueError, match=f"CELLOPS_SOME_LIMIT='{value}' is not a positive whole number"):
        env_limit(100, "CELLOPS_SOME_LIMIT")


#: Imports the classical service (as ``bentoml serve`` does when it starts) and prints its limits and the status its
#: image reader gives a 40x40 image and a PNG whose header claims 6000x5000 pixels (over the stored 25 million).
_CLASSICAL = """
import json
import numpy as np
from bento.classical.service import LIMITS, ClassicalAnalyses
from bento.common import PayloadTooLarge
from hostile_corpus import _png, _png_claiming

def status(data):
    try:
        ClassicalAnalyses.inner._image(data)
    except PayloadTooLarge:
        return 413
    except Exception:
        return 400
    return 200

print(json.dumps({"limits": LIMITS, "40x40": status(_png(np.zeros((40, 40), np.uint8))),
                  "6000x5000": status(_png_claiming(6000, 5000))}))
"""


def _classical_limits(**env: str) -> subprocess.CompletedProcess:
    """Run :data:`_CLASSICAL` with ``env``."""
    return subprocess.run([sys.executable, "-c", _CLASSICAL], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                               **env})


def _answer(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_classical_service_follows_the_same_rule():
    loosened = _answer(_classical_limits(**{MAX_PIXELS_ENV: str(10**12), MAX_BYTES_ENV: ""}))
    assert loosened["limits"]["max_pixels"] == 25_000_000 and loosened["limits"]["max_request_bytes"] == 256 * 2**20
    assert (loosened["40x40"], loosened["6000x5000"]) == (200, 413)  # above the stored limit: still refused
    tightened = _answer(_classical_limits(**{MAX_PIXELS_ENV: "1000", MAX_BYTES_ENV: "2000"}))
    assert tightened["limits"]["max_pixels"] == 1000 and tightened["limits"]["max_request_bytes"] == 2000
    assert (tightened["40x40"], tightened["6000x5000"]) == (413, 413)  # 1600 pixels: over the tightened limit
    refused = _classical_limits(**{MAX_BYTES_ENV: "lots"})
    assert refused.returncode != 0 and f"{MAX_BYTES_ENV}='lots' is not a positive whole number" in refused.stderr


def test_every_service_reads_its_uploads_through_the_one_reader():
    for service in sorted(ROOT.glob("bento/*/service.py")):
        source = service.read_text()
        assert "read_upload(" in source, service
        for own in ("decode_image(", "decode_picture(", "except ImageInputError", "except ImageTooLargeError",
                    "LUMA_WEIGHTS", "to_grey("):
            assert own not in source, f"{service.relative_to(ROOT)} decodes or maps errors itself ({own!r})"


GREY = np.tile(np.arange(64, dtype=np.uint8), (64, 1)) * 4  # a ramp: every normalisation can scale it
STACK = np.stack([GREY] * 5)


@pytest.mark.parametrize("wanted,valid,normalization", [
    ("image or stack", encode_image(GREY, "png"), Normalization()),
    ("image or stack", encode_image(STACK, "tiff"), Normalization()),
    ("stack", encode_image(STACK, "tiff"), None),
    ("picture", encode_image(GREY, "png"), Normalization(mode="dtype")),
    ("grey picture", encode_image(GREY, "png"), None),
])
def test_the_reader_answers_413_for_too_many_pixels_and_400_for_a_bad_upload(wanted, valid, normalization):
    assert read_upload(valid, 10**6, wanted, normalization=normalization).array.size >= GREY.size
    with pytest.raises(PayloadTooLarge, match="too large") as too_large:
        read_upload(valid, GREY.size - 1, wanted, normalization=normalization)
    assert too_large.value.error_code == 413
    for bad in (b"", b"just some notes", valid[: len(valid) // 2]):
        with pytest.raises(InvalidArgument) as refused:
            read_upload(bad, 10**6, wanted, normalization=normalization, name="images[1] (b.png)")
        assert refused.value.error_code == 400 and str(refused.value).startswith("images[1] (b.png): ")


def test_the_reader_checks_what_the_endpoint_takes():
    with pytest.raises(InvalidArgument, match="dimensionality.*; a movie is a stack$"):
        read_upload(encode_image(GREY, "png"), 10**6, "stack", hint="a movie is a stack")
    with pytest.raises(InvalidArgument, match="colour"):  # grey-level uploads only
        read_upload(_png(np.dstack([GREY] * 3)), 10**6, "image or stack", normalization=Normalization())
    with pytest.raises(InvalidArgument, match="^image: constant image"):  # the model could not scale it
        read_upload(_png(np.full((16, 16), 7, np.uint8)), 10**6, "picture", normalization=Normalization(), name="image")
    float_picture = _tiff(GREY.astype(np.float32), photometric="minisblack")
    assert read_upload(float_picture, 10**6, "picture", normalization=Normalization()).array.dtype == np.float32
    with pytest.raises(InvalidArgument, match="float image with values from 0 to 252"):  # intensities in [0, 1]
        read_upload(float_picture, 10**6, "grey picture")
    with pytest.raises(ValueError, match="unknown upload 'movie'"):
        read_upload(float_picture, 10**6, "movie")


def test_a_colour_picture_is_made_grey_by_the_float_mean_of_its_channels():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 31
    for data in (_png(rgb), _tiff(rgb, photometric="rgb"), _png(np.dstack([rgb, np.full((16, 16), 9, np.uint8)]))):
        grey = read_upload(data, 10**6, "grey picture").array
        assert grey.shape == (16, 16) and grey.dtype == np.float64
        assert grey[0, 0] == pytest.approx(61 / 3)  # the mean, fractions kept (no cast to the upload's uint8)
        np.testing.assert_array_equal(grey, to_grey(rgb))
    grey_as_colour = read_upload(_png(np.dstack([GREY] * 3)), 10**6, "grey picture").array
    np.testing.assert_array_equal(grey_as_colour, GREY)  # a grey picture stored as RGB keeps its values
    np.testing.assert_array_equal(read_upload(_png(GREY), 10**6, "grey picture").array, GREY)
    float_rgb = np.dstack([GREY / 255.0, GREY / 255.0, np.full((64, 64), 3.0)]).astype(np.float32)
    with pytest.raises(InvalidArgument, match="float image with values from 0 to 3"):  # every channel checked
        read_upload(_tiff(float_rgb, photometric="rgb"), 10**6, "grey picture")


def test_one_mapping_names_the_upload_once():
    with pytest.raises(InvalidArgument, match="^image: too dark$"):
        with upload_errors("image"):
            raise ImageInputError("image: too dark")
    with pytest.raises(InvalidArgument, match="^too dark; send a brighter one$"):
        with upload_errors(hint="send a brighter one"):
            raise ImageInputError("too dark")
    with upload_errors("image"):  # nothing raised: nothing answered
        pass


def _ome_upload(channels: list[str], shape=(2, 32, 32)) -> bytes:
    import io

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.arange(np.prod(shape), dtype=np.uint16).reshape(shape), ome=True,
                     photometric="minisblack", metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                         "Channel": {"Name": channels}})
    return buffer.getvalue()


def test_a_multichannel_upload_names_its_channels_and_how_to_choose_one():
    from bento.common import microscope_upload, read_upload

    upload = _ome_upload(["GFP", "DAPI"])
    with pytest.raises(InvalidArgument, match="2 channels \\(0: GFP, 1: DAPI\\).*this endpoint reads one channel"):
        read_upload(upload, 10_000, "image or stack", name="image")  # an endpoint without a channel field
    with pytest.raises(InvalidArgument, match="form field channel=NAME\\|INDEX"):
        read_upload(upload, 10_000, "grey picture", name="image", channel="")
    chosen = read_upload(upload, 10_000, "grey picture", name="image", channel="DAPI")
    assert chosen.array.shape == (32, 32) and chosen.pixel_size_um == 0.5
    assert chosen.array[0, 0] == 32 * 32  # the second plane
    with pytest.raises(PayloadTooLarge):
        microscope_upload(upload, 1000, channel="DAPI")
