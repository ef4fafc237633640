"""What `Idempotency-Key` costs, through the real ASGI application (tests/test_thread_hops.py has
the method). A request without the key costs nothing extra (the hot-path counts there hold);
one with it stays on the event loop on PostgreSQL, and a replay is three round trips."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from sessions_app.runtime.pool import runtimes
from spaces import idempotency, pgpool
from stello_project.asgi import application
from tests.test_thread_hops import Tenant
from tests.test_thread_hops import hops as hops  # fixtures, by name
from tests.test_thread_hops import no_background_memory as no_background_memory
from tests.test_thread_hops import tenant as tenant

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


async def keyed(method: str, path: str, key: str, body: Any, idempotency_key: str
                ) -> tuple[int, dict[bytes, bytes], Any]:
    raw = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"x-api-key", key.encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                    (b"idempotency-key", idempotency_key.encode())],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    app = ApplicationCommunicator(application, scope)
    await app.send_input({"type": "http.request", "body": raw})
    start = await app.receive_output(10)
    content = b""
    while True:
        message = await app.receive_output(10)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await app.wait(10)
    return start["status"], {k.lower(): v for k, v in start["headers"]}, json.loads(content)


async def settled() -> None:
    await runtimes.current().locks.settled()
    await idempotency.key_locks.current().settled()
    await idempotency.settled()


async def test_a_keyed_turn_and_its_replay_stay_on_the_loop(hops, tenant: Tenant,
                                                            monkeypatch) -> None:
    monkeypatch.setattr(idempotency, "_next_sweep", float("inf"))  # no hourly sweep here
    turn = f"/spaces/{tenant.space}/sessions/{tenant.child}/turn"
    await settled()
    hops.reset()
    pgpool.round_trips.reset()
    status, headers, first = await keyed("POST", turn, tenant.key, {"input": "hi"}, "k")
    await settled()
    assert status == 200 and b"idempotent-replayed" not in headers
    # The turn's three, plus the key's lock, the look-up, the stored answer and the unlock.
    assert pgpool.round_trips.count == 7

    pgpool.round_trips.reset()
    status, headers, again = await keyed("POST", turn, tenant.key, {"input": "hi"}, "k")
    await settled()
    assert status == 200 and headers[b"idempotent-replayed"] == b"true"
    assert again == first
    assert pgpool.round_trips.count == 3  # the lock, the look-up, the unlock
    assert sum(hops.calls.values()) == 0, hops.calls
