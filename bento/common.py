"""What every cellops service shares: one reader of uploads (:func:`read_upload`) under limits the environment can
only tighten (:func:`env_limit`), one mapping of unusable input to 413 / 400 naming the problem
(:func:`upload_errors`), the request guard in front of every service, and the metadata a service reports about the
model it serves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from http import HTTPStatus
from pathlib import Path
from typing import Literal, get_args

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument

from cellops.errors import ImageInputError, ImageTooLargeError
from cellops.io import DecodedImage, _clean, check_pixels, decode_image, decode_picture, to_grey

logger = logging.getLogger("bentoml.cellops")  # under BentoML's logger: its handlers print it

#: Environment variable with which an operator tightens a service's pixel limit without rebuilding the bento.
MAX_PIXELS_ENV = "CELLOPS_MAX_PIXELS"


#: Connection settings for a model service behind an entry service. BentoML 1.4.40 replaces the entry service's
#: connection to it every 100 requests or 300 s by default, closing the old one with requests still in flight on
#: it, which then fail with HTTP 500 under load; the connection is kept for the life of the worker instead.
KEEP_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 10.0 * 365 * 24 * 3600}


class PayloadTooLarge(BentoMLException):
    """413: the upload has more pixels than the service accepts."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def env_limit(stored: int, variable: str) -> int:
    """A service limit: ``stored``, tightened (never loosened) by the environment variable ``variable``.

    Parameters
    ----------
    stored : int
        The limit the bento was built with (stored with its model, or the service's own for the classical one).
    variable : str
        The environment variable an operator sets: a value above ``stored`` changes nothing, an unset or empty
        one is ignored.

    Returns
    -------
    int
        The smaller of ``stored`` and the variable's value.

    Raises
    ------
    ValueError
        Naming the variable, for a value that is not a positive whole number (the service stops as it starts).

    Examples
    --------
    >>> os.environ["CELLOPS_EXAMPLE_LIMIT"] = "10"
    >>> env_limit(100, "CELLOPS_EXAMPLE_LIMIT"), env_limit(5, "CELLOPS_EXAMPLE_LIMIT")
    (10, 5)
    >>> os.environ["CELLOPS_EXAMPLE_LIMIT"] = ""
    >>> env_limit(100, "CELLOPS_EXAMPLE_LIMIT")
    100
    >>> os.environ["CELLOPS_EXAMPLE_LIMIT"] = "0"
    >>> env_limit(100, "CELLOPS_EXAMPLE_LIMIT")
    Traceback (most recent call last):
    ValueError: CELLOPS_EXAMPLE_LIMIT='0' is not a positive whole number; it can only lower the limit (100)
    >>> del os.environ["CELLOPS_EXAMPLE_LIMIT"]
    """
    limit = int(stored)
    value = os.environ.get(variable, "").strip()
    if not value:
        return limit
    try:
        tightened = int(value)
    except ValueError:
        tightened = 0
    if tightened <= 0:
        raise ValueError(f"{variable}={os.environ[variable]!r} is not a positive whole number; it can only lower "
                         f"the limit ({limit})")
    return min(limit, tightened)


def max_pixels(limits: dict) -> int:
    """The most pixels one upload may hold.

    Parameters
    ----------
    limits : dict
        The service limits stored with the bento (``max_pixels``).

    Returns
    -------
    int
        ``limits["max_pixels"]``, tightened (never loosened) by ``CELLOPS_MAX_PIXELS`` (:func:`env_limit`).
    """
    return env_limit(limits["max_pixels"], MAX_PIXELS_ENV)


#: What an endpoint reads from its upload (:func:`read_upload`): a grey-level PNG or TIFF (``"stack"``: a
#: (frames, rows, columns) TIFF stack; ``"image or stack"``: a 2-D image or such a stack), a ``"picture"`` as
#: stored (PNG, JPEG or TIFF; grey, or colour channel-last), or a ``"grey picture"`` (a picture made one 2-D grey
#: image by :func:`cellops.io.to_grey`).
Wanted = Literal["image or stack", "stack", "picture", "grey picture"]

