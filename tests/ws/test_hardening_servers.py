"""WebSocket hardening against a real server process (daphne, or uvicorn with
STELLO_TEST_SERVER=uvicorn), where frames really are UTF-8 on the wire, with the `websockets`
client: lone surrogates in a frame or in the LLM's reply, and a key revoked by the
`revokeapikey` command (another process) while the socket is open.

The server's LLM is a loopback OpenAI-protocol server in this process; its auth cache is off
(STELLO_AUTH_CACHE_SECONDS=0), so the first frame after a revocation finds it out.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.llm_servers import OpenAIServer
from tests.support.servers import ROOT, Server, server_env, server_processes

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WAIT = 10  # seconds for one frame


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(django_db_setup, llm, tmp_path_factory) -> Iterator[Server]:
    env = server_env(
        STELLO_LLM_PROVIDER="openai", STELLO_LLM_BASE_URL=llm.base_url, STELLO_LLM_API_KEY="k",
        STELLO_LLM_MODEL="m", STELLO_LLM_MAX_RETRIES="0", STELLO_AUTH_CACHE_SECONDS="0",
        STELLO_CONSOLIDATE_EVERY_N_TURNS="0", DATABASE_POOL_MIN_SIZE="1",
    )
    with server_processes([env], tmp_path_factory.mktemp("hardening")) as (started,):
        yield started


def open_ws(server: Server, space_id: str, key: str):
    return connect(server.ws(space_id), additional_headers={"X-API-Key": key},
                   open_timeout=WAIT, proxy=None)


async def ask(ws: ClientConnection, text: str) -> dict[str, Any]:
    await ws.send(text)
    return await recv(ws)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        return json.loads(await ws.recv())  # the client refuses text that is not UTF-8


async def test_lone_surrogates_in_a_frame_are_refused_and_the_socket_keeps_working(
    server, space_id, root_id, alice_key
) -> None:
    async with open_ws(server, space_id, alice_key) as ws:
        for frame in ('{"type": "\\ud800"}', '{"type": "session.enter", "sessionId": "\\udc00"}'):
            assert await ask(ws, frame) == {"type": "error", "code": "PARSE_ERROR",
                                            "message": "Invalid JSON"}
        entered = await ask(ws, json.dumps({"type": "session.enter", "sessionId": root_id}))
        assert entered["type"] == "session.entered"
        assert await ask(ws, '{"type": "session.message", "input": "x\\ud800"}') == {
            "type": "error", "code": "PARSE_ERROR", "message": "Invalid JSON"}
        done = await ask(ws, '{"type": "session.message", "input": "next"}')
        assert done["result"]["turn"]["finalContent"] == "echo: next"


async def test_a_streamed_reply_with_lone_surrogates_reaches_the_client(
    server, llm, space_id, root_id, alice_key
) -> None:
    llm.reply("one \ud800 two")
    async with open_ws(server, space_id, alice_key) as ws:
        await ask(ws, json.dumps({"type": "session.enter", "sessionId": root_id}))
        await ws.send('{"type": "session.stream", "input": "go"}')
        chunks = []
        while (frame := await recv(ws))["type"] == "stream.delta":
            chunks.append(frame["chunk"])
        assert frame["type"] == "stream.end", frame
        assert "".join(chunks) == frame["result"]["turn"]["finalContent"] == "one \ufffd two"
        after = await ask(ws, '{"type": "session.message", "input": "after"}')
        assert after["result"]["turn"]["finalContent"] == "echo: after"


async def test_a_key_revoked_by_the_command_closes_the_open_socket_with_4401(
    server, space_id, root_id, alice_key
) -> None:
    async with open_ws(server, space_id, alice_key) as ws:
        await ask(ws, json.dumps({"type": "session.enter", "sessionId": root_id}))
        prefix = alice_key.split("_")[1]
        revoked = await asyncio.to_thread(
            subprocess.run, [sys.executable, "manage.py", "revokeapikey", prefix], cwd=ROOT,
            env=server.env, capture_output=True, text=True, timeout=60)
        assert revoked.returncode == 0, revoked.stderr
        await ws.send('{"type": "session.message", "input": "after revoke"}')
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
