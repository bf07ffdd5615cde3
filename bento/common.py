"""What every cellops service shares: upload decoding with limits (bad input -> 4xx naming the problem) and the
metadata a service reports about the model it serves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument

from cellops.io import DecodedImage, ImageInputError, ImageTooLargeError, _clean, decode_image, decode_picture

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
    """``stored``, tightened (never loosened) by the environment variable ``variable``: a value above ``stored``
    changes nothing, an unset or empty one is ignored, and anything but a positive integer stops the service as it
    starts (``ValueError`` naming the variable).

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
    """The pixel limit stored with the bento model, tightened (never loosened) by ``CELLOPS_MAX_PIXELS``
    (:func:`env_limit`)."""
    return env_limit(limits["max_pixels"], MAX_PIXELS_ENV)


def decode_upload(data: bytes, limit: int, allowed_ndim: tuple[int, ...] = (2, 3),
                  normalization=None) -> DecodedImage:
    """Decode an uploaded PNG/TIFF, answering 413 for too many pixels and 400 for anything else unusable. With a
    model's ``normalization`` (:class:`cellops.intensity.Normalization`), floats of any range are taken and the
    upload must be one it can scale (400 for a constant image, or a float image outside [0, 1] in dtype mode);
    without one (the classical analyses) floats must lie in [0, 1]."""
    try:
        decoded = decode_image(data, max_pixels=limit, allowed_ndim=allowed_ndim, unit_floats=normalization is None)
        if normalization is not None:
            normalization.bounds(decoded.array, source="image")
        return decoded
    except ImageTooLargeError as error:
        raise PayloadTooLarge(str(error)) from error
    except ImageInputError as error:
        raise InvalidArgument(str(error)) from error


def decode_picture_upload(data: bytes, limit: int, name: str, normalization=None) -> np.ndarray:
    """Decode one uploaded picture (PNG, TIFF or JPEG; grey or colour) as stored: 413 for too many pixels, 400
    naming ``name`` and the problem for anything else unusable, including a picture the model's ``normalization``
    cannot scale (a constant one; a float one outside [0, 1] in dtype mode)."""
    try:
        picture = decode_picture(data, max_pixels=limit)
        if normalization is not None:
            normalization.bounds(picture, source=name)
        return picture
    except ImageTooLargeError as error:
        raise PayloadTooLarge(_named(name, error)) from error
    except ImageInputError as error:
        raise InvalidArgument(_named(name, error)) from error


def _named(name: str, error: Exception) -> str:
    message = str(error)
    return message if message.startswith(f"{name}:") else f"{name}: {message}"


#: Written into the build context by the deployment step just before `bentoml build` (see
#: :func:`steps.deployment.write_build_info`), and so copied into the bento.
BUILD_INFO = Path(__file__).with_name("build_info.json")


def build_info() -> dict:
    """How the served bento was built: the git commit of its code and when (``unknown`` for a bento built by
    hand without the deployment step)."""
    if BUILD_INFO.is_file():
        return json.loads(BUILD_INFO.read_text())
    return {"git_commit": "unknown", "built_at": "unknown"}


def model_metadata(bento_model: bentoml.Model) -> dict:
    """The served model's registry record (model version, run ids, lineage, metrics and the inference settings
    they were measured with) as the deployment stored it, plus the BentoML model tag and the bento's own build."""
    return {"bento_model": str(bento_model.tag), **dict(bento_model.info.metadata), "bento_build": build_info()}


#: Environment variable with which an operator tightens a service's request byte limit without rebuilding.
MAX_BYTES_ENV = "CELLOPS_MAX_REQUEST_BYTES"

#: Longest upload file name accepted (most file systems stop at 255 bytes).
MAX_FILE_NAME = 255


@dataclass(frozen=True)
class Upload:
    """What one endpoint takes: the multipart field holding its file(s), and whether several are allowed."""

    field: str
    many: bool = False


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
    """The request byte limit stored with the bento model (``max_request_bytes``, 64 MiB when absent),
    tightened (never loosened) by ``CELLOPS_MAX_REQUEST_BYTES`` (:func:`env_limit`)."""
    return env_limit(limits.get("max_request_bytes", 64 * 2**20), MAX_BYTES_ENV)


def check_file_name(name: str) -> None:
    """Refuse upload file names a file system or a log would choke on (the name itself is never used as a path).

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
    """Check a multipart/form-data body against what the endpoint takes, or raise :class:`RequestProblem`: the
    right content type with a boundary, well-formed parts, only ``upload.field``, files (not text values) with
    bytes in them, usable file names, one file unless ``upload.many``."""
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
    for part in parts:
        if part.name != upload.field:
            raise RequestProblem(400, f"unexpected field {str(part.name)[:80]!r}: send {wanted}")
        if part.filename is None:
            raise RequestProblem(400, f"field {upload.field!r} holds a text value, not a file: send {wanted}")
        check_file_name(part.filename)
        if part.size == 0:
            raise RequestProblem(400, f"empty upload: the file {part.filename[:80]!r} has no bytes")
    if len(parts) > 1 and not upload.many:
        raise RequestProblem(400, f"{len(parts)} files in field {upload.field!r}: send one")


class RequestGuard:
    """ASGI middleware in front of a cellops service: refuses, with a JSON ``{"error": message}`` naming the
    problem, what the framework would answer with a 500 or let through: bodies over the byte limit (checked
    while they arrive, so an oversize upload is never held whole), query parameters, and multipart bodies that
    are not what the endpoint takes (see :func:`check_multipart`). It also gives every error answer of the
    service the same shape, ``{"error": message}`` (BentoML 1.4 answers a service's own 4xx as a one-element
    list), with memory addresses and file paths removed.

    Parameters
    ----------
    app : the ASGI app (BentoML passes it).
    uploads : route (``"/segment"``) -> :class:`Upload` for each endpoint taking files.
    limits : the service limits (``max_request_bytes``: the largest request body accepted), or the served bento
        model, whose metadata holds them.
    """

    #: Framework routes passed through untouched.
    OPEN_ROUTES = ("/readyz", "/livez", "/healthz", "/metrics", "/docs.json", "/schema.json", "/")

    def __init__(self, app, uploads: dict[str, Upload], limits: dict | bentoml.models.BentoModel) -> None:
        if not isinstance(limits, dict):  # the served model's stored limits, read when the worker starts
            limits = dict(limits.stored.info.metadata).get("service_limits", {})
        self.app, self.uploads, self.max_bytes = app, uploads, max_request_bytes(limits)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN_ROUTES or scope["path"].startswith("/docs"):
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
    """Put a :class:`RequestGuard` in front of a BentoML service (``limits``: see :class:`RequestGuard`)."""
    service.add_asgi_middleware(RequestGuard, uploads=uploads, limits=limits)