_GREY_NDIM = {"image or stack": (2, 3), "stack": (3,)}


@contextlib.contextmanager
def upload_errors(name: str = "", hint: str = "") -> Iterator[None]:
    """Answer the unusable input found inside the block as every service does: 413 for too many pixels, 400 for
    anything else, with a message naming the problem.

    Parameters
    ----------
    name : str
        What the message names first (``"image"``, ``"images[2] (b.png)"``); empty for the message as raised.
    hint : str
        Appended to a 400's message: what the endpoint takes.

    Raises
    ------
    PayloadTooLarge
        For a :class:`cellops.errors.ImageTooLargeError` raised inside the block.
    bentoml.exceptions.InvalidArgument
        For any other :class:`cellops.errors.ImageInputError`.

    Examples
    --------
    >>> with upload_errors("image"):
    ...     raise ImageInputError("empty upload")
    Traceback (most recent call last):
    bentoml.exceptions.InvalidArgument: image: empty upload
    >>> with upload_errors():
    ...     raise ImageTooLargeError("image too large: 9 pixels, the limit is 4")
    Traceback (most recent call last):
    bento.common.PayloadTooLarge: image too large: 9 pixels, the limit is 4
    """
    try:
        yield
    except ImageTooLargeError as error:
        raise PayloadTooLarge(_named(name, error)) from error
    except ImageInputError as error:
        message = _named(name, error)
        raise InvalidArgument(f"{message}; {hint}" if hint else message) from error


def read_upload(data: bytes, max_pixels: int, wanted: Wanted = "image or stack", *, normalization=None,
                name: str = "", hint: str = "", channel: str | None = None) -> DecodedImage:
    """Read one uploaded file as the endpoint wants it, or answer 413 (too many pixels) or 400 (anything else
    unusable) naming the problem (:func:`upload_errors`).

    Parameters
    ----------
    data : bytes
        The file as uploaded.
    max_pixels : int
        The most pixels accepted (all slices together), checked from the header before decoding.
    wanted : {"image or stack", "stack", "picture", "grey picture"}
        What the endpoint takes (see :data:`Wanted`).
    normalization : cellops.intensity.Normalization, optional
        The served model's: floats of any range are taken and the upload must be one it can scale (400 for a
        constant image, or a float image outside [0, 1] in dtype mode). Without one (the classical analyses),
        the floats of a grey upload or grey picture are intensities in [0, 1], refused outside it.
    name : str
        The upload's name in error messages (empty: messages as :mod:`cellops.io` words them).
    hint : str
        Appended to a 400's message: what the endpoint takes.
    channel : str, optional
        The channel (name or index) of a multi-channel OME-TIFF or ImageJ upload (:func:`microscope_upload`).

    Returns
    -------
    DecodedImage
        The array and the format it came in (``"png"``, ``"tiff"``, or ``"jpeg"`` for a picture), and the pixel
        size an OME-TIFF or ImageJ upload states. A grey picture of a colour upload is float64 on the upload's own
        scale (:func:`cellops.io.to_grey`).

    Examples
    --------
    >>> from cellops.io import encode_image
    >>> rgb = np.zeros((8, 8, 3), np.uint8); rgb[..., 0] = 10; rgb[..., 1] = 20; rgb[..., 2] = 31
    >>> grey = read_upload(encode_image(rgb, "tiff"), 1000, "grey picture")
    >>> grey.format, grey.array.shape, round(float(grey.array[0, 0]), 3)
    ('tiff', (8, 8), 20.333)
    >>> read_upload(encode_image(rgb, "tiff"), 100, "picture", name="image")
    Traceback (most recent call last):
    bento.common.PayloadTooLarge: image: image too large: 192 pixels, the limit is 100
    """
    unit_floats = normalization is None
    data, pixel_size = microscope_upload(data, max_pixels, channel=channel, name=name)
    with upload_errors(name, hint):
        if wanted in _GREY_NDIM:
            decoded = decode_image(data, max_pixels=max_pixels, allowed_ndim=_GREY_NDIM[wanted],
                                   unit_floats=unit_floats)
        elif wanted in ("picture", "grey picture"):
            picture = decode_picture(data, max_pixels=max_pixels)
            if wanted == "grey picture":
                picture = _grey(picture, unit_floats)
            decoded = DecodedImage(array=picture, format=_picture_format(data))
        else:
            raise ValueError(f"unknown upload {wanted!r}: expected one of {get_args(Wanted)}")
        if normalization is not None:
            normalization.bounds(decoded.array, source=name)
    return replace(decoded, pixel_size_um=pixel_size)


