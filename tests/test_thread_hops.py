"""Thread hand-offs per request on the hot paths, through the real ASGI application.

Every `sync_to_async` / `async_to_sync` call made while one request is served is counted, with
the request driven through `stello_project.asgi.application` exactly as an ASGI server drives
it (an HTTP scope, the body, the response messages, the app's return). The API key is already
in the process's auth cache and the space's agent is already built (a warm-up request does
both), as on a busy server.

On PostgreSQL the hot paths stay on the event loop: zero hops, Django's handler included. On
SQLite the ORM store crosses to a worker thread once per unit of work, by design, and because a
thread then ran sync code for the request, the handler closes the response in that thread (one
more hop, where Django's request_finished closes that thread's connections).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import AsyncToSync, SyncToAsync, sync_to_async
from asgiref.testing import ApplicationCommunicator

from sessions_app.runtime.pool import runtimes
from spaces import pgpool
from stello_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


class HopCounter:
    """Counts asgiref's thread hand-offs, by direction and by the function handed off."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()


@pytest.fixture
def hops(monkeypatch) -> HopCounter:
    counter = HopCounter()
    sync_call, async_call = SyncToAsync.__call__, AsyncToSync.__call__

    async def counted_sync_to_async(self, *args: Any, **kwargs: Any) -> Any:
        counter.calls[f"sync_to_async:{getattr(self.func, '__qualname__', self.func)}"] += 1
        return await sync_call(self, *args, **kwargs)

    def counted_async_to_sync(self, *args: Any, **kwargs: Any) -> Any:
        name = getattr(self.awaitable, "__qualname__", self.awaitable)
        counter.calls[f"async_to_sync:{name}"] += 1
        return async_call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted_sync_to_async)
    monkeypatch.setattr(AsyncToSync, "__call__", counted_async_to_sync)
    return counter


async def request(method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP request through the real ASGI application; (status, JSON body)."""
    raw = b"" if body is None else json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"x-api-key", key.encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode())],
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
    await app.wait(10)  # the handler has returned: the response is closed
    return start["status"], json.loads(content) if content else None


def _user_and_key() -> str:
    from django.contrib.auth import get_user_model

    from spaces.apikeys import apikey_create

    user = get_user_model().objects.create_user(username="hops")
    return apikey_create(user=user, name="hops")[1]


class Tenant:
    """A user with a cached key, a space with a child session, and a warm agent."""

    key: str
    space: str
    root: str
    child: str

    async def path(self, suffix: str = "", session: str | None = None) -> str:
        base = f"/spaces/{self.space}"
        if session is not None:
            base += f"/sessions/{session}"
        return base + suffix


@pytest.fixture
def no_background_memory(settings) -> None:
    """Only the request's own work: no consolidation or integration queued behind it."""
    settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "CONSOLIDATE_ON_ARCHIVE": False, "INTEGRATE_AFTER_CONSOLIDATE": False}


@pytest.fixture
async def tenant(no_background_memory) -> AsyncIterator[Tenant]:
    from spaces.apikeys import auth_cache

    auth_cache.clear()
    t = Tenant()
    t.key = await sync_to_async(_user_and_key)()
    status, space = await request("POST", "/spaces", t.key, {"label": "S"})  # caches the key
    assert status == 201
    t.space = space["id"]
    status, tree = await request("GET", f"/spaces/{t.space}/sessions", t.key)
    t.root = tree["id"]
    status, child = await request("POST", f"/spaces/{t.space}/sessions/{t.root}/fork", t.key,
                                  {"label": "c"})  # builds the space's agent in this loop
    assert status == 201
    t.child = child["id"]
    yield t
    await runtimes.aclose_current()


# (method, path under the tenant, body, expected status)
def hot_paths(t: Tenant) -> dict[str, tuple[str, str, Any, int]]:
    space = f"/spaces/{t.space}"
    return {
        "GET tree": ("GET", f"{space}/sessions", None, 200),
        "GET session": ("GET", f"{space}/sessions/{t.child}", None, 200),
        "GET messages": ("GET", f"{space}/sessions/{t.child}/messages", None, 200),
        "POST spaces": ("POST", "/spaces", {"label": "another"}, 201),
        "POST turn": ("POST", f"{space}/sessions/{t.child}/turn", {"input": "hi"}, 200),
        "POST fork": ("POST", f"{space}/sessions/{t.root}/fork", {"label": "f"}, 201),
        "POST consolidate": ("POST", f"{space}/sessions/{t.child}/consolidate", None, 200),
        "POST integrate": ("POST", f"{space}/integrate", None, 200),
        "POST archive": ("POST", f"{space}/sessions/{t.child}/archive", None, 200),
    }


