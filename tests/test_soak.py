"""A bounded soak: two real daphne processes on the test database and Redis, hundreds of
concurrent operations, then a full consistency check.

Six sessions (the main session and five children) each get six concurrent clients: three REST
clients that alternate between the processes request by request, and three WebSocket clients,
connected to both processes, that alternate `session.stream` and `session.message`. Every
client runs its operations one after the other; all 36 run at once (324 operations in all).
The offline LLM answers `echo: <input>`; consolidation and integration run in the background
as configured by default (every 3 turns of a child), so memory jobs compete for the same
session locks.

Afterwards, for every session: no record is lost or duplicated (records are exactly
2 x turnCount, and every acknowledged input appears exactly once), every user record is
immediately followed by its own reply, turnCount equals the number of acknowledged turns, and
no operation failed (a 409 "session busy" counts as a failure: the lock timeout is 120 s).
The whole run must finish within TIME_LIMIT seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from sessions_app.models import Record, Session, SessionData
from tests.support.servers import (
    Server,
    committed_tenant,
    http_json,
    server_env,
    server_processes,
)

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.redis,
              pytest.mark.django_db(transaction=True)]

SESSIONS = 6  # the main session and five children
REST_CLIENTS = 3  # per session
WS_CLIENTS = 3  # per session, on both processes
OPS_PER_CLIENT = 9
TOTAL_OPS = SESSIONS * (REST_CLIENTS + WS_CLIENTS) * OPS_PER_CLIENT  # 324
TIME_LIMIT = 90.0  # seconds for the whole soak (it takes a few seconds)
OP_TIMEOUT = 60.0  # seconds for one operation (they queue on their session's lock)


@dataclass
class Outcome:
    """What the clients saw: acknowledged inputs per session, and every failure."""

    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    updates: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # per WS client

    def ack(self, session_id: str, text: str) -> None:
        self.acknowledged.setdefault(session_id, []).append(text)


async def rest_client(servers: list[Server], pool: ThreadPoolExecutor, key: str, space_id: str,
                      session_id: str, tag: str, outcome: Outcome) -> None:
    loop = asyncio.get_running_loop()
    for n in range(OPS_PER_CLIENT):
        server = servers[n % 2]  # request by request, both processes
        text = f"{tag} rest op {n}"
        url = server.http(f"/spaces/{space_id}/sessions/{session_id}/turn")
        try:
            status, body = await loop.run_in_executor(
                pool, lambda url=url, text=text: http_json("POST", url, key, {"input": text},
                                                           timeout=OP_TIMEOUT))
        except OSError as exc:
            outcome.failures.append(f"{text}: {type(exc).__name__}: {exc}")
            continue
        if status == 200 and body["turn"]["finalContent"] == f"echo: {text}":
            outcome.ack(session_id, text)
        else:
            outcome.failures.append(f"{text}: HTTP {status} {body}")


async def next_answer(ws: ClientConnection, updates: list[int]) -> dict[str, Any]:
    """The next frame that is not a `session.updated` notice (those are collected)."""
    while True:
        async with asyncio.timeout(OP_TIMEOUT):
            frame = json.loads(await ws.recv())
        if frame["type"] != "session.updated":
            return frame
        updates.append(frame["turnCount"])


async def ws_client(server: Server, key: str, space_id: str, session_id: str, tag: str,
                    outcome: Outcome) -> None:
    updates: list[int] = []
    outcome.updates[tag] = (session_id, updates)
    async with connect(server.ws(space_id), additional_headers={"X-API-Key": key},
                       open_timeout=OP_TIMEOUT, proxy=None) as ws:
        # Watching: the other clients' turns on this session arrive as `session.updated`.
        await ws.send(json.dumps({"type": "session.enter", "sessionId": session_id,
                                  "watch": True}))
        entered = await next_answer(ws, updates)
        if entered["type"] != "session.entered":
            outcome.failures.append(f"{tag} enter: {entered}")
            return
        for n in range(OPS_PER_CLIENT):
            kind = "session.stream" if n % 2 == 0 else "session.message"
            text = f"{tag} {kind.split('.')[1]} op {n}"
            await ws.send(json.dumps({"type": kind, "input": text}))
            frame = await next_answer(ws, updates)
            chunks = []
            while kind == "session.stream" and frame["type"] == "stream.delta":
                chunks.append(frame["chunk"])
                frame = await next_answer(ws, updates)
            expected = "stream.end" if kind == "session.stream" else "turn.complete"
            if frame["type"] != expected:
                outcome.failures.append(f"{text}: {frame}")
                continue
            final = frame["result"]["turn"]["finalContent"]
            if final != f"echo: {text}" or (chunks and "".join(chunks) != final):
                outcome.failures.append(f"{text}: answered {final!r} in chunks {chunks}")
                continue
            outcome.ack(session_id, text)


@pytest.fixture
def soak_space() -> dict[str, str]:
    """A user, key and space committed to the test database."""
    return committed_tenant("soaker", "Soak")


@pytest.fixture
def two_servers(soak_space, tmp_path: Path):
    env = server_env(
        REDIS_URL=os.environ["REDIS_URL"],
        STELLO_REDIS_PREFIX=f"stello-soak-{uuid.uuid4().hex[:12]}",
        STELLO_CONSOLIDATE_EVERY_N_TURNS="3",  # memory jobs run during the soak
    )
    with server_processes([env, env], tmp_path) as servers:
        yield servers


def test_a_bounded_soak_through_two_processes_loses_nothing(soak_space, two_servers) -> None:
    key, space_id = soak_space["key"], soak_space["space_id"]
    sessions = [soak_space["root_id"]]
    for n in range(SESSIONS - 1):  # the children, forked through both processes
        status, child = http_json("POST", two_servers[n % 2].http(
            f"/spaces/{space_id}/sessions/{sessions[0]}/fork"), key, {"label": f"child {n}"})
        assert status == 201, child
        sessions.append(child["id"])

    outcome = Outcome()

    async def soak() -> None:
        with ThreadPoolExecutor(max_workers=SESSIONS * REST_CLIENTS) as pool:
            clients = []
            for s, session_id in enumerate(sessions):
                for c in range(REST_CLIENTS):
                    clients.append(rest_client(two_servers[c % 2:] + two_servers[:c % 2], pool,
                                               key, space_id, session_id, f"s{s} c{c}",
                                               outcome))
                for c in range(WS_CLIENTS):
                    clients.append(ws_client(two_servers[c % 2], key, space_id, session_id,
                                             f"s{s} w{c}", outcome))
            async with asyncio.timeout(TIME_LIMIT):
                results = await asyncio.gather(*clients, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                outcome.failures.append(f"client crashed: {type(result).__name__}: {result}")

    started = time.monotonic()
    try:
        asyncio.run(soak())
    except TimeoutError:
        pytest.fail(f"the soak did not finish within {TIME_LIMIT:g}s")
    elapsed = time.monotonic() - started
    print(f"soak: {TOTAL_OPS} operations through 2 processes in {elapsed:.1f}s")

    assert outcome.failures == []
    assert sum(len(texts) for texts in outcome.acknowledged.values()) == TOTAL_OPS
    for session_id in sessions:
        acknowledged = outcome.acknowledged[session_id]
        records = list(Record.objects.filter(session_id=session_id)
                       .values_list("role", "content"))
        turn_count = Session.objects.get(pk=session_id).turn_count
        assert turn_count == len(acknowledged)
        assert len(records) == 2 * turn_count
        for n in range(0, len(records), 2):
            user, reply = records[n], records[n + 1]
            assert user[0] == "user", records[n:n + 2]
            assert reply == ("assistant", f"echo: {user[1]}"), records[n:n + 2]
        said = Counter(content for role, content in records if role == "user")
        assert said == Counter(acknowledged)  # each acknowledged input exactly once, no other
    for tag, (session_id, updates) in outcome.updates.items():  # each at most once, in range
        assert len(updates) == len(set(updates)), (tag, updates)
        assert all(1 <= n <= len(outcome.acknowledged[session_id]) for n in updates), tag
    # The memory jobs did run alongside (each child consolidated at least once).
    deadline = time.monotonic() + 20
    while SessionData.objects.filter(session_id__in=sessions[1:], key="memory").count() < (
            SESSIONS - 1) and time.monotonic() < deadline:
        time.sleep(0.2)
    memories = SessionData.objects.filter(session_id__in=sessions[1:], key="memory")
    assert sorted(str(m.session_id) for m in memories) == sorted(sessions[1:])
    assert all(m.content.strip() for m in memories)
    for server in two_servers:
        log = server.output(tail=200_000)
        assert "Traceback" not in log and " ERROR " not in log, log[-6000:]
