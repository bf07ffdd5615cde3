"""The classical analyses served over real HTTP (``bentoml serve`` from the source tree): tables as JSON and
overlays as PNG equal to what the library computes in process, and the hostile-request corpus refused on
every upload endpoint."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from cellops.classical.colonies import measure_colonies
from cellops.io import to_grey
from cellops.synthetic.calcium import generate_calcium_movie
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.nuclei import generate_nuclei_image
from helpers import png_bytes, served_bento
from hostile_corpus import probe

ROOT = Path(__file__).resolve().parents[2]
BYTE_LIMIT = 3_000_000


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    temp = tmp_path_factory.mktemp("server_tmp")
    env = {**os.environ, "TMPDIR": str(temp), "CELLOPS_MAX_REQUEST_BYTES": str(BYTE_LIMIT),
           "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with served_bento("bento.classical.service:ClassicalAnalyses", ROOT, env) as base:
        yield base, temp


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def test_colonies_nuclei_and_calcium_answer_tables_and_overlays(service):
    base, _ = service
    colonies = generate_colony_image((384, 384), seed=3)
    answer = httpx.post(f"{base}/colonies", files={"image": ("c.png", png_bytes(colonies.image))}, timeout=120)
    assert answer.status_code == 200, answer.text
    expected = measure_colonies(colonies.image)
    assert answer.json()["count"] == len(expected.table) >= 2
    assert [row["area"] for row in answer.json()["colonies"]] == pytest.approx(expected.table["area"].tolist())
    overlay = httpx.post(f"{base}/colonies_overlay", files={"image": ("c.png", png_bytes(colonies.image))}, timeout=120)
    assert overlay.status_code == 200 and overlay.headers["x-colonies"] == str(len(expected.table))
    assert np.asarray(Image.open(io.BytesIO(overlay.content))).shape == (384, 384, 3)
    # A colour upload is measured on the float mean of its channels (cellops.io.to_grey), as the library does.
    rgb = np.dstack([colonies.image, colonies.image // 2, colonies.image])
    answer = httpx.post(f"{base}/colonies", files={"image": ("c.png", png_bytes(rgb))}, timeout=120)
    assert answer.status_code == 200, answer.text
    expected = measure_colonies(to_grey(rgb))
    assert [row["area"] for row in answer.json()["colonies"]] == pytest.approx(expected.table["area"].tolist())

    nuclei = generate_nuclei_image("Control", (256, 256), seed=2, n_nuclei=12)
    answer = httpx.post(f"{base}/nuclei", files={"image": ("n.png", png_bytes(nuclei.image))}, timeout=120).json()
    assert abs(answer["count"] - int(nuclei.labels.max())) <= 2 and answer["diameter_source"] == "measured"
    assert {"circularity", "solidity", "area"} <= set(answer["nuclei"][0])
    plain_nuclei = answer

    movie = generate_calcium_movie("Film", (128, 128), n_frames=40, seed=1, n_cells=6)
    answer = httpx.post(f"{base}/calcium", files={"movie": ("m.tif", _tiff(movie.movie))}, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["cells"] >= 4 and len(next(iter(body["dff"].values()))) == 40
    short = httpx.post(f"{base}/calcium", files={"movie": ("m.tif", _tiff(movie.movie[:5]))}, timeout=60)
    assert short.status_code == 400 and "frames" in short.json()["error"]
    rgb = httpx.post(f"{base}/calcium", files={"movie": ("rgb.tif", _tiff(np.zeros((64, 64, 3), np.uint8)))},
                     timeout=60)
    assert rgb.status_code == 400, rgb.text

    # A two-channel OME-TIFF: refused naming its channels, measured in µm once one is chosen (by name or index).
    noise = np.random.default_rng(0).integers(0, 40, nuclei.image.shape).astype(np.uint16)
    ome = io.BytesIO()
    tifffile.imwrite(ome, np.stack([noise, nuclei.image]), ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.4, "PhysicalSizeY": 0.4, "Channel": {"Name": ["GFP", "DAPI"]}})
    upload = {"image": ("n.ome.tif", ome.getvalue())}
    refused = httpx.post(f"{base}/nuclei", files=upload, timeout=60)
    assert refused.status_code == 400 and "GFP" in refused.text and "DAPI" in refused.text, refused.text
    assert "channel=NAME|INDEX" in refused.text
    unknown = httpx.post(f"{base}/nuclei", files=upload, data={"channel": "mCherry"}, timeout=60)
    assert unknown.status_code == 400 and "mCherry" in unknown.text, unknown.text
    for choice in ("DAPI", "1"):
        chosen = httpx.post(f"{base}/nuclei", files=upload, data={"channel": choice}, timeout=120)
        assert chosen.status_code == 200, chosen.text
        body = chosen.json()
        assert body["pixel_size_um"] == 0.4 and body["count"] == plain_nuclei["count"]
        assert body["nuclei"][0]["area_um2"] == pytest.approx(body["nuclei"][0]["area"] * 0.16)
    assert plain_nuclei["pixel_size_um"] is None and plain_nuclei["nuclei"][0]["area_um2"] is None
    png_channel = httpx.post(f"{base}/nuclei", files={"image": ("n.png", png_bytes(nuclei.image))},
                             data={"channel": "DAPI"}, timeout=60)
    assert png_channel.status_code == 400 and "only a TIFF" in png_channel.text

    meta = httpx.post(f"{base}/metadata", json={}, timeout=30).json()
    assert meta["colonies"]["colony_diameter_px"] == "auto" and "git_commit" in meta["bento_build"]


@pytest.mark.parametrize("route,field", [("colonies", "image"), ("nuclei_overlay", "image"), ("calcium", "movie")])
def test_hostile_requests_are_refused_naming_the_problem(service, route, field):
    base, temp = service
    if field == "movie":
        valid = _tiff(generate_calcium_movie("Film", (64, 64), n_frames=30, seed=1, n_cells=3).movie)
    else:
        valid = png_bytes(generate_colony_image((128, 128), seed=1, n_colonies=(1, 1), radius=(30, 40)).image)
    statuses = probe(base, route, field, valid, kind="movie analysis" if field == "movie" else "picture analysis",
                     over_byte_limit=BYTE_LIMIT + 1, temp_dir=temp,
                     stacks=field == "movie")
    assert len(statuses) >= 40 and max(statuses.values()) < 500
