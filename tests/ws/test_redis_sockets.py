"""WebSocket connections on the production shape (a real server process, PostgreSQL, Redis):
they survive idle and busy periods, one process holds thousands of them, and `/readyz`
floods neither fail readiness nor hurt the sockets.

What broke before: with redis-py's default 5 s socket timeout, the channel layer's blocking
receive (up to 5 s on Redis) timed out and watching sockets lost their updates or closed with
1011; every waiting receive held a Redis connection from a pool capped at 100, so a few hundred
sockets per process got `Internal server error` on enter; and each `/readyz` took a Redis
connection and a receive of its own, so a flood of them emptied the same pool.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.servers import Server, committed_tenant, server_env, server_processes

pytestmark = [
    pytest.mark.servers,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

WAIT = 30  # seconds for one frame (generous: thousands of sockets share two cores)
QUIET_SECONDS = 30  # how long the sockets sit idle, or keep talking once a second
MANY_SOCKETS = 5000
MANY_WATCHING = 500
OPENING_AT_ONCE = 200  # stay well inside the listen backlog of the server
READYZ_FLOOD = 2000  # anonymous /readyz requests, up to 500 at once


def raise_open_files_limit(wanted: int) -> None:
    """Room for `wanted` sockets in this process and in the servers it starts (they inherit
    the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert soft == resource.RLIM_INFINITY or soft >= wanted, (
        f"the open-files limit ({soft}, hard {hard}) is below the {wanted} this test needs")


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory) -> Iterator[Server]:
    raise_open_files_limit(MANY_SOCKETS * 2 + 1000)  # both ends of every socket, plus files
    env = server_env(
        REDIS_URL=os.environ["REDIS_URL"],
        STELLO_REDIS_PREFIX=f"stello-test-{uuid.uuid4().hex[:12]}",
        STELLO_CONSOLIDATE_EVERY_N_TURNS="0",
    )
    with server_processes([env], tmp_path_factory.mktemp("redis-sockets")) as (started,):
        yield started


# -- helpers ---------------------------------------------------------------------------------


def open_ws(server: Server, tenant: dict[str, str]):
    return connect(server.ws(tenant["space_id"]), additional_headers={"X-API-Key": tenant["key"]},
                   open_timeout=WAIT, proxy=None, ping_interval=None)


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        return json.loads(await ws.recv())


async def enter(ws: ClientConnection, session_id: str, *, watch: bool) -> None:
    await send(ws, {"type": "session.enter", "sessionId": session_id, "watch": watch})
    frame = await recv(ws)
    assert frame["type"] == "session.entered", frame


async def stream(ws: ClientConnection, text: str) -> dict[str, Any]:
    """One `session.stream`; its `stream.end` frame (after at least one delta)."""
    await send(ws, {"type": "session.stream", "input": text})
    deltas = 0
    while (frame := await recv(ws))["type"] == "stream.delta":
        deltas += 1
    assert frame["type"] == "stream.end" and deltas >= 1, frame
    return frame


async def fork_sessions(server: Server, tenant: dict[str, str], n: int) -> list[str]:
    url = server.http(f"/spaces/{tenant['space_id']}/sessions/{tenant['root_id']}/fork")
    async with httpx2.AsyncClient(headers={"X-API-Key": tenant["key"]}, timeout=WAIT) as client:
        ids = []
        for i in range(n):
            response = await client.post(url, json={"label": f"s{i}"})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        return ids


async def rest_turn(server: Server, tenant: dict[str, str], session_id: str) -> None:
    url = server.http(f"/spaces/{tenant['space_id']}/sessions/{session_id}/turn")
    async with httpx2.AsyncClient(headers={"X-API-Key": tenant["key"]}, timeout=WAIT) as client:
        response = await client.post(url, json={"input": "from rest"})
        assert response.status_code == 200, response.text


# -- item 1: sockets outlive Redis's blocking timeouts ------------------------------------------


def test_idle_and_busy_sockets_still_stream_after_thirty_seconds_on_redis(server) -> None:
    tenant = committed_tenant("alice", "long-lived sockets")
    asyncio.run(idle_and_busy(server, tenant))
    assert server.running
    assert "Traceback" not in server.output(tail=200_000)