HOT_PATHS = ["GET tree", "GET session", "GET messages", "POST spaces", "POST turn",
             "POST fork", "POST consolidate", "POST integrate", "POST archive"]

# SQLite: the ORM crosses once per unit of work (each store call; the space check is cached
# since the tenant's first request), plus the response's close in the request's worker thread
# (see the module doc).
SQLITE_HOPS = {
    "GET tree": 2,          # session_tree, close
    "GET session": 2,       # get_session, close
    "GET messages": 2,      # session_messages, close
    "POST spaces": 2,       # space_create (one transaction), close
    "POST turn": 3,         # load_turn_context, save_call, close
    "POST fork": 3,         # load_turn_context, create_child, close
    "POST consolidate": 4,  # load_consolidation_input, save_consolidation, log_event, close
    "POST integrate": 9,    # main_session_id, get_session, read_slot x2, collect_memories,
                            # space_prompts, save_integration, log_event (per entry), close
    "POST archive": 2,      # archive, close
}


async def measure(hops: HopCounter, t: Tenant, name: str) -> Counter[str]:
    method, path, body, expected = hot_paths(t)[name]
    if name == "POST consolidate":  # a child with a turn to consolidate
        _, turn_path, turn_body, _ = hot_paths(t)["POST turn"]
        assert (await request("POST", turn_path, t.key, turn_body))[0] == 200
    hops.reset()
    status, _ = await request(method, path, t.key, body)
    assert status == expected, (name, status)
    return Counter(hops.calls)


@pytest.mark.postgres
@pytest.mark.parametrize("name", HOT_PATHS)
async def test_hot_paths_make_no_thread_hop_on_postgresql(hops, tenant, name) -> None:
    calls = await measure(hops, tenant, name)
    assert sum(calls.values()) == 0, calls


@pytest.mark.sqlite
@pytest.mark.parametrize("name", HOT_PATHS)
async def test_hot_paths_hop_once_per_unit_of_work_on_sqlite(hops, tenant, name) -> None:
    calls = await measure(hops, tenant, name)
    assert sum(calls.values()) == SQLITE_HOPS[name], calls


async def round_trips(method: str, path: str, key: str, body: Any = None) -> int:
    """PostgreSQL round trips of one request, the session lock's unlock included (it is sent
    after the answer)."""
    runtime = runtimes.current()
    pgpool.round_trips.reset()
    status, _ = await request(method, path, key, body)
    assert status in (200, 201), status
    await runtime.locks.settled()
    return pgpool.round_trips.count


@pytest.mark.postgres
async def test_the_tree_costs_one_round_trip_once_the_space_was_checked(tenant) -> None:
    from spaces.selectors import space_owners

    tree = f"/spaces/{tenant.space}/sessions"
    space_owners.clear()
    assert await round_trips("GET", tree, tenant.key) == 2  # the space check, the tree
    assert await round_trips("GET", tree, tenant.key) == 1  # the tree (the target: at most 3)


@pytest.mark.postgres
async def test_a_turn_costs_three_round_trips(tenant) -> None:
    """The target is at most 5 for a turn without tool calls: the session lock with the turn
    context right after it in one pipeline (only the records this process does not hold), the
    call's records and counts in one statement, the unlock."""
    turn = f"/spaces/{tenant.space}/sessions/{tenant.child}/turn"
    for n in range(3):  # the same cost on the 1st and the nth turn: no history is re-read
        assert await round_trips("POST", turn, tenant.key, {"input": f"turn {n}"}) == 3


@pytest.mark.postgres
async def test_a_fork_without_context_costs_four_round_trips(tenant) -> None:
    fork = f"/spaces/{tenant.space}/sessions/{tenant.root}/fork"
    # The lock, the source (no history), the child in one statement, the unlock.
    assert await round_trips("POST", fork, tenant.key, {"label": "f"}) == 4


@pytest.mark.postgres
async def test_the_rate_limit_is_counted_on_the_loop(hops, tenant, settings) -> None:
    """With STELLO_RATE_LIMIT set, the key's counter (in Redis when REDIS_URL is set) is
    awaited on the event loop: no hop, on the allowed requests and on the refused one (where
    Django logs the 429 in a thread, as it logs every 4xx of an async view)."""
    from spaces.throttling import rate_limiter

    await rate_limiter.areset()
    settings.STELLO = {**settings.STELLO, "RATE_LIMIT": "2/min"}
    calls = await measure(hops, tenant, "GET tree")
    assert (await request("GET", f"/spaces/{tenant.space}/sessions", tenant.key))[0] == 200
    assert (await request("GET", f"/spaces/{tenant.space}/sessions", tenant.key))[0] == 429
    assert sum(calls.values()) == 0, calls
    assert hops.calls == {"sync_to_async:log_response": 1}, hops.calls
    await rate_limiter.aclose_current()
