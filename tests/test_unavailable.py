"""A database that cannot be reached is a 503 with its own code, at once: never a 500, and
never a 409 "busy" after the session-lock timeout."""

from __future__ import annotations

import socket

import pytest

from sessions_app.runtime.pool import runtimes
from spaces import pgpool
from tests.test_thread_hops import request

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def dead_conninfo() -> str:
    with socket.socket() as probe:  # a loopback port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=gone user=nobody connect_timeout=1"


async def test_an_unreachable_database_is_503_service_unavailable(monkeypatch, settings) -> None:
    from asgiref.sync import sync_to_async

    from tests.test_thread_hops import _user_and_key

    key = await sync_to_async(_user_and_key)()
    status, space = await request("POST", "/spaces", key, {"label": "S"})
    assert status == 201
    status, tree = await request("GET", f"/spaces/{space['id']}/sessions", key)
    await runtimes.aclose_current()
    await pgpool.pools.aclose_current()

    # The database goes away: the hot paths' pool can no longer connect.
    settings.STELLO = {**settings.STELLO, "ASYNC_POOL_TIMEOUT_SECONDS": 1.0,
                       "SESSION_LOCK_TIMEOUT_SECONDS": 3600.0}
    monkeypatch.setattr(pgpool, "conninfo", dead_conninfo)
    try:
        for method, path, body in [
            ("GET", f"/spaces/{space['id']}/sessions", None),
            ("POST", f"/spaces/{space['id']}/sessions/{tree['id']}/turn", {"input": "hi"}),
            ("POST", "/spaces", {"label": "another"}),
        ]:
            status, answer = await request(method, path, key, body)
            assert (status, answer["code"]) == (503, "SERVICE_UNAVAILABLE"), (method, path)
    finally:
        await runtimes.aclose_current()
        await pgpool.pools.aclose_current()


async def test_a_websocket_upgrade_without_a_database_is_refused_503(monkeypatch, alice_key,
                                                                     settings) -> None:
    """The upgrade's key and space checks speak the same errors as REST: a 503 body, not a
    crashed handshake."""
    from tests.ws.test_consumer import key_header, refused_with_status

    settings.STELLO = {**settings.STELLO, "ASYNC_POOL_TIMEOUT_SECONDS": 1.0}
    await pgpool.pools.aclose_current()
    monkeypatch.setattr(pgpool, "conninfo", dead_conninfo)
    try:
        status, _, body = await refused_with_status(
            "/spaces/00000000-0000-0000-0000-000000000000/ws", key_header(alice_key))
    finally:
        await pgpool.pools.aclose_current()
    assert (status, body) == (503, {"error": "Service temporarily unavailable",
                                    "code": "SERVICE_UNAVAILABLE"})
