"""The per-request shortcuts of the HTTP path keep Django's and DRF's behaviour.

Each shortcut skips framework work only where it provably has nothing to do; these tests hold
the cases where it must still happen: content negotiation for a client that asks for something
else than JSON, `request_started` and `request_finished` for a receiver of the project's own or
a third party's, and CORS once an origin is allowed (tests/test_deploy.py covers its headers).
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.testing import ApplicationCommunicator
from corsheaders.middleware import CorsMiddleware
from django.core import signals
from django.core.exceptions import MiddlewareNotUsed

from stello_project.asgi import StelloASGIHandler
from stello_project.middleware import CorsMiddlewareWhenConfigured
from tests.conftest import HOT_PATH_DB
from tests.test_deploy import asgi_get, http_scope


@HOT_PATH_DB
@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_a_client_that_wants_json_or_anything_gets_json(alice_client, accept) -> None:
    headers = {"HTTP_ACCEPT": accept} if accept is not None else {}
    response = alice_client.get("/spaces", **headers)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == []


@HOT_PATH_DB
@pytest.mark.parametrize("accept", ["text/html", "application/xml"])
def test_a_client_that_accepts_no_json_still_gets_406(alice_client, accept) -> None:
    response = alice_client.get("/spaces", HTTP_ACCEPT=accept)
    assert response.status_code == 406
    assert "error" in response.json()


@HOT_PATH_DB
def test_a_weighted_accept_header_is_negotiated_by_drf(alice_client) -> None:
    response = alice_client.get("/spaces", HTTP_ACCEPT="text/html;q=0.9, application/json;q=0.8")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"


@HOT_PATH_DB
def test_the_format_query_parameter_is_still_honoured(alice_client) -> None:
    assert alice_client.get("/spaces?format=json").status_code == 200
    assert alice_client.get("/spaces?format=xml").status_code == 404  # DRF: unknown format


def test_the_schema_view_with_several_renderers_negotiates_as_drf_does() -> None:
    from django.test import Client

    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")


@pytest.mark.parametrize("signal, heard, expected", [
    (signals.request_started, lambda sender, scope=None, **kw: scope["path"] if scope else "?",
     "/healthz"),
    (signals.request_finished, lambda sender, **kw: sender, StelloASGIHandler),
], ids=["request_started", "request_finished"])
async def test_the_request_signals_still_reach_receivers_other_than_djangos(
        signal, heard, expected) -> None:
    """A request that stayed on the loop skips `request_started` and `request_finished`
    while only Django's own receivers (nothing to do there) listen; anyone else still hears
    each, once."""
    seen: list[object] = []

    def receiver(sender, **kwargs) -> None:
        seen.append(heard(sender, **kwargs))

    signal.connect(receiver)
    try:
        status, _ = await asgi_get(StelloASGIHandler(), "/healthz")
    finally:
        signal.disconnect(receiver)
    assert status == 200
    assert seen == [expected]


def test_a_cache_backend_that_closes_something_keeps_close_caches(settings) -> None:
    from stello_project import asgi

    assert asgi._cache_close_is_noop()  # ours: Redis or local memory
    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache"}}
    assert not asgi._cache_close_is_noop()


def test_the_cors_middleware_joins_the_chain_only_when_an_origin_is_allowed(settings) -> None:
    def view(request):  # never called
        raise AssertionError

    settings.CORS_ALLOWED_ORIGINS = []
    with pytest.raises(MiddlewareNotUsed):  # Django then leaves it out of the chain
        CorsMiddlewareWhenConfigured(view)
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    assert isinstance(CorsMiddlewareWhenConfigured(view), CorsMiddleware)


async def test_a_request_starts_one_task_besides_its_own(monkeypatch) -> None:
    """Only the disconnect listener: each task a request starts is a loop turn it waits for
    behind all other ready work (Django's handler starts two)."""
    started: list[str] = []
    create_task = asyncio.create_task

    def counted(coro, **kwargs):
        started.append(getattr(coro, "__qualname__", repr(coro)))
        return create_task(coro, **kwargs)

    monkeypatch.setattr(asyncio, "create_task", counted)
    status, _ = await asgi_get(StelloASGIHandler(), "/healthz")
    assert status == 200
    assert started == [
        "ASGIHandler.__call__",  # the test's communicator running the app
        "StelloASGIHandler.handle.<locals>.listen_for_disconnect",
    ]


@pytest.mark.django_db(transaction=True)
async def test_a_client_that_goes_away_mid_request_stops_it_as_django_does(alice_key) -> None:
    """The request is cancelled, nothing is answered, `request_finished` is sent once, and the
    handler ends without an error and without a task left behind."""
    finished: list[object] = []

    def receiver(sender, **kwargs) -> None:
        finished.append(sender)

    signals.request_finished.connect(receiver)
    try:
        communicator = ApplicationCommunicator(StelloASGIHandler(), http_scope(
            "/spaces", headers=[(b"x-api-key", alice_key.encode())]))
        await communicator.send_input({"type": "http.request", "body": b""})
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(10)  # raises if the handler did
        assert await communicator.receive_nothing()
    finally:
        signals.request_finished.disconnect(receiver)
    assert finished == [StelloASGIHandler]
    await asyncio.sleep(0)  # the listener's own end
    assert [t for t in asyncio.all_tasks() if "listen_for_disconnect" in repr(t)] == []


@pytest.mark.parametrize("path, most_tries", [
    ("/spaces", 5),
    ("/spaces/0b7a3c1e-8f43-4b6f-9a55-2a3f0d6f1c11/sessions", 9),
    ("/spaces/0b7a3c1e-8f43-4b6f-9a55-2a3f0d6f1c11/sessions/"
     "6b1b0400-9014-4965-b9d7-ffe922989a29/turn", 26),
])
def test_the_api_routes_are_found_at_the_root_of_the_urlconf(path, most_tries) -> None:
    """Each `include` that does not match raises a Resolver404 and copies what it tried: the
    API's patterns sit in the root URLconf itself, ahead of everything else. A `tried` entry of
    one element is a pattern of the root; an include would add its resolver in front."""
    from django.urls import resolve

    match = resolve(path)
    assert [len(entry) for entry in match.tried] == [1] * len(match.tried)
    assert len(match.tried) <= most_tries
