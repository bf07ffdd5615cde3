"""The request guard in front of every service, as an ASGI middleware on its own (no server): what it lets
through, what it refuses, and that a request whose client has gone is cancelled."""

from __future__ import annotations

import asyncio
import json

import pytest

from bento.common import RequestGuard, RequestProblem, Upload, check_multipart


def _call(app, body: bytes, headers: dict[str, str], path: str = "/segment", disconnect_after: float | None = None):
    """Run the guard once; return (status, JSON body) of its answer, or None when it sent nothing."""
    guard = RequestGuard(app, uploads={"/segment": Upload("image")}, limits={"max_request_bytes": 1000})
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(disconnect_after if disconnect_after is not None else 3600)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 10))
    if not sent:
        return None
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def _multipart(name: str, filename: str | None, data: bytes, boundary: str = "b0undary") -> tuple[bytes, dict]:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    body = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}", "content-length": str(len(body))}


async def _echo(scope, receive, send):
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"bytes": len(body)}).encode()})


def test_a_good_upload_reaches_the_service_with_its_body():
    body, headers = _multipart("image", "a.png", b"\x89PNG...")
    assert _call(_echo, body, headers) == (200, {"bytes": len(body)})


@pytest.mark.parametrize("name,filename,data,status,message", [
    ("file", "a.png", b"x", 400, "unexpected field 'file'"),
    ("image", None, b"x", 400, "text value"),
    ("image", "../a.png", b"x", 400, "path"),
    ("image", "a.png", b"", 400, "empty upload"),
    ("image", "a.png", b"x" * 2000, 413, "limit"),
])
def test_bad_multipart_is_refused_before_the_service_sees_it(name, filename, data, status, message):
    body, headers = _multipart(name, filename, data)
    answer = _call(_echo, body, headers)
    assert answer[0] == status and message in answer[1]["error"]


def test_service_errors_become_one_json_object_without_addresses():
    async def failing(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps([{"error": "bad <object at 0x7f00deadbeef>"}]).encode()})

    body, headers = _multipart("image", "a.png", b"x")
    status, answer = _call(failing, body, headers)
    assert status == 400 and answer == {"error": "bad"}


def test_two_files_in_one_field_are_refused_unless_the_endpoint_takes_several():
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nx\r\n").encode()
    body = part * 2 + f"--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    with pytest.raises(RequestProblem, match="2 files in field 'image'"):
        check_multipart(body, content_type, Upload("image"))
    check_multipart(body, content_type, Upload("image", many=True))


def test_a_request_whose_client_has_gone_is_cancelled():
    cancelled = []

    async def slow(scope, receive, send):
        await receive()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    body, headers = _multipart("image", "a.png", b"x")
    assert _call(slow, body, headers, disconnect_after=0.1) is None
    assert cancelled == [True]
