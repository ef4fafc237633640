"""Two real daphne processes sharing PostgreSQL and Redis, driven with the `websockets` client.

The processes (tests/support/servers.py) serve the test database; each run uses its own Redis
prefix. The processes are stopped when the module is done, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from sessions_app.models import Record, Session
from tests.support.servers import ASGI_SERVER, Server, http_json, server_env, server_processes

pytestmark = [pytest.mark.servers,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

WAIT = 10  # seconds for one frame


@pytest.fixture(scope="module")
def servers(django_db_setup, tmp_path_factory) -> Iterator[list[Server]]:
    env = server_env(
        REDIS_URL=os.environ["REDIS_URL"],
        STELLO_REDIS_PREFIX=f"stello-test-{uuid.uuid4().hex[:12]}",
        STELLO_CONSOLIDATE_EVERY_N_TURNS="0",
        DATABASE_POOL_MIN_SIZE="1",
        DATABASE_POOL_MAX_SIZE="8",
    )
    with server_processes([env, env], tmp_path_factory.mktemp("daphne")) as started:
        yield started


# -- helpers ---------------------------------------------------------------------------------


def open_ws(server: Server, space_id: str, key: str):
    return connect(server.ws(space_id), additional_headers={"X-API-Key": key},
                   open_timeout=WAIT, proxy=None)


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        return json.loads(await ws.recv())


async def answer(ws: ClientConnection) -> dict[str, Any]:
    """The next frame: a connection that does not watch gets only the original protocol's
    answers."""
    return await recv(ws)


async def nothing_more(ws: ClientConnection, quiet: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(quiet):
            frame = await ws.recv()
            pytest.fail(f"unexpected frame {frame}")


async def enter(ws: ClientConnection, session_id: str, *, watch: bool = False) -> None:
    frame: dict[str, Any] = {"type": "session.enter", "sessionId": session_id}
    if watch:
        frame["watch"] = True
    await send(ws, frame)
    assert (await answer(ws))["type"] == "session.entered"


@sync_to_async
def records_of(session_id: str) -> list[tuple[str, str]]:
    return list(Record.objects.filter(session_id=session_id).values_list("role", "content"))


@sync_to_async
def turn_count_of(session_id: str) -> int:
    return Session.objects.get(pk=session_id).turn_count


# -- tests -----------------------------------------------------------------------------------


async def test_a_bad_key_is_refused_at_the_upgrade(servers, space_id) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(servers[0], space_id, "stello_AAAAAAAA_" + "d" * 43):
            pass
    # daphne has no WebSocket denial-response extension: it can only answer 403. uvicorn has
    # it, so the client gets REST's 401 with the JSON error body.
    expected = 401 if ASGI_SERVER == "uvicorn" else 403
    assert refused.value.response.status_code == expected


async def test_the_server_accepts_a_browser_key_sent_as_a_subprotocol(servers, space_id,
                                                                   alice_key) -> None:
    async with connect(servers[1].ws(space_id), subprotocols=[alice_key], open_timeout=WAIT,
                       proxy=None) as ws:
        assert ws.subprotocol == alice_key
        await send(ws, {"type": "session.leave"})
        assert await recv(ws) == {"type": "error", "code": "NOT_ENTERED",
                                  "message": "Not in a session"}


async def test_a_watching_client_of_one_process_hears_turns_made_through_the_other(
    servers, space_id, root_id, alice_key
) -> None:
    a, b = servers
    update = {"type": "session.updated", "sessionId": root_id}
    async with asyncio.timeout(60), open_ws(a, space_id, alice_key) as listener:
        await enter(listener, root_id, watch=True)

        url = b.http(f"/spaces/{space_id}/sessions/{root_id}/turn")
        status, _ = await asyncio.to_thread(http_json, "POST", url, alice_key,
                                            {"input": "via rest"}, timeout=WAIT)
        assert status == 200
        assert await recv(listener) == {**update, "turnCount": 1}

        async with open_ws(b, space_id, alice_key) as talker:
            await enter(talker, root_id)  # a strict client: it does not watch
            await send(talker, {"type": "session.message", "input": "via ws"})
            assert (await answer(talker))["type"] == "turn.complete"
            assert await recv(listener) == {**update, "turnCount": 2}

            # The listener's own turn: the talker does not watch, the listener is not told.
            await send(listener, {"type": "session.message", "input": "from a"})
            assert (await answer(listener))["type"] == "turn.complete"
            await nothing_more(talker)
            await nothing_more(listener)

        async with open_ws(b, space_id, alice_key) as watcher:
            await enter(watcher, root_id, watch=True)
            await send(watcher, {"type": "session.stream", "input": "from b"})
            while (frame := await answer(watcher))["type"] == "stream.delta":
                pass
            assert frame["type"] == "stream.end"
            assert await recv(listener) == {**update, "turnCount": 4}
            await nothing_more(watcher)  # watching, but this turn was its own


async def test_streams_through_both_processes_never_interleave(
    servers, space_id, root_id, alice_key
) -> None:
    per_server = 6

    async def streams(server: Server, tag: str) -> list[dict[str, Any]]:
        ends = []
        async with open_ws(server, space_id, alice_key) as ws:
            await enter(ws, root_id)
            for n in range(per_server):
                await send(ws, {"type": "session.stream", "input": f"{tag}-{n:02d}"})
                chunks = []
                while (frame := await answer(ws))["type"] == "stream.delta":
                    chunks.append(frame["chunk"])
                assert frame["type"] == "stream.end", frame
                assert "".join(chunks) == frame["result"]["turn"]["finalContent"]
                ends.append(frame["result"]["turn"])
        return ends

    async with asyncio.timeout(90):
        from_a, from_b = await asyncio.gather(streams(servers[0], "a"), streams(servers[1], "b"))

    total = 2 * per_server
    records = await records_of(root_id)
    assert len(records) == 2 * total
    pairs = [records[i:i + 2] for i in range(0, len(records), 2)]
    for user, assistant in pairs:  # strict user/assistant pairs, each answering its own question
        assert (user[0], assistant[0]) == ("user", "assistant")
        assert assistant[1] == f"echo: {user[1]}"
    assert await turn_count_of(root_id) == total

    # Serialised turns each saw the whole history before them: every prompt is longer than
    # the one before (all inputs have the same length), in the order the records were saved.
    by_prompt = sorted(from_a + from_b,
                       key=lambda turn: json.loads(turn["rawResponse"])["usage"]["promptTokens"])
    tokens = [json.loads(turn["rawResponse"])["usage"]["promptTokens"] for turn in by_prompt]
    assert len(set(tokens)) == total
    assert [turn["finalContent"] for turn in by_prompt] == [content for role, content in records
                                                            if role == "assistant"]
