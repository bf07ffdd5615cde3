"""Hostile requests every cellops endpoint that takes files must survive: each is answered with a 4xx and a JSON
``{"error": message}`` naming the problem (or, for unusual but valid pictures, a 2xx), never a 500, a stack
trace or a server path; the next valid request gets the same bytes as before, and no temporary file is left.
Cases that are unusual rather than bad (a palette PNG, a float TIFF on a 0-255 scale) get one stated answer per kind
of endpoint (:data:`ENDPOINT_KINDS`): a regression that starts refusing a 16-bit PNG, or taking a colour TIFF where
grey is needed, fails.

``hostile_requests(field)`` builds the corpus for an endpoint whose file field is ``field``; ``probe(...)``
sends it and checks every answer.
"""

from __future__ import annotations

import io
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

#: Too small an image, or (for an endpoint taking stacks) a 2-D image: either names the problem.
SMALL = ("too small", "dimensionality")

#: What no answer may contain: a traceback, a server path, a memory address.
LEAKS = re.compile(r"Traceback|site-packages|/tmp/|/work/|/home/|\.py\b|0x[0-9a-f]{6,}")


#: The kinds of endpoint that take files, by how they decode: the U-Net (grey images and stacks, floats of any range:
#: its percentile normalisation scales them), the classifier and Mask R-CNN (grey or colour pictures, floats of any
#: range), the classical image analyses (pictures converted to grey, floats read as intensities in [0, 1]) and the
#: calcium analysis (grey stacks only, floats in [0, 1]).
ENDPOINT_KINDS = ("grey model", "picture model", "picture analysis", "movie analysis")


def _answers(grey_model: int, picture_model: int, picture_analysis: int, movie_analysis: int) -> dict[str, int]:
    return dict(zip(ENDPOINT_KINDS, (grey_model, picture_model, picture_analysis, movie_analysis)))


@dataclass
class HostileRequest:
    """One bad (or unusual) request: ``httpx.post`` keyword arguments, what must come back."""

    name: str
    request: dict
    refuse: bool = True  # False: an unusual picture, answered as ``answers`` states for each kind of endpoint
    answers: dict[str, int] = field(default_factory=dict)  # endpoint kind -> status, for the cases not refused
    message: str | tuple[str, ...] = ""  # a 4xx answer must contain this (or one of these; case-insensitive)
    statuses: tuple[int, ...] = (400, 413, 415, 422)
    extra_headers: dict = field(default_factory=dict)