def microscope_upload(data: bytes, max_pixels: int, *, channel: str | None = None,
                      name: str = "") -> tuple[bytes, float | None]:
    """An OME-TIFF or ImageJ upload read as the microscope file it is (:func:`cellops.microscopy.open_image`): its
    pixel size, and its chosen channel re-encoded as a one-channel TIFF for :func:`read_upload`'s checks; a
    multi-channel upload without a channel is refused naming its channels. Any other upload comes back as sent.

    Parameters
    ----------
    data : bytes
        The file as uploaded.
    max_pixels : int
        The most pixels accepted (all channels together), checked from the header first.
    channel : str, optional
        A channel name or index; empty: the file must have one channel (the endpoint takes a ``channel`` field);
        None: the same, for an endpoint without that field (its message says so).
    name : str
        The upload's name in messages.

    Returns
    -------
    data : bytes
        The upload, or its chosen channel as TIFF.
    pixel_size_um : float or None
        The in-plane pixel size the file states.

    Raises
    ------
    bentoml.exceptions.InvalidArgument
        A channel the file does not have (its channels named), several channels and none chosen, a channel chosen
        for a format without channels, a pixel size of 0, NaN or over 1 mm in its metadata.
    PayloadTooLarge
        More pixels than ``max_pixels``.

    Examples
    --------
    >>> from cellops.io import encode_image
    >>> png = encode_image(np.zeros((8, 8), np.uint8), "png")
    >>> microscope_upload(png, 100) == (png, None)
    True
    """
    import io

    import tifffile

    # None: the endpoint takes no channel field; "" (or a name): it does, and its message says how to choose.
    hint = ("choose one with the form field channel=NAME|INDEX" if channel is not None
            else "this endpoint reads one channel: send it alone (e.g. saved from Fiji or napari)")
    channel = channel or None
    if data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        if channel is not None:
            raise InvalidArgument(_named(name, ImageInputError(f"channel {channel!r} chosen, but only a TIFF "
                                                                "(OME-TIFF, ImageJ) upload has channels")))
        return data, None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            described = tif.is_ome or tif.is_imagej
            pixels = int(np.prod(tif.series[0].shape))
    except Exception:  # not a TIFF tifffile can parse: read_upload names the problem
        return data, None
    if not described and channel is None:
        return data, None
    if pixels > max_pixels:
        raise PayloadTooLarge(_named(name, ImageTooLargeError(f"image too large: {pixels} pixels, the limit is "
                                                              f"{max_pixels}")))
    import tempfile

    from cellops.io import FileReading, encode_image

    with upload_errors(name), tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.tif"
        path.write_bytes(data)
        try:
            opened = FileReading(channel).open(path, "this endpoint")
        except ImageInputError as error:
            raise ImageInputError(str(error).replace(f"{path}: ", "").replace(
                "choose one with --channel NAME|INDEX (config key `channel`)", hint)) from None
        pixel_size = opened.yx_pixel_size_um
    if opened.channel is None:
        return data, pixel_size
    return encode_image(opened.data, "tiff"), pixel_size


