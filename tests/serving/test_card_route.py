"""``GET /card`` of the model services (bento.common.CardRoute), as an ASGI middleware on its own (no server): the
card kept in the BentoML model's ``card/`` as HTML or markdown, what it refuses, and that the request guard lets the
route through."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from bento.common import CardRoute, RequestGuard
from cellops.model_card import CardFacts, build_card


def _model(folder):
    """A stand-in for a served BentoML model: ``path_of`` under ``folder``."""
    return SimpleNamespace(stored=SimpleNamespace(tag="cellops-unet:abc", path_of=lambda p: str(folder / p)))


async def _service(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"service"})


def _get(app, path="/card", query=b"", accept="", method="GET"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": [(b"accept", accept.encode())] if accept else []}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    headers = dict(sent[0].get("headers", []))
    return sent[0]["status"], headers.get(b"content-type", b"").decode(), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def card(tmp_path):
    card = build_card(CardFacts({"registered_model": "cellops-unet", "model_version": "2", "metrics": {}}))
    card.write(tmp_path / "card")
    return card, CardRoute(_service, _model(tmp_path))


def test_the_card_is_answered_as_html_or_markdown(card):
    written, route = card
    status, kind, body = _get(route)
    assert (status, kind, body.decode()) == (200, "text/html; charset=utf-8", written.html)
    for asked in ({"query": b"format=md"}, {"accept": "text/markdown"}, {"accept": "text/plain, text/html;q=0.5"}):
        status, kind, body = _get(route, **asked)
        assert (status, kind, body.decode()) == (200, "text/markdown; charset=utf-8", written.markdown), asked
    assert _get(route, accept="text/html,text/markdown")[1].startswith("text/html")
    assert _get(route, method="HEAD")[:2] == (200, "text/html; charset=utf-8")


@pytest.mark.parametrize("asked,status,message", [
    ({"query": b"format=pdf"}, 400, "format=html or format=md"),
    ({"query": b"x=1"}, 400, "unexpected query parameters"),
    ({"method": "POST"}, 405, "use GET"),
])
def test_what_the_route_refuses(card, asked, status, message):
    answer = _get(card[1], **asked)
    assert answer[0] == status and message in json.loads(answer[2])["error"]


def test_a_model_without_a_card_is_a_404_saying_why_and_other_routes_pass(tmp_path):
    route = CardRoute(_service, _model(tmp_path))
    status, _, body = _get(route)
    assert status == 404 and "holds no model card" in json.loads(body)["error"]
    assert _get(route, path="/segment", method="POST")[2] == b"service"


def test_the_request_guard_lets_the_card_route_through():
    guard = RequestGuard(_service, uploads={}, limits={"max_request_bytes": 1000})
    assert _get(guard, query=b"format=md")[2] == b"service"
