"""A server process outlives PostgreSQL restarts: every pooled connection (Django's pool, the
hot-path pool, the session-lock connections) is found dead and replaced without failing a
request, reads succeed on the first try, and while the database is down the answer is 503
SERVICE_UNAVAILABLE, never a 500.

The test runs its own PostgreSQL cluster (tests/support/pgcluster.py), so it can restart it
without disturbing anything else, and one real server process (tests/support/servers.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect

from spaces import pgpool
from tests.support.pgcluster import Cluster, pg_cluster
from tests.support.servers import ROOT, Server, http_json, server_env, server_processes

pytestmark = [pytest.mark.servers, pytest.mark.postgres]

APP_NAME = "stello-restart-test"
WAIT = 15  # seconds for one WebSocket frame


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with pg_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def database_url(cluster: Cluster) -> str:
    # Query options must reach every connection of the server (checked below).
    return f"{cluster.url}?application_name={APP_NAME}&connect_timeout=3"


def manage(url: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=server_env(DATABASE_URL=url))
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory) -> Iterator[Server]:
    manage(database_url, "migrate", "--noinput")
    env = server_env(
        DATABASE_URL=database_url,
        STELLO_CONSOLIDATE_EVERY_N_TURNS="0",
        # Keys and owners stay cached, so requests made while the database is down reach
        # the ORM, the store and the locks instead of stopping at authentication.
        STELLO_AUTH_CACHE_SECONDS="3600",
        STELLO_ASYNC_POOL_MIN_SIZE="4",
        STELLO_ASYNC_POOL_TIMEOUT_SECONDS="2",
        DATABASE_POOL_MIN_SIZE="2",
        DATABASE_POOL_TIMEOUT_SECONDS="2",
        STELLO_SESSION_LOCK_TIMEOUT_SECONDS="3600",  # a lock failure must not hide as a 409
    )
    with server_processes([env], tmp_path_factory.mktemp("pgrestart")) as (started,):
        yield started


@pytest.fixture(scope="module")
def key(server: Server, database_url: str) -> str:
    return manage(database_url, "createapikey", "alice").strip().splitlines()[-1]


def call(server: Server, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return http_json(method, server.http(path), key, body)


def ok(server: Server, key: str, method: str, path: str, body: Any = None) -> Any:
    status, answer = call(server, key, method, path, body)
    assert status in (200, 201), (method, path, status, answer, server.output())
    return answer


async def ws_turn(ws: ClientConnection, text: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "session.message", "input": text}))
    async with asyncio.timeout(WAIT):
        return json.loads(await ws.recv())


def open_ws(server: Server, space_id: str, key: str):
    return connect(server.ws(space_id), additional_headers={"X-API-Key": key},
                   open_timeout=WAIT, proxy=None)


def every_operation(server: Server, key: str, space_id: str, root_id: str) -> None:
    """Each kind of request once (reads first, so none is helped by a write): each must
    succeed at the first try."""
    base = f"/spaces/{space_id}"
    assert ok(server, key, "GET", f"{base}/sessions")["id"] == root_id  # hot-path read
    assert ok(server, key, "GET", f"{base}/sessions/{root_id}/messages")  # hot-path read
    assert any(s["id"] == space_id for s in ok(server, key, "GET", "/spaces"))  # the ORM
    turn = ok(server, key, "POST", f"{base}/sessions/{root_id}/turn", {"input": "again"})
    assert turn["turn"]["finalContent"] == "echo: again"  # lock connection + writes
    assert ok(server, key, "POST", "/spaces", {"label": "after"})["label"] == "after"
    assert ok(server, key, "POST", f"{base}/sessions/{root_id}/fork", {"label": "child"})


async def recovered(server: Server, key: str, paths: list[str], within: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + within
    for path in paths:
        while (status := call(server, key, "GET", path)[0]) != 200:
            assert status == 503, (path, status)
            assert asyncio.get_running_loop().time() < deadline, f"{path} still 503"
            await asyncio.sleep(0.2)


async def connections_by_name(cluster: Cluster) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(
        f"host=127.0.0.1 port={cluster.port} dbname=postgres user=root", autocommit=True
    ) as conn:
        rows = await (await conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1"
        )).fetchall()
    return dict(rows)


async def test_requests_survive_postgresql_restarts_and_get_503_while_it_is_down(
    cluster: Cluster, server: Server, key: str
) -> None:
    space = ok(server, key, "POST", "/spaces", {"label": "restart"})
    space_id = space["id"]
    root_id = ok(server, key, "GET", f"/spaces/{space_id}/sessions")["id"]
    async with open_ws(server, space_id, key) as ws:
        await ws.send(json.dumps({"type": "session.enter", "sessionId": root_id}))
        async with asyncio.timeout(WAIT):
            assert json.loads(await ws.recv())["type"] == "session.entered"
        assert (await ws_turn(ws, "before"))["type"] == "turn.complete"
        every_operation(server, key, space_id, root_id)
        # Every connection of the server (Django's pool, the hot-path pool, the session-lock
        # connections) was opened with the URL's options.
        names = await connections_by_name(cluster)
        assert names.get(APP_NAME, 0) >= 3 and set(names) == {APP_NAME}, names

        for restart in range(2):  # pools refilled after the first restart go stale again
            cluster.restart()  # every pooled connection of the server is now dead
            every_operation(server, key, space_id, root_id)
            # The open socket's next turn goes through the same replaced connections.
            answer = await ws_turn(ws, f"after restart {restart}")
            assert answer["type"] == "turn.complete", answer
            assert answer["result"]["turn"]["finalContent"] == f"echo: after restart {restart}"

        cluster.stop()
        try:
            base = f"/spaces/{space_id}"
            for method, path, body in [
                ("GET", f"{base}/sessions", None),
                ("GET", f"{base}/sessions/{root_id}", None),
                ("GET", "/spaces", None),
                ("POST", f"{base}/sessions/{root_id}/turn", {"input": "down"}),
                ("POST", "/spaces", {"label": "down"}),
                ("PATCH", base, {"label": "down"}),
            ]:
                status, answer = call(server, key, method, path, body)
                assert (status, answer["code"]) == (503, "SERVICE_UNAVAILABLE"), (
                    method, path, status, answer)
            answer = await ws_turn(ws, "down")
            assert (answer["type"], answer["code"]) == ("error", "HANDLER_ERROR"), answer
            assert "unavailable" in answer["message"], answer
        finally:
            cluster.start()

        # After an outage the pools reconnect on their own back-off (seconds): until then
        # the answer is still 503, never anything else.
        await recovered(server, key, [f"/spaces/{space_id}/sessions", "/spaces"])
        every_operation(server, key, space_id, root_id)
        answer = await ws_turn(ws, "back")
        assert answer["type"] == "turn.complete", answer

    # A new WebSocket connection works too, and the session holds every turn that succeeded.
    async with open_ws(server, space_id, key) as ws:
        await ws.send(json.dumps({"type": "session.enter", "sessionId": root_id}))
        async with asyncio.timeout(WAIT):
            assert json.loads(await ws.recv())["type"] == "session.entered"
        assert (await ws_turn(ws, "new socket"))["type"] == "turn.complete"
    messages = ok(server, key, "GET", f"/spaces/{space_id}/sessions/{root_id}/messages")
    inputs = [m["content"] for m in messages if m["role"] == "user"]
    assert inputs == ["before", "again", "again", "after restart 0", "again",
                      "after restart 1", "again", "back", "new socket"]
    assert "Traceback" not in server.output(tail=200_000), server.output()


def test_an_unreachable_database_stops_start_up_in_one_line_naming_database_url() -> None:
    with socket.socket() as probe:  # a loopback port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = server_env(DATABASE_URL=f"postgresql://root@127.0.0.1:{port}/stello")
    started = subprocess.run([sys.executable, "-c", "import stello_project.asgi"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode != 0
    last = started.stderr.strip().splitlines()[-1]
    assert "DATABASE_URL: cannot connect to PostgreSQL" in last and str(port) in last, last
    assert "error connecting" not in started.stderr  # no pool retrying in the background


# A statement that ends its own connection the first time it runs (the sequence counts the runs;
# nextval is not rolled back), like a server restarting under a statement in flight.
DIES_ONCE = ("SELECT CASE WHEN nextval('stello_test_dies_once') = 1 "
             "THEN pg_terminate_backend(pg_backend_pid()) ELSE true END")


@pytest.fixture
async def dies_once(transactional_db) -> AsyncIterator[None]:
    async with pgpool.connection() as conn:
        await conn.execute("DROP SEQUENCE IF EXISTS stello_test_dies_once")
        await conn.execute("CREATE SEQUENCE stello_test_dies_once")
    yield
    async with pgpool.connection() as conn:
        await conn.execute("DROP SEQUENCE stello_test_dies_once")
    await pgpool.pools.aclose_current()


async def runs() -> int:
    row = await pgpool.fetchone("SELECT last_value FROM stello_test_dies_once")
    return row[0]


async def test_a_read_whose_connection_dies_under_it_is_retried_once(dies_once) -> None:
    assert await pgpool.fetchone(DIES_ONCE) == (True,)
    assert await runs() == 2


async def test_a_write_whose_connection_dies_under_it_is_not_retried(dies_once) -> None:
    with pytest.raises(pgpool.ConnectionLost):
        async with pgpool.connection() as conn:
            await conn.execute(DIES_ONCE)
    assert await runs() == 1