def _grey(picture: np.ndarray, unit_floats: bool) -> np.ndarray:
    """One 2-D grey image of a decoded picture: its values checked as uploaded (every channel of a colour one;
    floats in [0, 1] where ``unit_floats``), then made grey by :func:`cellops.io.to_grey`."""
    if picture.ndim == 3 and picture.shape[0] == 1 and picture.shape[-1] > 4:  # a one-page TIFF stack
        picture = picture[0]
    if picture.ndim == 2:
        return check_pixels(picture, allowed_ndim=(2,), unit_floats=unit_floats)
    check_pixels(np.moveaxis(picture, -1, 0), allowed_ndim=(3,), unit_floats=unit_floats)
    return to_grey(picture)


def _picture_format(data: bytes) -> str:
    """The format of a picture :func:`cellops.io.decode_picture` has read, from its first bytes."""
    if data[:2] in (b"II", b"MM"):
        return "tiff"
    return "png" if data[:4] == b"\x89PNG" else "jpeg"


def _named(name: str, error: Exception) -> str:
    message = str(error)
    return message if not name or message.startswith(f"{name}:") else f"{name}: {message}"


#: Written into the build context by the deployment step just before `bentoml build` (see
#: :func:`steps.deployment.write_build_info`), and so copied into the bento.
BUILD_INFO = Path(__file__).with_name("build_info.json")


def build_info() -> dict:
    """How the served bento was built.

    Returns
    -------
    dict
        ``git_commit`` and ``built_at`` (both ``"unknown"`` for a bento built by hand without the deployment step).
    """
    if BUILD_INFO.is_file():
        return json.loads(BUILD_INFO.read_text())
    return {"git_commit": "unknown", "built_at": "unknown"}


def model_metadata(bento_model: bentoml.Model) -> dict:
    """What a model service reports about the model it serves.

    Parameters
    ----------
    bento_model : bentoml.Model
        The served BentoML model.

    Returns
    -------
    dict
        The registry record as the deployment stored it (model version, run ids, lineage, metrics and the
        inference settings they were measured with), plus ``bento_model`` (its tag) and ``bento_build``
        (:func:`build_info`).
    """
    return {"bento_model": str(bento_model.tag), **dict(bento_model.info.metadata), "bento_build": build_info()}


#: Environment variable with which an operator tightens a service's request byte limit without rebuilding.
MAX_BYTES_ENV = "CELLOPS_MAX_REQUEST_BYTES"

#: Longest upload file name accepted (most file systems stop at 255 bytes).
MAX_FILE_NAME = 255


@dataclass(frozen=True)
class Upload:
    """What one endpoint takes: the multipart field holding its file(s), whether several are allowed, and the short
    text fields it also takes (e.g. ``channel``)."""

    field: str
    many: bool = False
    options: tuple[str, ...] = ()


#: The longest value a text field of a request may hold (a channel name, an index).
MAX_OPTION_BYTES = 256


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    size: int = 0
    headers: dict[str, str] = dataclass_field(default_factory=dict)