def _png(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _tiff(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one tiny compressed row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _tiff_claiming(width: int, height: int) -> bytes:
    """A TIFF whose tags claim a ``width`` x ``height`` 8-bit image, with a few bytes of data."""
    data = bytearray(_tiff(np.zeros((8, 8), np.uint8)))
    as_text = bytes(data)
    for tag, value in ((256, width), (257, height)):  # ImageWidth, ImageLength (tifffile writes them as SHORT/LONG)
        for kind in (3, 4):
            entry = tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + (1).to_bytes(4, "little")
            at = as_text.find(entry)
            if at >= 0:
                data[at + 2:at + 4] = (4).to_bytes(2, "little")
                data[at + 8:at + 12] = value.to_bytes(4, "little")
    return bytes(data)


def _files(field_name: str, name: str, data: bytes, content_type: str = "application/octet-stream") -> dict:
    return {"files": {field_name: (name, data, content_type)}}


def hostile_requests(field_name: str, *, over_byte_limit: int, valid: bytes, stacks: bool = False
                     ) -> list[HostileRequest]:
    """The corpus for an endpoint taking its file in ``field_name``: request-level problems, then files.

    ``over_byte_limit`` : a body size the server must refuse (its byte limit plus one); ``valid`` : the bytes of
    a valid picture (used to make otherwise-valid requests that break one rule); ``stacks`` : the endpoint takes
    (frames, rows, columns) stacks only, so the TIFFs with bad values are stacks of 20 such frames (a 2-D image
    would be refused for its dimensionality before its values are looked at).
    """
    def tiff_of(array: np.ndarray) -> bytes:
        return _tiff(np.stack([array] * 20) if stacks else array, photometric="minisblack")

    rng = np.random.default_rng(0)
    grey = (rng.random((64, 64)) * 255).astype(np.uint8)
    png = _png(grey)
    # Unusual encodings of the valid picture itself (so that an analysis that finds nothing in noise answers for
    # the encoding, not for the content); noise where the valid upload is not one grey picture (a movie).
    try:
        picture = np.asarray(Image.open(io.BytesIO(valid)))
    except Exception:  # noqa: BLE001 - a TIFF stack or other bytes: noise stands in
        picture = grey
    if picture.ndim != 2 or picture.dtype != np.uint8 or stacks:
        picture = grey
    jpeg = io.BytesIO()
    Image.fromarray(grey).save(jpeg, format="JPEG")
    stack = _tiff(np.stack([grey] * 4), photometric="minisblack")
    mixed = io.BytesIO()
    with tifffile.TiffWriter(mixed) as writer:
        writer.write(grey, photometric="minisblack")
        writer.write(grey[:32, :48], photometric="minisblack")
    boundary = "cellopsboundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png
    palette_png = io.BytesIO()
    Image.fromarray(picture).convert("P").save(palette_png, format="PNG")
    gif = io.BytesIO()
    Image.fromarray(grey).convert("P").save(gif, format="GIF")
    bmp = io.BytesIO()
    Image.fromarray(grey).save(bmp, format="BMP")
    file = lambda name, data, **kw: _files(field_name, name, data, **kw)  # noqa: E731
    cases = [
        # The request itself.
        HostileRequest("empty body", {"content": b""}, message="multipart", statuses=(400, 415)),
        HostileRequest("JSON body", {"json": {"image": "cells.png"}}, message="multipart", statuses=(415,)),
        HostileRequest("text body", {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
                       message="multipart", statuses=(415,)),
        HostileRequest("image as raw body", {"content": valid, "headers": {"Content-Type": "image/png"}},
                       message="multipart", statuses=(415,)),
        HostileRequest("multipart without boundary",
                       {"content": part, "headers": {"Content-Type": "multipart/form-data"}}, message="boundary"),
        HostileRequest("multipart cut short", {"content": part[:-20], "headers": {
            "Content-Type": f"multipart/form-data; boundary={boundary}"}}, message="multipart"),
        HostileRequest("multipart with no parts", {"content": f"--{boundary}--\r\n".encode(), "headers": {
            "Content-Type": f"multipart/form-data; boundary={boundary}"}}, message="multipart"),
        HostileRequest("form-urlencoded", {"data": {field_name: "cells.png"}}, message="multipart", statuses=(415,)),
        HostileRequest("a text value in the file field", {"files": {field_name: (None, b"cells.png")}},
                       message="text value"),
        HostileRequest("wrong field name", _files("file" if field_name != "file" else "upload", "a.png", valid),
                       message="unexpected field"),
        HostileRequest("file plus an extra field", {**file("a.png", valid), "data": {"note": "x"}},
                       message="unexpected field"),
        HostileRequest("file name with ../", file("../../etc/passwd.png", valid), message="path"),
        HostileRequest("file name with control characters", file("a\x01\x7f.png", valid), message="control"),
        HostileRequest("file name of 300 characters", file("a" * 296 + ".png", valid), message="characters"),
        HostileRequest("file name of 5000 characters", file("a" * 4996 + ".png", valid)),
        HostileRequest("query junk", {**file("a.png", valid), "params": {"x": "1", "debug": "true"}},
                       message="query"),
        HostileRequest("body over the byte limit", file("big.png", b"\x89PNG\r\n\x1a\n" + bytes(over_byte_limit)),
                       message="limit", statuses=(413,)),
        # The file.
        HostileRequest("0-byte file", file("empty.png", b""), message="empty"),
        HostileRequest("truncated PNG", file("cut.png", png[: len(png) // 2]), message="image"),
        HostileRequest("PNG header only", file("head.png", png[:16]), message="image"),
        HostileRequest("truncated TIFF", file("cut.tif", stack[: len(stack) // 2]), message="TIFF"),
        HostileRequest("truncated JPEG", file("cut.jpg", jpeg.getvalue()[:200]), message="image"),
        HostileRequest("plain text", file("notes.txt", b"just some notes", content_type="text/plain"),
                       message="image"),
        HostileRequest("HTML", file("page.html", b"<html><body><script>alert(1)</script></body></html>"),
                       message="image"),
        HostileRequest("JSON file", file("a.json", json.dumps({"pixels": [[1, 2], [3, 4]]}).encode()),
                       message="image"),
        HostileRequest("zip", file("a.zip", b"PK\x03\x04" + bytes(60)), message="image"),
        HostileRequest("PDF", file("a.pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF"), message="image"),
        HostileRequest("GIF", file("a.gif", gif.getvalue()), message="PNG"),
        HostileRequest("BMP", file("a.bmp", bmp.getvalue()), message="PNG"),
        HostileRequest("PNG claiming 100000x100000", file("bomb.png", _png_claiming(100_000, 100_000)),
                       message="too large", statuses=(413,)),
        HostileRequest("TIFF claiming 100000x100000", file("bomb.tif", _tiff_claiming(100_000, 100_000)),
                       statuses=(400, 413)),
        HostileRequest("1x1 image", file("dot.png", _png(np.zeros((1, 1), np.uint8))), message=SMALL),
        HostileRequest("1xN image", file("line.png", _png(np.zeros((1, 300), np.uint8))), message=SMALL),
        HostileRequest("Nx1 TIFF", file("column.tif", _tiff(np.zeros((300, 1), np.uint8))), message=SMALL),
        HostileRequest("1000x1x1 stack", file("needles.tif", _tiff(np.zeros((1000, 1, 1), np.uint8),
                                                                     photometric="minisblack")), message="small"),
        # Colour where grey is needed is refused; a picture endpoint converts it; a movie is a stack, not a picture.
        HostileRequest("palette PNG", file("palette.png", palette_png.getvalue()), refuse=False,
                       answers=_answers(400, 200, 200, 400)),
        HostileRequest("RGBA PNG", file("rgba.png", _png(np.dstack([picture] * 4))), refuse=False,
                       answers=_answers(400, 200, 200, 400)),
        HostileRequest("16-bit PNG", file("deep.png", _png(picture.astype(np.uint16) * 257)), refuse=False,
                       answers=_answers(200, 200, 200, 400)),
        HostileRequest("RGB TIFF (H, W, 3)", file("rgb.tif", _tiff(np.dstack([picture] * 3), photometric="rgb")),
                       refuse=False, answers=_answers(400, 200, 200, 400)),
        HostileRequest("multi-page TIFF, pages of different sizes", file("mixed.tif", mixed.getvalue()),
                       message="different"),
        # The models scale floats of any range by their percentiles; the classical analyses read floats as [0, 1].
        HostileRequest("float TIFF on a 0-255 scale", file("float.tif", tiff_of(picture.astype(np.float32))),
                       refuse=False, answers=_answers(200, 200, 400, 400)),
        HostileRequest("NaN", file("nan.tif", tiff_of(np.full((64, 64), np.nan, np.float32))), message="NaN"),
        HostileRequest("Inf", file("inf.tif", tiff_of(np.full((64, 64), np.inf, np.float32))), message="infinite"),
        HostileRequest("int32", file("int32.tif", tiff_of(grey.astype(np.int32))), message="dtype"),
        HostileRequest("bool", file("bool.tif", tiff_of(grey > 128)), message=("dtype", "stack")),
        HostileRequest("complex", file("complex.tif", tiff_of(grey.astype(np.complex64))), message="complex"),
        HostileRequest("4-D array", file("4d.tif", _tiff(np.zeros((2, 2, 16, 16), np.uint8), photometric="minisblack")),
                       message="4-D"),
        HostileRequest("5-D array", file("5d.tif", _tiff(np.zeros((2, 2, 2, 16, 16), np.uint8),
                                                          photometric="minisblack")), message="5-D"),
        HostileRequest("wrong Content-Type on the part", file("a.png", valid, content_type="text/html"),
                       refuse=False, answers=_answers(200, 200, 200, 200)),
    ]
    return cases


def probe(base_url: str, route: str, field_name: str, valid: bytes, *, kind: str, over_byte_limit: int,
          temp_dir: Path, timeout: float = 120, stacks: bool = False) -> dict[str, int]:
    """Send the corpus to ``route``, an endpoint of ``kind`` (one of :data:`ENDPOINT_KINDS`); assert every answer;
    return name -> status. Before and after, a valid request must get the same bytes; ``temp_dir`` (the server's
    TMPDIR) must hold no more files after it."""
    import httpx

    def valid_answer() -> bytes:
        response = httpx.post(f"{base_url}/{route}", files={field_name: ("valid.png", valid, "image/png")},
                              timeout=timeout)
        assert response.status_code == 200, response.text
        return response.content

    if kind not in ENDPOINT_KINDS:
        raise ValueError(f"unknown endpoint kind {kind!r}; one of {ENDPOINT_KINDS}")
    before = valid_answer()
    files_before = _files_under(temp_dir)
    statuses = {}
    for case in hostile_requests(field_name, over_byte_limit=over_byte_limit, valid=valid, stacks=stacks):
        try:
            response = httpx.post(f"{base_url}/{route}", timeout=timeout, **case.request)
        except httpx.HTTPError as error:
            raise AssertionError(f"{route} <- {case.name}: no answer ({error!r})") from error
        statuses[case.name] = response.status_code
        where = f"{route} <- {case.name}: {response.status_code} {response.text[:300]}"
        if not response.headers.get("content-type", "").startswith(("image/", "application/octet-stream")):
            assert not LEAKS.search(response.text), where  # a text or JSON answer (a mask's bytes are not text)
        if not case.refuse:
            assert response.status_code == case.answers[kind], f"{where} (expected {case.answers[kind]})"
            if response.status_code < 300:
                continue
        assert response.status_code in case.statuses, where
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], where
        expected = (case.message,) if isinstance(case.message, str) else case.message
        assert not case.refuse or any(text.lower() in body["error"].lower() for text in expected), where
    assert valid_answer() == before, f"{route}: a valid request got different bytes after the corpus"
    # BentoML removes a request's temporary files just after answering it: give it a moment.
    deadline = time.monotonic() + 10
    while not _files_under(temp_dir) <= files_before and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _files_under(temp_dir) - files_before
    assert not left, f"{route}: temporary files left behind: {sorted(map(str, left))[:5]}"
    return statuses


def _files_under(root: Path | None) -> set[Path]:
    return set() if root is None else {p for p in root.rglob("*") if p.is_file()}
