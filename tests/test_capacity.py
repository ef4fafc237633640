"""Capacity: one real server process holds hundreds of in-flight turns on a slow LLM with a
tiny database pool, because no connection is held while a turn waits on the LLM or a lock.

The old design held a pooled connection per waiting request and answered 500 (PoolTimeout)
from about 25 in-flight turns on. Here 240 turns (REST and WebSocket mixed) wait on a loopback
OpenAI-compatible server that answers each call after a delay, with a hot-path pool of three
connections; every turn must succeed and be saved whole, and another tenant's read must be
answered while they wait. (The 1000-turn figure is the benchmark's `inflight` phase.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from websockets.asyncio.client import connect

from sessions_app.models import Record, Session
from tests.support.llm_servers import OpenAIServer
from tests.support.servers import committed_tenant, server_env, server_processes

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TURNS = 240  # half REST, half WebSocket
LLM_DELAY = 1.5  # seconds per LLM answer


async def _fork_sessions(client: httpx2.AsyncClient, tenant: dict[str, str], n: int) -> list[str]:
    url = f"/spaces/{tenant['space_id']}/sessions/{tenant['root_id']}/fork"
    ids = []
    for i in range(n):
        response = await client.post(url, json={"label": f"s{i}"})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def _rest_turn(client: httpx2.AsyncClient, space_id: str, session_id: str) -> Any:
    response = await client.post(f"/spaces/{space_id}/sessions/{session_id}/turn",
                                 json={"input": f"hello {session_id}"})
    return response.status_code, response.json()


async def _ws_turn(ws_url: str, key: str, session_id: str) -> Any:
    async with connect(ws_url, additional_headers={"X-API-Key": key}, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "session.enter", "sessionId": session_id}))
        entered = json.loads(await ws.recv())
        assert entered["type"] == "session.entered", entered
        await ws.send(json.dumps({"type": "session.message", "input": f"hello {session_id}"}))
        return json.loads(await ws.recv())


def test_hundreds_of_in_flight_turns_with_a_three_connection_pool(tmp_path) -> None:
    alice = committed_tenant("alice", "busy tenant")
    bob = committed_tenant("bob", "quiet tenant")
    with OpenAIServer() as llm:
        env = server_env(
            STELLO_LLM_PROVIDER="openai", STELLO_LLM_BASE_URL=llm.base_url,
            STELLO_LLM_API_KEY="test", STELLO_LLM_MAX_RETRIES="0",
            STELLO_LLM_TIMEOUT_SECONDS="60", STELLO_CONSOLIDATE_EVERY_N_TURNS="0",
            STELLO_ASYNC_POOL_MIN_SIZE="1", STELLO_ASYNC_POOL_MAX_SIZE="3",
        )
        with server_processes([env], tmp_path) as (server,):
            async def scenario() -> tuple[list[Any], int]:
                limits = httpx2.Limits(max_connections=TURNS + 10)
                async with (
                    httpx2.AsyncClient(base_url=server.http(""), timeout=60, limits=limits,
                                       headers={"X-API-Key": alice["key"]}) as client,
                    httpx2.AsyncClient(base_url=server.http(""), timeout=60,
                                       headers={"X-API-Key": bob["key"]}) as other,
                ):
                    sessions = await _fork_sessions(client, alice, TURNS)
                    llm.delay(LLM_DELAY, text="slow answer", times=TURNS)
                    half = TURNS // 2
                    turns = [
                        *(_rest_turn(client, alice["space_id"], s) for s in sessions[:half]),
                        *(_ws_turn(server.ws(alice["space_id"]), alice["key"], s)
                          for s in sessions[half:]),
                    ]
                    running = asyncio.gather(*turns, return_exceptions=True)
                    for _ in range(1200):  # until many turns wait on the LLM (at most 60 s)
                        if len(llm.requests) >= TURNS // 2:
                            break
                        await asyncio.sleep(0.05)
                    # Another tenant is served while they wait.
                    read = await other.get(f"/spaces/{bob['space_id']}/sessions")
                    results = await running
                    return results, read.status_code

            results, other_status = asyncio.run(scenario())

    assert other_status == 200
    failures = [r for r in results if isinstance(r, BaseException)
                or (isinstance(r, tuple) and r[0] != 200)
                or (isinstance(r, dict) and r.get("type") != "turn.complete")]
    assert failures == [], failures[:5]
    rest = [r[1] for r in results[: TURNS // 2]]
    assert all(r["turn"]["finalContent"] == "slow answer" for r in rest)
    # Every turn was saved whole: the user message and the reply, and an exact turn count.
    counts = Session.objects.filter(space_id=alice["space_id"], role="standard")
    assert set(counts.values_list("turn_count", "record_count")) == {(1, 2)}
    assert Record.objects.filter(session__space_id=alice["space_id"]).count() == 2 * TURNS