class RequestProblem(Exception):
    """A request refused before the service sees it: HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def max_request_bytes(limits: dict) -> int:
    """The most bytes one request body may hold.

    Parameters
    ----------
    limits : dict
        The service limits stored with the bento (``max_request_bytes``; 64 MiB when absent).

    Returns
    -------
    int
        The stored limit, tightened (never loosened) by ``CELLOPS_MAX_REQUEST_BYTES`` (:func:`env_limit`).
    """
    return env_limit(limits.get("max_request_bytes", 64 * 2**20), MAX_BYTES_ENV)


def check_file_name(name: str) -> None:
    """Refuse upload file names a file system or a log would choke on (the name itself is never used as a path).

    Parameters
    ----------
    name : str
        The file name the client sent.

    Raises
    ------
    RequestProblem
        400 for a name over :data:`MAX_FILE_NAME` characters, with control characters, or holding a path.

    Examples
    --------
    >>> check_file_name("cells.png")
    >>> check_file_name("../../etc/passwd")
    Traceback (most recent call last):
    bento.common.RequestProblem: file name '../../etc/passwd' holds a path: send a plain file name
    """
    if len(name) > MAX_FILE_NAME:
        raise RequestProblem(400, f"file name of {len(name)} characters; the limit is {MAX_FILE_NAME}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise RequestProblem(400, f"file name {name.encode('unicode_escape').decode()[:80]!r} holds control "
                                  "characters")
    if "/" in name or "\\" in name:
        raise RequestProblem(400, f"file name {name[:80]!r} holds a path: send a plain file name")


def check_multipart(body: bytes, content_type: str, upload: Upload) -> None:
    """Check a multipart/form-data body against what the endpoint takes.

    Parameters
    ----------
    body : bytes
        The whole request body.
    content_type : str
        The request's ``Content-Type`` header.
    upload : Upload
        What the endpoint takes.

    Raises
    ------
    RequestProblem
        415 for another content type; 400 for a missing boundary, malformed parts, a field other than
        ``upload.field`` and ``upload.options``, a text value instead of a file, a file or a value over
        :data:`MAX_OPTION_BYTES` in an option, an empty file, an unusable file name (:func:`check_file_name`), or
        several files where ``upload.many`` is false.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    wanted = f"{'one or more files' if upload.many else 'one file'} in the multipart/form-data field {upload.field!r}"
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise RequestProblem(415, f"Content-Type {content_type[:100]!r}: send {wanted}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestProblem(400, "multipart/form-data without a boundary in its Content-Type")
    parts: list[_Part] = []
    header: list[bytes] = [b"", b""]

    def begin() -> None:
        parts.append(_Part())

    def header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def header_end() -> None:
        parts[-1].headers[header[0].decode("latin-1").lower()] = header[1].decode("utf-8", "replace")
        header[0], header[1] = b"", b""

    def headers_done() -> None:
        _, disposition = parse_options_header(parts[-1].headers.get("content-disposition", ""))
        part = parts[-1]
        part.name = disposition[b"name"].decode("utf-8", "replace") if b"name" in disposition else None
        part.filename = disposition[b"filename"].decode("utf-8", "replace") if b"filename" in disposition else None

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1].size += end - start

    parser = MultipartParser(boundary, callbacks={
        "on_part_begin": begin, "on_header_field": header_field, "on_header_value": header_value,
        "on_header_end": header_end, "on_headers_finished": headers_done, "on_part_data": data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # python-multipart's errors name the byte offset, nothing else of ours
        raise RequestProblem(400, f"malformed multipart body ({error})") from error
    if not parts or parser.state.name != "END":
        raise RequestProblem(400, f"malformed or incomplete multipart body: send {wanted}")
    files = [part for part in parts if part.name not in upload.options]
    for part in parts:
        if part.name in upload.options and (part.filename is not None or part.size > MAX_OPTION_BYTES):
            raise RequestProblem(400, f"field {part.name!r} takes a short text value (at most {MAX_OPTION_BYTES} "
                                      "bytes), not a file")
    if not files:
        raise RequestProblem(400, f"no file: send {wanted}")
    for part in files:
        if part.name != upload.field:
            extra = f" (and the text fields {', '.join(upload.options)})" if upload.options else ""
            raise RequestProblem(400, f"unexpected field {str(part.name)[:80]!r}: send {wanted}{extra}")
        if part.filename is None:
            raise RequestProblem(400, f"field {upload.field!r} holds a text value, not a file: send {wanted}")
        check_file_name(part.filename)
        if part.size == 0:
            raise RequestProblem(400, f"empty upload: the file {part.filename[:80]!r} has no bytes")
    if len(files) > 1 and not upload.many:
        raise RequestProblem(400, f"{len(files)} files in field {upload.field!r}: send one")


class RequestGuard:
    """ASGI middleware in front of a cellops service: refuses, with a JSON ``{"error": message}`` naming the
    problem, what the framework would answer with a 500 or let through: bodies over the byte limit (checked
    while they arrive, so an oversize upload is never held whole), query parameters, and multipart bodies that
    are not what the endpoint takes (see :func:`check_multipart`). It also gives every error answer of the
    service the same shape, ``{"error": message}`` (BentoML 1.4 answers a service's own 4xx as a one-element
    list), with memory addresses and file paths removed.

    Parameters
    ----------
    app : ASGI application
        The service's app (BentoML passes it).
    uploads : dict of str to Upload
        Route (``"/segment"``) -> what that endpoint takes, for each endpoint taking files.
    limits : dict or bentoml.models.BentoModel
        The service limits (``max_request_bytes``: the largest request body accepted), or the served bento
        model, whose metadata holds them.
    """

    #: Framework routes passed through untouched.
    OPEN_ROUTES = ("/readyz", "/livez", "/healthz", "/metrics", "/docs.json", "/schema.json", "/")

    def __init__(self, app, uploads: dict[str, Upload], limits: dict | bentoml.models.BentoModel) -> None:
        if not isinstance(limits, dict):  # the served model's stored limits, read when the worker starts
            limits = dict(limits.stored.info.metadata).get("service_limits", {})
        self.app, self.uploads, self.max_bytes = app, uploads, max_request_bytes(limits)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in (*self.OPEN_ROUTES, CARD_ROUTE) \
                or scope["path"].startswith("/docs"):
            return await self.app(scope, receive, send)
        try:
            body = await self._checked_body(scope, receive)
        except RequestProblem as problem:
            return await _reply(send, problem.status, str(problem))
        if body is None:  # the client left before sending its request
            return None
        delivered, gone = False, asyncio.Event()

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch_client() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        # A request whose client has gone is cancelled: its work must not delay the clients still waiting.
        answer = asyncio.ensure_future(self.app(scope, replay, _uniform_errors(send)))
        watcher = asyncio.ensure_future(watch_client())
        await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            watcher.cancel()
            return answer.result()
        answer.cancel()
        logger.info("%s %s: the client left; request cancelled", scope["method"], scope["path"])
        with contextlib.suppress(asyncio.CancelledError):
            await answer

    async def _checked_body(self, scope, receive) -> bytes | None:
        if scope.get("query_string"):
            raise RequestProblem(400, f"unexpected query parameters {scope['query_string'][:100].decode('latin-1')!r}:"
                                      " the endpoints take none")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            raise RequestProblem(413, f"request body of {declared[:20]} bytes; the limit is {self.max_bytes}")
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                raise RequestProblem(413, f"request body over {self.max_bytes} bytes (the limit)")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        upload = self.uploads.get(scope["path"])
        if upload is not None and scope["method"] == "POST":
            check_multipart(body, headers.get("content-type", ""), upload)
        return body


def _uniform_errors(send):
    """``send`` that rewrites error answers as ``{"error": message}`` without addresses or paths."""
    state: dict = {}

    async def wrapped(message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            state["start"], state["body"] = message, b""
            return None
        if "start" not in state:
            return await send(message)
        state["body"] += message.get("body", b"")
        if message.get("more_body"):
            return None
        status = state["start"]["status"]
        try:
            detail = json.loads(state["body"] or b"null")
        except ValueError:
            detail = state["body"].decode("utf-8", "replace")
        while isinstance(detail, list) and len(detail) == 1:
            detail = detail[0]
        text = detail.get("error", detail) if isinstance(detail, dict) else detail
        if status >= 500 and status not in (503, 504):
            text = "internal error: the server log has the details"
        await _reply(send, status, _clean(text or HTTPStatus(status).phrase))

    return wrapped


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def guard(service, uploads: dict[str, Upload], limits: dict | bentoml.models.BentoModel) -> None:
    """Put a :class:`RequestGuard` in front of a BentoML service.

    Parameters
    ----------
    service : bentoml.Service
        The service clients talk to.
    uploads : dict of str to Upload
        Route (``"/segment"``) -> what that endpoint takes.
    limits : dict or bentoml.models.BentoModel
        The service limits, or the served bento model whose metadata holds them (see :class:`RequestGuard`).
    """
    service.add_asgi_middleware(RequestGuard, uploads=uploads, limits=limits)


#: The route of the model card (:class:`CardRoute`), and the folder of the BentoML model that holds it (the
#: deployment copies the version's ``card/`` there: :func:`steps.deployment.copy_card`).
CARD_ROUTE = "/card"
CARD_FOLDER = "card"
#: The card's files and media types, by ``?format=``.
CARD_FORMATS = {"html": ("model_card.html", "text/html; charset=utf-8"),
                "md": ("model_card.md", "text/markdown; charset=utf-8")}


def card_format(query_string: bytes, accept: str) -> str:
    """The card format a request asks for: ``?format=html|md``, else markdown when ``Accept`` prefers
    ``text/markdown`` (or ``text/plain``) to ``text/html``, else HTML.

    Raises
    ------
    RequestProblem
        400 for another format or another query parameter.

    Examples
    --------
    >>> card_format(b"", "text/html,*/*"), card_format(b"format=md", ""), card_format(b"", "text/markdown")
    ('html', 'md', 'md')
    """
    from urllib.parse import parse_qs

    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    unknown = sorted(set(query) - {"format"})
    if unknown:
        raise RequestProblem(400, f"unexpected query parameters {unknown}: /card takes format=html or format=md")
    if "format" in query:
        wanted = query["format"][-1]
        if wanted not in CARD_FORMATS:
            raise RequestProblem(400, f"format={wanted[:40]!r}: /card answers format=html or format=md")
        return wanted
    accept = accept.lower()
    markdown = min((accept.find(t) for t in ("text/markdown", "text/plain") if t in accept), default=-1)
    return "md" if markdown >= 0 and ("text/html" not in accept or markdown < accept.find("text/html")) else "html"


class CardRoute:
    """ASGI middleware answering ``GET /card`` with the model card of the served version (HTML, or markdown with
    ``?format=md`` or ``Accept: text/markdown``), from the ``card/`` folder of the BentoML model; 404 naming why
    when the model holds none (a bento built before cards existed: redeploy it).

    Parameters
    ----------
    app : ASGI application
        The service's app (BentoML passes it).
    bento_model : bentoml.models.BentoModel
        The served model.
    """

    def __init__(self, app, bento_model) -> None:
        self.app, self.bento_model = app, bento_model

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != CARD_ROUTE:
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await _reply(send, 405, f"{scope['method']} {CARD_ROUTE}: use GET")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            name, media_type = CARD_FORMATS[card_format(scope.get("query_string", b""), headers.get("accept", ""))]
        except RequestProblem as problem:
            return await _reply(send, problem.status, str(problem))
        stored = getattr(self.bento_model, "stored", self.bento_model)
        path = Path(stored.path_of(CARD_FOLDER)) / name
        if not path.is_file():
            return await _reply(send, 404, f"the served model {stored.tag} holds no model card (deployed before "
                                           "cards existed): run the deployment pipeline again")
        body = path.read_bytes()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def serve_card(service, bento_model) -> None:
    """Answer ``GET /card`` on a model service (:class:`CardRoute`), in front of its :class:`RequestGuard`.

    Parameters
    ----------
    service : bentoml.Service
        The service clients talk to.
    bento_model : bentoml.models.BentoModel
        The served model, whose ``card/`` folder holds the card.
    """
    service.add_asgi_middleware(CardRoute, bento_model=bento_model)