async def idle_and_busy(server: Server, tenant: dict[str, str]) -> None:
    sessions = await fork_sessions(server, tenant, 25)
    idle, busy = sessions[:20], sessions[20:]

    async def sit_idle(session_id: str, watch: bool) -> None:
        async with open_ws(server, tenant) as ws:
            await enter(ws, session_id, watch=watch)
            await asyncio.sleep(QUIET_SECONDS)
            if watch:  # its listener still hears turns made elsewhere
                await rest_turn(server, tenant, session_id)
                assert await recv(ws) == {"type": "session.updated", "sessionId": session_id,
                                          "turnCount": 1}
            end = await stream(ws, "after the quiet")
            assert end["result"]["turn"]["finalContent"] == "echo: after the quiet"

    async def keep_talking(session_id: str, watch: bool) -> None:
        async with open_ws(server, tenant) as ws:
            await enter(ws, session_id, watch=watch)
            for second in range(QUIET_SECONDS):
                await send(ws, {"type": "session.message", "input": f"tick {second}"})
                frame = await recv(ws)
                assert frame["type"] == "turn.complete", frame
                await asyncio.sleep(1)
            await stream(ws, "after the talk")

    async with asyncio.timeout(QUIET_SECONDS + 4 * WAIT):
        await asyncio.gather(
            *(sit_idle(s, watch=n % 2 == 0) for n, s in enumerate(idle)),
            *(keep_talking(s, watch=n % 2 == 0) for n, s in enumerate(busy)),
        )


# -- item 2: thousands of sockets per process, readiness that cannot be starved ---------------


def test_five_thousand_sockets_in_one_process_survive_a_readyz_flood(server) -> None:
    tenant = committed_tenant("bob", "crowded space")
    asyncio.run(crowd(server, tenant))
    assert server.running
    assert "Traceback" not in server.output(tail=500_000)


async def crowd(server: Server, tenant: dict[str, str]) -> None:
    watched = await fork_sessions(server, tenant, 10)
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    sockets: list[ClientConnection] = []
    watchers: list[ClientConnection] = []  # not the first of `sockets`: they open in any order

    async def join(n: int) -> None:
        async with gate:
            ws = await open_ws(server, tenant)
            sockets.append(ws)
            watching = n < MANY_WATCHING
            if watching:
                watchers.append(ws)
            await enter(ws, watched[n % len(watched)] if watching else tenant["root_id"],
                        watch=watching)

    async def ready_status(client: httpx2.AsyncClient) -> int:
        return (await client.get("/readyz")).status_code

    try:
        async with asyncio.timeout(600):
            await asyncio.gather(*(join(n) for n in range(MANY_SOCKETS)))
            assert len(sockets) == MANY_SOCKETS

            # Anonymous callers flood /readyz while every socket is open: all ready. (A new
            # connection per request: a kept-alive one may meet the server's idle close.)
            limits = httpx2.Limits(max_connections=500, max_keepalive_connections=0)
            async with httpx2.AsyncClient(base_url=server.http(""), timeout=WAIT,
                                          limits=limits) as anonymous:
                statuses = await asyncio.gather(
                    *(ready_status(anonymous) for _ in range(READYZ_FLOOD)))
            assert Counter(statuses) == {200: READYZ_FLOOD}  # (a list diff would take minutes)

            # Every watcher hears a turn made elsewhere on its session ...
            for session_id in watched:
                await rest_turn(server, tenant, session_id)
            assert len(watchers) == MANY_WATCHING
            updates = await asyncio.gather(*(recv(ws) for ws in watchers))
            assert {u["type"] for u in updates} == {"session.updated"}
            assert {u["turnCount"] for u in updates} == {1}

            # ... and every socket still answers.
            async def leave(ws: ClientConnection) -> str:
                await send(ws, {"type": "session.leave"})
                return (await recv(ws))["type"]

            left = await asyncio.gather(*(leave(ws) for ws in sockets))
            assert Counter(left) == {"session.left": MANY_SOCKETS}
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
